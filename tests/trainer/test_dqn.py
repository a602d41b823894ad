"""DQN on timelines: learns known answers, handles terminals and gamma, is deterministic, logs metrics."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer_timelines import (
    BANDIT_ACTIONS,
    TWO_STEP_ACTIONS,
    bandit_expected_reward,
    fit_spec,
    make_bandit_timelines,
    make_two_step_timelines,
)

from features import build_feature_matrix
from trainer import CqlConfig, DqnConfig, QNetwork, TrainingDataError, train_dqn
from trainer.artifact import FEATURES_INPUT, MASK_INPUT, Q_OUTPUT
from trainer.cql import conservative_penalty
from trainer.dqn import _UpdateRows
from trainer.exporters import export_q_network
from trainer.parquet_data import training_transitions

FAST = {"batch_size": 64, "learning_rate": 3e-3, "hidden_sizes": [32, 32]}


def _held_out_q(network, spec, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    held_out = make_bandit_timelines(n, seed=99)
    x = build_feature_matrix(list(held_out["state_features"]), spec.feature_names)
    with torch.no_grad():
        q = network(torch.as_tensor(x), torch.ones(n, len(BANDIT_ACTIONS))).numpy()
    return q, bandit_expected_reward(x[:, spec.feature_names.index("x1")])


@pytest.mark.parametrize(
    ("double_q", "dueling", "epochs"),
    [(True, True, 50), (False, False, 30), (True, False, 30), (False, True, 30)],
)
def test_contextual_bandit_q_matches_expected_reward_on_held_out_states(
    tmp_path: Path, double_q: bool, dueling: bool, epochs: int
) -> None:
    timelines = make_bandit_timelines(400, seed=0)
    spec = fit_spec(timelines)
    config = DqnConfig(gamma=0.0, double_q=double_q, dueling=dueling, num_epochs=epochs, **FAST)

    result = train_dqn(timelines, spec, BANDIT_ACTIONS, config, tmp_path / "tb")

    q, expected = _held_out_q(result.network, spec)
    clear = np.abs(np.sort(expected, axis=1)[:, -1] - np.sort(expected, axis=1)[:, -2]) > 0.1
    greedy_right = (q.argmax(axis=1) == expected.argmax(axis=1))[clear].mean()
    assert greedy_right >= 0.95, f"greedy action right on only {greedy_right:.0%} of clear held-out states"
    mae_bound = 0.06 if epochs >= 50 else 0.12
    assert np.abs(q - expected).mean() < mae_bound
    assert result.metrics["train/mc_loss"] < 0.15  # gamma 0: MC return is the reward itself


@pytest.mark.parametrize(("gamma", "best_first_action"), [(0.9, "right"), (0.3, "left")])
def test_two_step_mdp_discounts_the_future(tmp_path: Path, gamma: float, best_first_action: str) -> None:
    timelines = make_two_step_timelines(200, seed=0)
    spec = fit_spec(timelines)
    config = DqnConfig(gamma=gamma, num_epochs=50, target_update_tau=0.1, **FAST)

    result = train_dqn(timelines, spec, TWO_STEP_ACTIONS, config, tmp_path / "tb")

    x = build_feature_matrix([{"stage": 0.0, "noise": 0.0}, {"stage": 1.0, "noise": 0.0}], spec.feature_names)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with torch.no_grad():
        q = result.network(torch.as_tensor(x), mask).numpy()
    assert q[0, TWO_STEP_ACTIONS.index("left")] == pytest.approx(1.0, abs=0.1)
    assert q[0, TWO_STEP_ACTIONS.index("right")] == pytest.approx(2.0 * gamma, abs=0.1)
    assert q[1, TWO_STEP_ACTIONS.index("collect")] == pytest.approx(2.0, abs=0.1)
    assert TWO_STEP_ACTIONS[int(q[0].argmax())] == best_first_action
    assert np.isneginf(q[0, 2]) and np.isneginf(q[1, :2]).all()  # impossible actions masked
    assert result.metrics["train/mc_loss"] < 0.1


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    timelines = make_two_step_timelines(60, seed=1)
    spec = fit_spec(timelines)
    config = DqnConfig(gamma=0.9, num_epochs=3, seed=7, **FAST)

    first = train_dqn(timelines, spec, TWO_STEP_ACTIONS, config, tmp_path / "a")
    second = train_dqn(timelines, spec, TWO_STEP_ACTIONS, config, tmp_path / "b")
    other_seed = train_dqn(
        timelines, spec, TWO_STEP_ACTIONS, config.model_copy(update={"seed": 8}), tmp_path / "c"
    )

    for name, tensor in first.network.state_dict().items():
        assert torch.equal(tensor, second.network.state_dict()[name]), name
    assert first.metrics == second.metrics
    assert first.metrics != other_seed.metrics


def test_metrics_are_readable_back_from_tensorboard(tmp_path: Path) -> None:
    timelines = make_two_step_timelines(100, seed=2)
    spec = fit_spec(timelines)
    config = DqnConfig(gamma=0.9, num_epochs=8, **FAST)

    result = train_dqn(timelines, spec, TWO_STEP_ACTIONS, config, tmp_path / "tb")

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected_tags = {"train/td_loss", "train/mc_loss"} | {
        f"train/{kind}/{a}" for a in TWO_STEP_ACTIONS for kind in ("q_mean", "model_action_share")
    }
    assert expected_tags <= tags
    td = events.Scalars("train/td_loss")
    assert [e.step for e in td] == list(range(8))
    assert td[-1].value == pytest.approx(result.metrics["train/td_loss"], rel=1e-6)
    assert td[-1].value < td[0].value
    share = events.Scalars("train/logged_action_share/collect")[-1].value
    assert share == pytest.approx((timelines["action"] == "collect").mean(), rel=1e-6)
    assert result.data_range.rows == len(timelines)
    assert result.data_range.start == timelines["timestamp"].min().to_pydatetime()


def test_unknown_logged_action_is_named_with_its_rows(tmp_path: Path) -> None:
    timelines = make_bandit_timelines(20, seed=3)
    for row in (4, 9):
        timelines.at[row, "action"] = "teleport"
        timelines.at[row, "possible_actions"] = ["up", "teleport"]
    spec = fit_spec(timelines)

    with pytest.raises(TrainingDataError) as caught:
        train_dqn(timelines, spec, BANDIT_ACTIONS, DqnConfig(num_epochs=1), tmp_path)

    message = str(caught.value)
    assert "'teleport'" in message and "2 row(s)" in message
    assert timelines.at[4, "mdp_id"] in message and timelines.at[9, "mdp_id"] in message
    assert caught.value.column == "action" and caught.value.rows == [4, 9]


@pytest.mark.parametrize(
    ("corrupt", "column"),
    [
        (lambda t: t.at[2, "possible_actions"].append("fly"), "possible_actions"),
        (lambda t: t.__setitem__("action", t["action"].where(t.index != 3, "stay")), "possible_actions"),
        (lambda t: t.drop(columns=["not_terminal"], inplace=True), "not_terminal"),
        (lambda t: t.__setitem__("reward", t["reward"].where(t.index != 1, np.nan)), "reward"),
    ],
    ids=["unknown-possible-action", "logged-action-not-possible", "missing-column", "nan-reward"],
)
def test_bad_timelines_raise_training_data_error(tmp_path: Path, corrupt, column: str) -> None:
    timelines = make_bandit_timelines(10, seed=4)
    timelines["possible_actions"] = [["up", "down"] for _ in range(10)]
    timelines["action"] = "up"
    spec = fit_spec(timelines)
    corrupt(timelines)

    with pytest.raises(TrainingDataError) as caught:
        train_dqn(timelines, spec, BANDIT_ACTIONS, DqnConfig(num_epochs=1), tmp_path)
    assert caught.value.column == column


def _timelines_with_missing_features(n_mdps: int, seed: int) -> pd.DataFrame:
    """Two-step MDPs (terminal rows, rows with no possible next action) where a third of the
    states lack `noise`: the normalization has NaN to fill and presence flags to set."""
    timelines = make_two_step_timelines(n_mdps, seed=seed)
    rng = np.random.default_rng(seed)

    def drop_noise(state: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in state.items() if k != "noise"} if state and rng.random() < 0.33 else state

    timelines["state_features"] = [drop_noise(s) for s in timelines["state_features"]]
    timelines["next_state_features"] = [drop_noise(s) for s in timelines["next_state_features"]]
    return timelines


def _train_normalizing_every_batch(
    timelines: pd.DataFrame, spec, config: DqnConfig, *, fused_adam: bool
) -> QNetwork:
    """The update as it was before training normalized once: the network's own normalization on
    every minibatch, masks applied with `where`, one lerp per parameter, and torch's Adam (fused,
    as `train_dqn` now uses, or the per-tensor default it used before). Same data, seeds and
    minibatch order as `train_dqn` (single process)."""
    data = training_transitions(
        timelines, spec.feature_names, TWO_STEP_ACTIONS, config.gamma, config.reward_clip, config.n_step
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = QNetwork(spec, len(TWO_STEP_ACTIONS), config.hidden_sizes, config.dueling)
    target = copy.deepcopy(network)
    target.requires_grad_(False)
    optimizer = torch.optim.Adam(
        [p for p in network.parameters() if p.requires_grad], lr=config.learning_rate, fused=fused_adam
    )
    shuffle = torch.Generator().manual_seed(config.seed)
    for _ in range(config.num_epochs):
        for rows in torch.randperm(data.n_rows, generator=shuffle).split(config.batch_size):
            q_all = network.q_all(data.states[rows])
            q_taken = q_all.gather(1, data.actions[rows][:, None]).squeeze(1)
            with torch.no_grad():
                next_mask = data.possible_next_mask[rows]
                target_q = target(data.next_states[rows], next_mask)
                if config.double_q:
                    best = network(data.next_states[rows], next_mask).argmax(dim=1, keepdim=True)
                    next_value = target_q.gather(1, best).squeeze(1)
                else:
                    next_value = target_q.max(dim=1).values
                next_value = torch.where(next_mask.sum(dim=1) > 0, next_value, torch.zeros_like(next_value))
                y = data.rewards[rows] + data.discounts[rows] * data.not_terminal[rows] * next_value
            loss = (q_taken - y) ** 2
            if isinstance(config, CqlConfig):
                loss = loss + config.cql_alpha * conservative_penalty(
                    q_all, data.actions[rows], data.possible_mask[rows]
                )
            optimizer.zero_grad()
            (loss.sum() / len(rows)).backward()
            optimizer.step()
            with torch.no_grad():
                for t, o in zip(target.parameters(), network.parameters(), strict=True):
                    t.lerp_(o, config.target_update_tau)
    return network


@pytest.mark.parametrize(
    "config",
    [
        DqnConfig(gamma=0.9, double_q=False, dueling=False, num_epochs=4, **FAST),
        DqnConfig(gamma=0.9, double_q=True, dueling=True, num_epochs=4, **FAST),
        CqlConfig(gamma=0.9, cql_alpha=0.5, num_epochs=4, **FAST),
    ],
    ids=["dqn", "double-dueling", "cql"],
)
def test_normalizing_once_trains_the_weights_normalizing_every_batch_trains(
    tmp_path: Path, config: DqnConfig
) -> None:
    timelines = _timelines_with_missing_features(120, seed=3)
    spec = fit_spec(timelines)

    result = train_dqn(timelines, spec, TWO_STEP_ACTIONS, config, tmp_path / "tb")
    same_adam = _train_normalizing_every_batch(timelines, spec, config, fused_adam=True)
    default_adam = _train_normalizing_every_batch(timelines, spec, config, fused_adam=False)

    for name, tensor in result.network.state_dict().items():
        assert torch.equal(tensor, same_adam.state_dict()[name]), name  # bitwise: the same math
        # Fused and per-tensor Adam round differently (measured: ≤ 3e-8 after 4 epochs).
        torch.testing.assert_close(tensor, default_adam.state_dict()[name], rtol=0, atol=1e-6, msg=name)


def test_exported_graph_on_raw_features_matches_training_on_normalized_rows(tmp_path: Path) -> None:
    timelines = _timelines_with_missing_features(80, seed=4)
    spec = fit_spec(timelines)
    config = DqnConfig(gamma=0.9, num_epochs=2, **FAST)
    result = train_dqn(timelines, spec, TWO_STEP_ACTIONS, config, tmp_path / "tb")
    data = training_transitions(timelines, spec.feature_names, TWO_STEP_ACTIONS, 0.9, None, 1)
    assert torch.isnan(data.states).any()  # the raw rows do have missing features

    exported = export_q_network(result, timelines, config)
    session = ort.InferenceSession(exported.onnx_bytes, providers=["CPUExecutionProvider"])
    served_q = session.run(
        [Q_OUTPUT], {FEATURES_INPUT: data.states.numpy(), MASK_INPUT: data.possible_mask.numpy()}
    )[0]

    with torch.no_grad():  # what training fed the layers: every row normalized once, up front
        trained_q = result.network.q_normalized(_UpdateRows.build(data, result.network.normalization).states)
    trained_q = torch.where(data.possible_mask > 0.5, trained_q, torch.full_like(trained_q, -math.inf))
    np.testing.assert_allclose(served_q, trained_q.numpy(), rtol=1e-5, atol=1e-6)
