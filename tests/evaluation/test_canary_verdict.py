"""Judging a canary on realized returns: episode returns, Welch bounds (checked against scipy's
own Welch test), the promote/stop/continue rule, and the registry moves it makes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evaluation_data import LOGGING_WEIGHTS, register_linear_policy
from scipy import stats

from evaluation import CanaryConfig, compare_canary, judge_canary
from evaluation.canary import episode_returns, welch_bounds
from trainer import CanaryState, DeploymentKind, ModelRegistry

START = datetime(2026, 3, 1, tzinfo=UTC)


def _episodes(
    version: str, returns: list[float], *, prefix: str, start: datetime = START, steps: int = 3
) -> list[dict]:
    """Each episode `steps` rows whose rewards sum to its return; the last row terminal."""
    rows = []
    for e, total in enumerate(returns):
        for t in range(steps):
            rows.append(
                {
                    "mdp_id": f"{prefix}-{e}",
                    "sequence_number": t,
                    "timestamp": start + timedelta(minutes=10 + e, seconds=t),
                    "model_version": version,
                    "reward": total / steps,
                    "not_terminal": t < steps - 1,
                }
            )
    return rows


def _state(version: str = "m0002-bbbbbbbb", baseline: str | None = "m0001-aaaaaaaa") -> CanaryState:
    return CanaryState(version=version, share=0.5, baseline=baseline, started_at=START, reason="test")


def test_episode_returns_keeps_complete_single_version_episodes_that_began_after_the_start() -> None:
    rows = _episodes("A", [3.0, 6.0], prefix="a") + _episodes("B", [9.0], prefix="b")
    rows += _episodes("A", [100.0], prefix="early", start=START - timedelta(hours=1))  # began before
    open_episode = _episodes("B", [50.0], prefix="open")
    open_episode[-1]["not_terminal"] = True  # never reached its terminal row
    mixed = _episodes("A", [70.0], prefix="mixed")
    mixed[0]["model_version"] = "B"  # served by two versions
    frame = pd.DataFrame(rows + open_episode + mixed)
    got = episode_returns(frame, START).sort_values("mdp_id").reset_index(drop=True)
    assert got["mdp_id"].tolist() == ["a-0", "a-1", "b-0"]
    assert got["model_version"].tolist() == ["A", "A", "B"]
    assert got["return"].tolist() == pytest.approx([3.0, 6.0, 9.0])


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_welch_bounds_match_scipys_one_sided_welch_intervals(confidence: float) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 2.0, 15), rng.normal(0.0, 0.5, 40)
    difference, lower, upper = welch_bounds(a, b, confidence)
    greater = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    less = stats.ttest_ind(a, b, equal_var=False, alternative="less")
    assert difference == pytest.approx(a.mean() - b.mean())
    assert lower == pytest.approx(greater.confidence_interval(confidence).low)
    assert upper == pytest.approx(less.confidence_interval(confidence).high)


def test_promote_stop_and_continue() -> None:
    rng = np.random.default_rng(0)
    config = CanaryConfig(min_episodes=10, confidence=0.95)
    baseline = list(rng.normal(-1000.0, 50.0, 20))

    def verdict(canary_returns: list[float]):
        frame = pd.DataFrame(
            _episodes("m0001-aaaaaaaa", baseline, prefix="base")
            + _episodes("m0002-bbbbbbbb", canary_returns, prefix="can")
        )
        return compare_canary(frame, _state(), config)

    better = verdict(list(rng.normal(-200.0, 50.0, 20)))
    assert better.outcome == "promote" and better.lower > 0
    assert (better.canary_episodes, better.baseline_episodes) == (20, 20)
    assert better.baseline_versions == ["m0001-aaaaaaaa"]
    worse = verdict(list(rng.normal(-1500.0, 50.0, 20)))
    assert worse.outcome == "stop" and worse.upper < 0
    same = verdict(list(np.asarray(baseline)[::-1]))  # the same returns: a difference of exactly 0
    assert same.outcome == "continue" and same.lower < 0 < same.upper
    few = verdict([-100.0] * 9)  # 9 < min_episodes, however good
    assert few.outcome == "continue" and few.difference is None
    assert "9 served by the canary and 20 by the baseline, 10 needed each" in few.reason


def _registry_with_models(tmp_path: Path) -> tuple[ModelRegistry, list[str]]:
    registry = ModelRegistry(tmp_path / "registry")
    versions = [register_linear_policy(registry, LOGGING_WEIGHTS * k, 0.1).version for k in (1.0, 2.0)]
    return registry, versions


@pytest.mark.parametrize("baseline_deployed", [True, False])
def test_judge_canary_promotes_or_ends_it_in_the_registry(tmp_path: Path, baseline_deployed: bool) -> None:
    registry, (first, second) = _registry_with_models(tmp_path)
    if baseline_deployed:
        registry.deploy(first, "first")
    registry.start_canary(second, 0.5, "cannot judge")
    started = registry.canary().started_at
    baseline_version = first if baseline_deployed else "day0-uniform"
    base = _episodes(baseline_version, [-10.0 + 0.1 * i for i in range(12)], prefix="b", start=started)
    better = _episodes(second, [5.0 + 0.1 * i for i in range(12)], prefix="c", start=started)
    verdict = judge_canary(registry, pd.DataFrame(base + better), None, tmp_path / "reports")
    assert verdict is not None and verdict.outcome == "promote"
    assert registry.deployed() == second and registry.canary() is None
    assert (tmp_path / "reports" / second / "canary.json").is_file()
    assert judge_canary(registry, pd.DataFrame(base + better), None, tmp_path / "reports") is None

    # A worse canary ends without moving the deployed version.
    registry.start_canary(first, 0.5, "again")
    started = registry.canary().started_at
    base = _episodes(second, [5.0 + 0.1 * i for i in range(12)], prefix="b2", start=started)
    worse = _episodes(first, [-10.0 + 0.1 * i for i in range(12)], prefix="c2", start=started)
    verdict = judge_canary(
        registry, pd.DataFrame(base + worse), CanaryConfig(min_episodes=10), tmp_path / "r"
    )
    assert verdict.outcome == "stop"
    state = registry.deployment_state()
    assert state.current == second and state.canary is None
    assert state.history[-1].kind is DeploymentKind.CANARY_STOP
