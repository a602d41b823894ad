"""Reading the metrics topic back and loading the worker's config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contracts import Topics
from monitoring import MonitoringConfig, MonitoringError, load_config, tail_metrics


def test_tail_stops_at_high_watermark_of_an_empty_topic(local_stack: Any, topics: Topics) -> None:
    assert list(tail_metrics(local_stack.bootstrap_servers, topics.metrics, timeout_s=10)) == []


def test_tail_names_a_missing_topic(local_stack: Any) -> None:
    with pytest.raises(MonitoringError, match="'no-such-metrics' not found") as info:
        list(tail_metrics(local_stack.bootstrap_servers, "no-such-metrics", timeout_s=1))
    assert info.value.where == "no-such-metrics"


def test_load_config_round_trips_and_names_bad_file(tmp_path: Path) -> None:
    good = tmp_path / "monitor.json"
    config = MonitoringConfig(bootstrap_servers="127.0.0.1:9092", window_s=30, topics=Topics(metrics="m"))
    good.write_text(config.model_dump_json(), encoding="utf-8")
    assert load_config(good) == config
    bad = tmp_path / "bad.json"
    bad.write_text('{"bootstrap_servers": "x:1", "window_s": 0}', encoding="utf-8")
    with pytest.raises(MonitoringError, match=r"bad\.json.*window_s"):
        load_config(bad)
