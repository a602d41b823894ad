"""Create the loop's Kafka topics before anything produces to or consumes from them."""

from __future__ import annotations

import contextlib
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from contracts import StreamrlError, Topics
from contracts.kafka import PLAINTEXT, KafkaSecurity


class TopicSetupError(StreamrlError):
    """Topics could not be created or did not appear on the broker."""

    def __init__(self, message: str, *, bootstrap_servers: str, topics: list[str]) -> None:
        super().__init__(message)
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics


def topic_names(topics: Topics) -> list[str]:
    """Every distinct topic name in `topics`, sorted."""
    return sorted(set(topics.model_dump().values()))


def ensure_topics(
    bootstrap_servers: str,
    topics: Topics,
    partitions: int = 2,
    *,
    timeout_s: float = 15.0,
    security: KafkaSecurity = PLAINTEXT,
) -> None:
    """Create the missing topics of `topics` (idempotent) and wait until the broker lists them all.

    Existing topics are left as they are, whatever their partition count.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    names = topic_names(topics)
    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=min(timeout_ms, 10_000),
            **security.client_settings("kafka_python"),
        )
    except KafkaError as exc:
        raise TopicSetupError(
            f"cannot reach the Kafka broker at {bootstrap_servers} to create topics {names}: {exc}; "
            "is the local stack up? run `streamrl stack up`",
            bootstrap_servers=bootstrap_servers,
            topics=names,
        ) from exc
    try:
        deadline = time.monotonic() + timeout_s
        missing = [name for name in names if name not in set(admin.list_topics())]
        for name in missing:
            # Created concurrently by another process: that is the state we want.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, partitions, 1)])
        while missing:
            missing = [name for name in names if name not in set(admin.list_topics())]
            if missing and time.monotonic() > deadline:
                raise TopicSetupError(
                    f"topics {missing} still not listed by the broker at {bootstrap_servers} "
                    f"{timeout_s:.0f} s after creating them; check the broker log",
                    bootstrap_servers=bootstrap_servers,
                    topics=missing,
                )
            if missing:
                time.sleep(0.1)
    except KafkaError as exc:
        raise TopicSetupError(
            f"creating topics {names} on {bootstrap_servers} failed: {exc!r}",
            bootstrap_servers=bootstrap_servers,
            topics=names,
        ) from exc
    finally:
        admin.close()
