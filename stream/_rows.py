"""The one wide row shape of the timeline job: parsed events, state, timeline rows and dead letters
all share `ROW_SCHEMA` (a `kind` column tells them apart). The passes over it are in
`stream._batch_passes`.
"""

from __future__ import annotations

from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import BooleanType, LongType, StructField, StructType

from contracts.actions import POSSIBLE_ACTION_FEATURES_COLUMN, POSSIBLE_NEXT_ACTION_FEATURES_COLUMN
from stream._parse import _FEATURE_MAP, KIND_DECISION, KIND_REWARD, PARSED_SCHEMA

KIND_TIMELINE = "timeline"
KIND_CLOSED = "closed"
STATE_KINDS = (KIND_DECISION, KIND_REWARD, KIND_CLOSED)
REASON_LATE_DECISION = "late: mdp already closed"

_EXTRA = [
    ("arrival_clock_ms", LongType()),
    ("n_rewards", LongType()),
    ("closed_clock_ms", LongType()),
    ("sequence_number_ordinal", LongType()),
    ("reward_observed", BooleanType()),
    ("next_state_features", _FEATURE_MAP),
    ("next_action", PARSED_SCHEMA["action"].dataType),
    ("possible_next_actions", PARSED_SCHEMA["possible_actions"].dataType),
    (POSSIBLE_NEXT_ACTION_FEATURES_COLUMN, PARSED_SCHEMA[POSSIBLE_ACTION_FEATURES_COLUMN].dataType),
    ("time_diff", LongType()),
    ("time_since_first", LongType()),
    ("not_terminal", BooleanType()),
]
ROW_SCHEMA = StructType(
    [StructField(f.name, f.dataType, True) for f in PARSED_SCHEMA]
    + [StructField(n, t, True) for n, t in _EXTRA]
)
ARROW_ROW_SCHEMA = to_arrow_schema(ROW_SCHEMA, timezone="UTC")
