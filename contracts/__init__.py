"""Records and errors shared by every stage: the only module all stages may import."""

from contracts.errors import StreamrlError
from contracts.events import (
    DEFAULT_TOPICS,
    DeadLetterRecord,
    DecisionEvent,
    RewardEvent,
    Topics,
)

__all__ = [
    "DEFAULT_TOPICS",
    "DeadLetterRecord",
    "DecisionEvent",
    "RewardEvent",
    "StreamrlError",
    "Topics",
]
