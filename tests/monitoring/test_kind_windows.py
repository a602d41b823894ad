"""Windows over decisions of every action kind, against hand-computed expected values (no Kafka)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from contracts import ActionKind, DecisionEvent
from monitoring import (
    AlertKind,
    ContinuousWindow,
    MetricsWindow,
    MonitoringConfig,
    ParametricWindow,
    VersionWindows,
    digest_decision,
    format_metrics_table,
)

T0 = datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)  # a window boundary for window_s=60
LATER = T0 + timedelta(minutes=10)  # every window of these tests is closed by then


def config(**overrides: Any) -> MonitoringConfig:
    return MonitoringConfig(bootstrap_servers="127.0.0.1:1", allowed_lateness_s=5, **overrides)


def decision(second: int, kind: ActionKind, **choice: Any) -> DecisionEvent:
    return DecisionEvent(
        schema_version=2,
        action_kind=kind,
        request_id=f"r-{second}",
        entity_id="u",
        mdp_id=f"m-{second}",
        sequence_number=0,
        timestamp=T0 + timedelta(seconds=second),
        context_features={"x": 1.0},
        model_version="v1",
        **choice,
    )


def parametric(second: int, candidates: list[str], chosen: str, p: float) -> DecisionEvent:
    features = [{"price": float(i)} for i in range(len(candidates))]
    return decision(
        second,
        ActionKind.PARAMETRIC,
        possible_actions=candidates,
        candidate_features=features,
        action=chosen,
        action_probability=p,
    )


def continuous(second: int, vector: dict[str, float], log_density: float) -> DecisionEvent:
    return decision(
        second,
        ActionKind.CONTINUOUS,
        possible_actions=list(vector),
        action_vector=list(vector.values()),
        action_log_density=log_density,
    )


def discrete(second: int, action: str, p: float) -> DecisionEvent:
    return decision(
        second, ActionKind.DISCRETE, possible_actions=["a", "b"], action=action, action_probability=p
    )


# One decision per kind: adding a kind to ActionKind fails the coverage test below until it is here.
ONE_OF_EACH = {
    ActionKind.DISCRETE: discrete(1, "b", 0.5),
    ActionKind.PARAMETRIC: parametric(1, ["c1", "c2"], "c2", 0.5),
    ActionKind.CONTINUOUS: continuous(1, {"torque": 0.5}, -1.0),
}


def windows_of(events: list[DecisionEvent], cfg: MonitoringConfig) -> list[MetricsWindow]:
    state = VersionWindows(model_version="v1", window_s=60)
    for event in events:
        assert state.add_decision(event.timestamp, digest_decision(event), T0)
    return state.close_due(LATER, cfg)


def test_every_action_kind_counts_as_a_decision() -> None:
    assert set(ONE_OF_EACH) == set(ActionKind)
    for kind, event in ONE_OF_EACH.items():
        [window] = windows_of([event], config())
        assert window.decisions == 1, kind


def test_mixed_parametric_and_continuous_stream_gives_hand_computed_windows() -> None:
    events = [
        # window 0: two parametric decisions over 3 and 2 candidates, three 2-d continuous ones
        parametric(1, ["c1", "c2", "c3"], "c2", 0.5),
        continuous(2, {"torque": 1.0, "thrust": -2.0}, -1.5),
        parametric(3, ["c7", "c8"], "c8", 0.25),
        continuous(4, {"torque": 3.0, "thrust": 2.0}, -0.5),
        continuous(5, {"torque": 2.0, "thrust": 0.0}, -4.0),
        # window 1: one discrete decision and one continuous decision with only one dimension
        discrete(61, "a", 0.2),
        continuous(62, {"torque": 0.5}, 1.0),
    ]
    first, second = windows_of(events, config(min_log_density=-3.0))

    # torque 1, 3, 2: mean 2, population variance (1 + 1 + 0) / 3; thrust -2, 2, 0: mean 0, variance 8 / 3
    assert first.decisions == 5 and first.action_counts == {}
    assert first.min_propensity == 0.25
    assert first.parametric == ParametricWindow(decisions=2, mean_candidates=2.5)
    assert first.continuous is not None and first.continuous.decisions == 3
    assert first.continuous.action_mean == pytest.approx({"thrust": 0.0, "torque": 2.0}, abs=1e-12)
    assert first.continuous.action_std == pytest.approx(
        {"thrust": math.sqrt(8 / 3), "torque": math.sqrt(2 / 3)}, rel=1e-12
    )
    assert first.continuous.min_log_density == -4.0
    assert first.continuous.mean_log_density == pytest.approx(-2.0, rel=1e-12)
    assert [a.split(":", 1)[0] for a in first.alerts] == [AlertKind.LOW_DENSITY]
    assert "-4 < -3" in first.alerts[0]

    assert second.decisions == 2 and second.action_counts == {"a": 1} and second.parametric is None
    assert second.min_propensity == 0.2
    assert second.continuous == ContinuousWindow(
        decisions=1,
        action_mean={"torque": 0.5},
        action_std={"torque": 0.0},
        min_log_density=1.0,
        mean_log_density=1.0,
    )
    assert second.alerts == []


def test_continuous_window_has_no_propensity_and_density_alert_is_off_by_default() -> None:
    [window] = windows_of([continuous(1, {"torque": 0.5}, -50.0)], config())
    assert window.min_propensity is None and window.action_counts == {} and window.parametric is None
    assert window.alerts == []
    [alerted] = windows_of([continuous(1, {"torque": 0.5}, -50.0)], config(min_log_density=-10.0))
    assert [a.split(":", 1)[0] for a in alerted.alerts] == [AlertKind.LOW_DENSITY]


def test_parametric_propensity_raises_the_low_propensity_alert() -> None:
    [window] = windows_of([parametric(1, ["c1", "c2"], "c1", 0.005)], config(min_propensity=0.01))
    assert [a.split(":", 1)[0] for a in window.alerts] == [AlertKind.LOW_PROPENSITY]


def test_state_with_every_kind_round_trips_through_table_json() -> None:
    state = VersionWindows(model_version="v1", window_s=60)
    for event in ONE_OF_EACH.values():
        state.add_decision(event.timestamp, digest_decision(event), T0)
    restored = VersionWindows.model_validate(json.loads(json.dumps(state.model_dump(mode="json"))))
    assert restored == state
    [window] = restored.close_due(LATER, config())
    assert window.schema_version == 2 and window.decisions == 3
    assert MetricsWindow.model_validate_json(window.to_json_bytes()) == window


def _v1_record(**overrides: Any) -> dict[str, Any]:
    record = {
        "schema_version": 1,
        "window_start": "2026-01-01T10:00:00Z",
        "window_end": "2026-01-01T10:01:00Z",
        "model_version": "v0",
        "revision": 1,
        "decisions": 3,
        "action_counts": {"a": 2, "b": 1},
        "rewards": 1,
        "reward_sum": 1.0,
        "mean_reward": 1.0,
        "min_propensity": 0.5,
        "alerts": [],
    }
    return {**record, **overrides}


def test_version_1_records_stay_readable_and_counts_must_add_up() -> None:
    old = MetricsWindow.model_validate_json(json.dumps(_v1_record()))
    assert (old.schema_version, old.parametric, old.continuous) == (1, None, None)
    with pytest.raises(ValidationError, match="schema_version 1 windows hold discrete decisions only"):
        MetricsWindow.model_validate(
            _v1_record(parametric={"decisions": 1, "mean_candidates": 2.0}, decisions=4)
        )
    with pytest.raises(ValidationError, match="decisions is 4 but .* account for 3"):
        MetricsWindow.model_validate(_v1_record(decisions=4))


def test_table_summarizes_each_kind_in_the_actions_column() -> None:
    events = [
        parametric(1, ["c1", "c2", "c3"], "c2", 0.5),
        parametric(3, ["c7", "c8"], "c8", 0.25),
        continuous(2, {"torque": 1.0, "thrust": -2.0}, -1.5),
        continuous(4, {"torque": 3.0, "thrust": 2.0}, -0.5),
        discrete(5, "a", 0.5),
        discrete(6, "b", 0.5),
    ]
    old = MetricsWindow.model_validate(_v1_record(model_version="v0"))
    [window] = windows_of(events, config())
    lines = format_metrics_table([old, window]).splitlines()
    assert lines[0].split()[5] == "actions" and len(lines) == 3
    # torque 1, 3: mean 2, std 1; thrust -2, 2: mean 0, std 2; log densities -1.5, -0.5
    assert "a:50% b:50% | parametric:2 of 2.5 candidates | thrust:0±2 torque:2±1 min_logdens:-1.5" in lines[2]
    assert "a:67% b:33%" in lines[1]
    assert lines[2].split()[2:4] == ["v1", "1"] and lines[2].split()[-3:] == ["-", "0.2500", "-"]


def test_worker_reads_digests_it_sent_and_discrete_items_of_an_older_worker() -> None:
    from monitoring.app import _decision_digest
    from monitoring.metrics import DiscreteDigest

    for event in ONE_OF_EACH.values():
        sent = {"kind": "decision", "decision": json.loads(digest_decision(event).model_dump_json())}
        assert _decision_digest(sent) == digest_decision(event)
    older = {"kind": "decision", "action": "b", "propensity": 0.25}
    assert _decision_digest(older) == DiscreteDigest(action="b", propensity=0.25)
