"""Records and errors shared by every stage: the only module all stages may import."""

from contracts.actions import KIND_COLUMNS, ActionKind
from contracts.errors import StreamrlError
from contracts.events import (
    DEFAULT_TOPICS,
    DeadLetterRecord,
    DecisionEvent,
    RewardEvent,
    Topics,
    reward_value,
)
from contracts.kafka import KafkaSecurity, KafkaSecurityError

__all__ = [
    "KIND_COLUMNS",
    "ActionKind",
    "DEFAULT_TOPICS",
    "DeadLetterRecord",
    "DecisionEvent",
    "KafkaSecurity",
    "KafkaSecurityError",
    "RewardEvent",
    "StreamrlError",
    "Topics",
    "reward_value",
]
