"""The refresh for every action kind: what `actions` means per kind, and a continuous (SAC) and a
parametric refresh end to end — spec, train, export, register, CPE, gate — on small timelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kind_timelines import TIMELINES, write_timelines

from contracts import ActionKind
from infra.config import load_config
from infra.environment import Environment
from infra.refresh import RefreshError, refresh_actions, run_refresh
from stream import load_timelines
from trainer import ModelRegistry
from trainer.policy import EpsilonGreedyExploration

SMALL_EVALUATION = {
    "bootstrap_samples": 20,
    "min_rows": 50,
    "holdout_fraction": 0.3,
    "gate": {"min_effective_sample_size": 5},
}


def _frame(kind: ActionKind, possible: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame({"action_kind": [kind.value] * len(possible), "possible_actions": possible})


def test_discrete_actions_are_every_name_logged_as_possible_sorted() -> None:
    frame = _frame(ActionKind.DISCRETE, [["send", "dont_send"], ["wait"], ["send"]])
    assert refresh_actions("dqn", frame) == ["dont_send", "send", "wait"]
    assert refresh_actions("linucb", frame, ["wait", "send", "dont_send"]) == ["wait", "send", "dont_send"]


def test_continuous_actions_are_the_dimensions_in_vector_order() -> None:
    frame = _frame(ActionKind.CONTINUOUS, [["throttle", "steer"], ["throttle", "steer"]])
    assert refresh_actions("sac", frame) == ["throttle", "steer"]  # not sorted: vector order
    mixed = _frame(ActionKind.CONTINUOUS, [["throttle", "steer"], ["steer", "throttle"]])
    with pytest.raises(RefreshError, match=r"same action dimensions on every row.*--actions"):
        refresh_actions("td3", mixed)
    assert refresh_actions("td3", mixed, ["throttle", "steer"]) == ["throttle", "steer"]


def test_parametric_takes_no_actions() -> None:
    frame = _frame(ActionKind.PARAMETRIC, [["item0", "item1"], ["item0"]])
    assert refresh_actions("parametric_dqn", frame) == []
    with pytest.raises(RefreshError, match=r"'parametric_dqn'.*possible_action_features.*drop the actions"):
        refresh_actions("parametric_dqn", frame, ["item0"])


def test_timelines_of_another_kind_are_refused_naming_both_kinds() -> None:
    frame = _frame(ActionKind.DISCRETE, [["send", "dont_send"]])
    with pytest.raises(RefreshError, match=r"'sac' learns continuous actions.*hold discrete decisions"):
        refresh_actions("sac", frame)


@pytest.mark.parametrize(
    ("trainer", "kind", "actions"),
    [
        (
            {"type": "sac", "action_low": [-2.0], "action_high": [2.0], "hidden_sizes": [8], "num_epochs": 2},
            ActionKind.CONTINUOUS,
            ["torque"],
        ),
        ({"type": "parametric_dqn", "hidden_sizes": [8], "num_epochs": 2}, ActionKind.PARAMETRIC, []),
    ],
    ids=["sac", "parametric_dqn"],
)
def test_refresh_trains_evaluates_and_gates_a_non_discrete_type(
    trainer: dict, kind: ActionKind, actions: list[str], tmp_path: Path
) -> None:
    config = load_config(overrides={"trainer": {**trainer, "batch_size": 32}, "evaluation": SMALL_EVALUATION})
    env = Environment.from_config(config, tmp_path / "run")
    shape = {"actions": ["torque"], "algorithm": trainer}
    write_timelines(TIMELINES[kind](shape, np.random.default_rng(3), 300), env.stream_config().output_dir)
    rows = load_timelines(env.stream_config().output_dir)
    lines: list[str] = []

    result = run_refresh(
        env, rows, rows, None, EpsilonGreedyExploration(epsilon=0.1), label="night0", progress=lines.append
    )

    registry = ModelRegistry(env.registry_dir)
    assert registry.list_versions() == [result.candidate.version]
    assert (result.candidate.algorithm, result.candidate.action_kind) == (trainer["type"], kind)
    if kind is ActionKind.CONTINUOUS:
        assert result.candidate.actions == actions  # derived from the timelines' possible_actions
    assert [line.split(":")[0] for line in lines[:3]] == [f"refresh night0 {i}/3" for i in (1, 2, 3)]
    assert f"training {trainer['type']} on" in lines[1]
    # CPE ran for this kind: a report exists and the gate decided on it (either way).
    assert result.report is not None, result.decision.reasons
    assert (env.reports_dir / result.candidate.version / "cpe_report.json").is_file()
    assert (registry.deployed() == result.candidate.version) == result.decision.approved


def test_an_undecided_candidate_becomes_a_canary_and_the_next_refresh_promotes_it(tmp_path: Path) -> None:
    """With `gate.canary`, a candidate the data cannot judge (here: an effective-sample-size minimum no
    data reach) serves a share of episodes; the next refresh promotes it on better realized returns
    and starts its own undecided candidate as the new canary."""
    trainer = {
        "type": "sac",
        "action_low": [-2.0],
        "action_high": [2.0],
        "hidden_sizes": [8],
        "num_epochs": 2,
    }
    evaluation = {
        **SMALL_EVALUATION,
        "gate": {"min_effective_sample_size": 1e9, "canary": {"share": 0.5, "min_episodes": 5}},
    }
    config = load_config(overrides={"trainer": {**trainer, "batch_size": 32}, "evaluation": evaluation})
    env = Environment.from_config(config, tmp_path / "run")
    rows = pd.DataFrame(
        TIMELINES[ActionKind.CONTINUOUS](
            {"actions": ["torque"], "algorithm": trainer}, np.random.default_rng(3), 300
        )
    )
    lines: list[str] = []
    first = run_refresh(env, rows, rows, None, EpsilonGreedyExploration(), label="n0", progress=lines.append)
    registry = ModelRegistry(env.registry_dir)
    assert first.decision.undecided and first.decision.canary and not first.decision.deployed
    canary = registry.canary()
    assert canary is not None and canary.version == first.candidate.version and canary.baseline is None
    assert "as a canary" in lines[-1]
    assert "canary: serves 50% of episodes" in first.decision.summary

    # The episodes since: those the canary served returned 1.0 more per step than the baseline's.
    later = rows.copy()
    later["mdp_id"] = "after-" + later["mdp_id"]
    later["timestamp"] = pd.Timestamp(canary.started_at) + pd.to_timedelta(
        later["sequence_number"] + 1, unit="s"
    )
    served_by_canary = later["mdp_id"].str[-1].isin(list("02468"))
    later["model_version"] = np.where(served_by_canary, canary.version, "day0-uniform")
    later["reward"] = later["reward"] + np.where(served_by_canary, 1.0, 0.0)
    both = pd.concat([rows, later], ignore_index=True)
    second = run_refresh(
        env, both, later, None, EpsilonGreedyExploration(), label="n1", progress=lines.append
    )
    verdict = second.canary_verdict
    assert verdict is not None and verdict.outcome == "promote", verdict
    assert verdict.canary_episodes >= 5 and verdict.baseline_episodes >= 5
    assert registry.deployed() == first.candidate.version
    assert registry.canary().version == second.candidate.version  # the next undecided one
    assert (env.reports_dir / first.candidate.version / "canary.json").is_file()
