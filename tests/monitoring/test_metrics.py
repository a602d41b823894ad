"""Aggregation logic of the monitor, without Kafka: windows, action mix, mean reward, alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitoring import AlertKind, MetricsWindow, MonitoringConfig, VersionWindows, format_metrics_table
from monitoring.metrics import DiscreteDigest
from monitoring.run import latest_revisions

T0 = datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)  # a window boundary for window_s=60


def config(**overrides: object) -> MonitoringConfig:
    return MonitoringConfig(bootstrap_servers="127.0.0.1:1", allowed_lateness_s=5, **overrides)


def chose(action: str, propensity: float) -> DiscreteDigest:
    return DiscreteDigest(action=action, propensity=propensity)


def kinds(window: MetricsWindow) -> list[str]:
    return [alert.split(":", 1)[0] for alert in window.alerts]


def test_action_mix_counts_and_min_propensity_per_window() -> None:
    state = VersionWindows(model_version="v1", window_s=60)
    now = T0
    for second, action, p in [(1, "a", 0.5), (2, "a", 0.4), (59, "b", 0.3), (60, "c", 0.2)]:
        assert state.add_decision(T0 + timedelta(seconds=second), chose(action, p), now)
    [first, second] = state.close_due(T0 + timedelta(seconds=200), config())
    assert (first.window_start, first.window_end) == (T0, T0 + timedelta(seconds=60))
    assert first.decisions == 3 and first.action_counts == {"a": 2, "b": 1}
    assert first.min_propensity == 0.3 and first.mean_reward is None and first.rewards == 0
    assert second.window_start == T0 + timedelta(seconds=60) and second.action_counts == {"c": 1}
    assert first.revision == second.revision == 1


def test_mean_reward_is_per_version_and_window() -> None:
    v1 = VersionWindows(model_version="v1", window_s=60)
    v2 = VersionWindows(model_version="v2", window_s=60)
    for r in (1.0, 0.0, 2.0):
        v1.add_reward(T0 + timedelta(seconds=10), r, T0)
    v2.add_reward(T0 + timedelta(seconds=10), -1.5, T0)
    [w1] = v1.close_due(T0 + timedelta(minutes=5), config())
    [w2] = v2.close_due(T0 + timedelta(minutes=5), config())
    assert (w1.model_version, w1.rewards, w1.reward_sum, w1.mean_reward) == ("v1", 3, 3.0, 1.0)
    assert (w2.model_version, w2.rewards, w2.mean_reward) == ("v2", 1, -1.5)
    assert w1.decisions == 0 and w1.min_propensity is None and w1.action_counts == {}


def test_window_waits_for_lateness_then_reemits_late_events_as_new_revision() -> None:
    cfg = config()
    state = VersionWindows(model_version="v1", window_s=60)
    state.add_decision(T0 + timedelta(seconds=30), chose("a", 0.5), T0)
    assert state.close_due(T0 + timedelta(seconds=64), cfg) == []  # end + 5 s lateness not yet passed
    assert not state.has_due(T0 + timedelta(seconds=64), cfg.allowed_lateness_s)
    assert state.has_due(T0 + timedelta(seconds=65), cfg.allowed_lateness_s)
    [first] = state.close_due(T0 + timedelta(seconds=65), cfg)
    assert state.close_due(T0 + timedelta(seconds=66), cfg) == []  # unchanged: not emitted again
    state.add_decision(T0 + timedelta(seconds=31), chose("b", 0.5), T0 + timedelta(seconds=70))
    [second] = state.close_due(T0 + timedelta(seconds=71), cfg)
    assert (first.revision, first.decisions) == (1, 1)
    assert (second.revision, second.decisions, second.action_counts) == (2, 2, {"a": 1, "b": 1})
    assert latest_revisions([second, first]) == [second]


def test_forgotten_windows_reject_late_events_instead_of_emitting_partial_counts() -> None:
    cfg = config(retention_s=600)
    state = VersionWindows(model_version="v1", window_s=60)
    state.add_decision(T0, chose("a", 0.5), T0)
    assert len(state.close_due(T0 + timedelta(seconds=100), cfg)) == 1
    assert not state.has_expired(T0 + timedelta(seconds=500), cfg.retention_s)
    assert state.has_expired(T0 + timedelta(seconds=601), cfg.retention_s)
    state.close_due(T0 + timedelta(seconds=601), cfg)
    assert state.windows == {}
    assert not state.add_decision(T0 + timedelta(seconds=1), chose("a", 0.5), T0 + timedelta(seconds=602))
    assert state.add_decision(T0 + timedelta(seconds=61), chose("a", 0.5), T0 + timedelta(seconds=602))


def test_low_propensity_alert() -> None:
    state = VersionWindows(model_version="v1", window_s=60)
    state.add_decision(T0, chose("a", 0.005), T0)
    state.add_decision(T0 + timedelta(seconds=60), chose("a", 0.02), T0)
    low, ok = state.close_due(T0 + timedelta(minutes=5), config(min_propensity=0.01))
    assert kinds(low) == [AlertKind.LOW_PROPENSITY] and "0.005" in low.alerts[0]
    assert ok.alerts == []


@pytest.mark.parametrize(
    ("previous", "current", "alerted"), [(1.0, 0.4, True), (1.0, 0.6, False), (-1.0, -2.0, True)]
)
def test_reward_drop_alert_compares_with_previous_window_of_same_version(
    previous: float, current: float, alerted: bool
) -> None:
    state = VersionWindows(model_version="v1", window_s=60)
    other = VersionWindows(model_version="v2", window_s=60)
    state.add_reward(T0, previous, T0)
    state.add_reward(T0 + timedelta(seconds=60), current, T0)
    other.add_reward(T0 + timedelta(seconds=60), current, T0)
    first, second = state.close_due(T0 + timedelta(minutes=5), config(max_reward_drop=0.5))
    [alone] = other.close_due(T0 + timedelta(minutes=5), config(max_reward_drop=0.5))
    assert first.alerts == [] and alone.alerts == []  # nothing earlier to compare with
    assert kinds(second) == ([AlertKind.REWARD_DROP] if alerted else [])


def test_state_round_trips_through_table_json() -> None:
    state = VersionWindows(model_version="v1", window_s=60)
    state.add_decision(T0, chose("a", 0.5), T0)
    state.add_reward(T0, 2.0, T0)
    restored = VersionWindows.model_validate(state.model_dump(mode="json"))
    assert restored == state
    [w] = restored.close_due(T0 + timedelta(minutes=5), config())
    assert MetricsWindow.model_validate_json(w.to_json_bytes()) == w


def test_config_rejects_retention_shorter_than_a_window() -> None:
    with pytest.raises(ValueError, match="retention_s"):
        MonitoringConfig(bootstrap_servers="x:1", window_s=60, retention_s=30)


def test_table_shows_latest_revision_with_mix_and_alert_kinds() -> None:
    state = VersionWindows(model_version="v1", window_s=60)
    state.add_decision(T0, chose("a", 0.005), T0)
    [old] = state.close_due(T0 + timedelta(minutes=5), config())
    state.add_decision(T0, chose("b", 0.5), T0 + timedelta(minutes=5))
    [new] = state.close_due(T0 + timedelta(minutes=6), config())
    text = format_metrics_table([old, new])
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("window_start (UTC)")
    assert "2026-01-01 10:00:00" in lines[1] and "a:50% b:50%" in lines[1] and "low_propensity" in lines[1]
