"""stream stage: app-side event logging to Kafka, topic setup, and the Spark timeline job
(Kafka → MDP timelines parquet).

`start_timeline_query` imports pyspark, so it is loaded on first use: apps importing the logger
do not pay for Spark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stream.config import StreamConfig
from stream.logger import Delivery, EventLogError, EventLogger, InvalidEventError, UndeliveredEvent
from stream.reader import load_timelines
from stream.topics import TopicSetupError, ensure_topics

if TYPE_CHECKING:
    from stream.timelines import start_timeline_query

__all__ = [
    "Delivery",
    "EventLogError",
    "EventLogger",
    "InvalidEventError",
    "StreamConfig",
    "TopicSetupError",
    "UndeliveredEvent",
    "ensure_topics",
    "load_timelines",
    "start_timeline_query",
]


def __getattr__(name: str) -> Any:
    if name == "start_timeline_query":
        from stream.timelines import start_timeline_query

        return start_timeline_query
    raise AttributeError(f"module 'stream' has no attribute {name!r}")
