"""stream stage: app-side event logging to Kafka, topic setup, and the Spark timeline job
(Kafka → MDP timelines parquet).

Every entry point is loaded on first use: apps importing the logger do not pay for Spark or
pandas, and the timeline job's Python workers (which import `stream.kafka_source`) start without
the logger, the reader or pandas.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream.config import StreamConfig
    from stream.logger import Delivery, EventLogError, EventLogger, InvalidEventError, UndeliveredEvent
    from stream.reader import load_timelines
    from stream.timelines import start_timeline_query
    from stream.topics import TopicSetupError, ensure_topics

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
    "timeline_files",
]

# Entry point → the module that defines it.
_ENTRY_POINTS = {
    "Delivery": "stream.logger",
    "EventLogError": "stream.logger",
    "EventLogger": "stream.logger",
    "InvalidEventError": "stream.logger",
    "UndeliveredEvent": "stream.logger",
    "StreamConfig": "stream.config",
    "TopicSetupError": "stream.topics",
    "ensure_topics": "stream.topics",
    "load_timelines": "stream.reader",
    "start_timeline_query": "stream.timelines",
    "timeline_files": "stream.reader",
}


def __getattr__(name: str) -> Any:
    module = _ENTRY_POINTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stream' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
