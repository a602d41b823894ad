"""Test helpers shared by every area (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from infra.stack_config import StackConfig
from stream._layout import ACTION_KIND_COLUMNS, timelines_path

_FEATURE_MAP = pa.map_(pa.string(), pa.float64())

# Every column the stream job writes (bar the `ds` partition), in its Arrow type.
TIMELINE_SCHEMA = pa.schema(
    [
        ("mdp_id", pa.string()),
        ("request_id", pa.string()),
        ("entity_id", pa.string()),
        ("sequence_number", pa.int64()),
        ("sequence_number_ordinal", pa.int64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("state_features", _FEATURE_MAP),
        ("action", pa.string()),
        ("action_probability", pa.float64()),
        ("reward", pa.float64()),
        ("reward_observed", pa.bool_()),
        ("metrics", _FEATURE_MAP),
        ("possible_actions", pa.list_(pa.string())),
        ("next_state_features", _FEATURE_MAP),
        ("next_action", pa.string()),
        ("possible_next_actions", pa.list_(pa.string())),
        ("time_diff", pa.int64()),
        ("time_since_first", pa.int64()),
        ("not_terminal", pa.bool_()),
        ("model_version", pa.string()),
        *ACTION_KIND_COLUMNS.items(),
    ]
)


def consume_all(bootstrap_servers: str, topic: str, timeout_s: float = 10.0) -> list[ConsumerRecord]:
    """Every record in `topic` from the beginning, without a consumer group.

    Stops when each partition's position reaches the high watermark reported by fetch responses
    (Tansu's ListOffsets end offsets are wrong, so `end_offsets` is never used). Records come back
    ordered by (partition, offset). Raises TimeoutError if the topic is unknown or reading stalls.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        request_timeout_ms=5000,
    )
    try:
        deadline = time.monotonic() + timeout_s
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic!r} not found on {bootstrap_servers} within {timeout_s} s")
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        records: list[ConsumerRecord] = []
        done: set[TopicPartition] = set()
        while len(done) < len(assigned):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading {topic!r} did not reach the high watermark of partitions "
                    f"{sorted(tp.partition for tp in set(assigned) - done)} within {timeout_s} s "
                    f"({len(records)} records read)"
                )
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            for tp in assigned:
                watermark = consumer.highwater(tp)  # from the last fetch response; None before one
                if watermark is not None and consumer.position(tp) >= watermark:
                    done.add(tp)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free port; yields its base URL; stops it
    (lifespan shutdown included)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def stack_config_on_free_ports(state_dir: Path, **overrides: object) -> StackConfig:
    """A `StackConfig` with OS-chosen broker and Redis ports and its state under `state_dir`."""
    values: dict[str, object] = {
        "broker_port": free_port(),
        "redis_port": free_port(),
        "state_dir": state_dir,
    }
    values.update(overrides)
    return StackConfig.model_validate(values)


def write_timeline_partition(rows: Sequence[Mapping[str, Any]], output_dir: Path, ds: str) -> None:
    """One parquet file where the stream job writes day `ds` (`timelines/ds=…/batch_id=0/`).

    Each row maps column names (`TIMELINE_SCHEMA`) to values, feature maps as dicts; a column a
    row lacks is null, as in partitions written before action kinds.
    """
    data: dict[str, list] = {name: [row.get(name) for row in rows] for name in TIMELINE_SCHEMA.names}
    for name, data_type in zip(TIMELINE_SCHEMA.names, TIMELINE_SCHEMA.types, strict=True):
        if pa.types.is_map(data_type):
            data[name] = [None if m is None else list(m.items()) for m in data[name]]
        elif pa.types.is_list(data_type) and pa.types.is_map(data_type.value_type):
            data[name] = [None if ms is None else [list(m.items()) for m in ms] for ms in data[name]]
    target = timelines_path(output_dir) / f"ds={ds}" / "batch_id=0"
    target.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(data, schema=TIMELINE_SCHEMA), target / "part-0.parquet")


def start_serving(config: Any, log_path: Path) -> subprocess.Popen:
    """`serving.run_server(config)` in its own process (as `streamrl serve` runs it), output to `log_path`."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from serving import ServingConfig, run_server; "
            "run_server(ServingConfig.model_validate_json(sys.argv[1]))",
            config.model_dump_json(),
        ],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1],
    )
