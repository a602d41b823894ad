"""Action kinds: the one contract every stage implements once, looked up by `ActionKind`.

| kind | what the app chooses | decision event fields | timeline columns it adds |
| --- | --- | --- | --- |
| discrete | one of a fixed set of named actions | `action`, `action_probability` | — |
| parametric | one of per-request candidates, each described by a feature map | `action` (candidate id), `action_probability`, `candidate_features` | `action_features`, `possible_action_features`, `possible_next_action_features` |
| continuous | a bounded real vector | `action_vector`, `action_log_density` | `action_vector`, `action_log_density` |

`possible_actions` always names what could be chosen: action names (discrete), candidate ids
(parametric, aligned with `candidate_features`) or the action dimensions in vector order
(continuous). Each stage keeps its own table keyed by `ActionKind` (event checks here, timeline
columns in `stream`, the ONNX signature and export in `trainer`, request schemas in `serving`,
estimators in `evaluation`); adding a kind is one module per stage plus one line per table.
"""

from __future__ import annotations

from enum import StrEnum


class ActionKind(StrEnum):
    DISCRETE = "discrete"
    PARAMETRIC = "parametric"
    CONTINUOUS = "continuous"


# Timeline columns each kind adds to the common ones (stream writes them, trainer/evaluation read them).
ACTION_FEATURES_COLUMN = "action_features"  # map[str, float]: the chosen candidate's features
POSSIBLE_ACTION_FEATURES_COLUMN = (
    "possible_action_features"  # list[map]: every candidate, `possible_actions` order
)
POSSIBLE_NEXT_ACTION_FEATURES_COLUMN = (
    "possible_next_action_features"  # list[map]: next step's; [] on terminal rows
)
ACTION_VECTOR_COLUMN = "action_vector"  # list[float]: the continuous action in env units
ACTION_LOG_DENSITY_COLUMN = (
    "action_log_density"  # float: log density of action_vector under the logging policy
)

KIND_COLUMNS: dict[ActionKind, tuple[str, ...]] = {
    ActionKind.DISCRETE: (),
    ActionKind.PARAMETRIC: (
        ACTION_FEATURES_COLUMN,
        POSSIBLE_ACTION_FEATURES_COLUMN,
        POSSIBLE_NEXT_ACTION_FEATURES_COLUMN,
    ),
    ActionKind.CONTINUOUS: (ACTION_VECTOR_COLUMN, ACTION_LOG_DENSITY_COLUMN),
}
