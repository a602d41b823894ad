"""CQL keeps the greedy policy on the logged actions where DQN trusts an untried, over-estimated one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import TypeAdapter, ValidationError
from trainer_timelines import _row, fit_spec

from features import build_feature_matrix
from trainer import AlgorithmConfig, CqlConfig, DqnConfig, train_dqn
from trainer.cql import conservative_penalty

ACTIONS = ["safe", "risky", "untried"]


def _logs_without_untried(n: int, seed: int) -> pd.DataFrame:
    """Costs only (rewards < 0); `untried` is always possible and never logged.

    An unfitted Q(s, untried) stays near its initial ~0, above every logged value (−1, −2): the
    over-estimation an offline greedy policy walks into.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        state = {"x": float(rng.uniform(-1, 1))}
        if rng.random() < 0.5:
            rows.append(_row(f"u{i}", 0, state, "safe", -1.0 + rng.normal(0, 0.05), ACTIONS))
        else:
            rows.append(_row(f"u{i}", 0, state, "risky", -2.0 + rng.normal(0, 0.05), ACTIONS))
    return pd.DataFrame(rows)


def _greedy_share(network, spec, action: str) -> float:
    x = build_feature_matrix([{"x": float(v)} for v in np.linspace(-1, 1, 41)], spec.feature_names)
    with torch.no_grad():
        q = network(torch.as_tensor(x), torch.ones(len(x), len(ACTIONS))).numpy()
    return float((q.argmax(axis=1) == ACTIONS.index(action)).mean())


def test_cql_does_not_pick_the_untried_action_dqn_over_estimates(tmp_path: Path) -> None:
    timelines = _logs_without_untried(600, seed=0)
    spec = fit_spec(timelines)
    common = {"gamma": 0.0, "num_epochs": 30, "batch_size": 64, "learning_rate": 3e-3, "hidden_sizes": [32]}

    dqn = train_dqn(timelines, spec, ACTIONS, DqnConfig(**common), tmp_path / "dqn")
    cql = train_dqn(timelines, spec, ACTIONS, CqlConfig(cql_alpha=1.0, **common), tmp_path / "cql")

    assert _greedy_share(dqn.network, spec, "untried") > 0.5  # the failure CQL exists for
    assert _greedy_share(cql.network, spec, "untried") == 0.0
    assert _greedy_share(cql.network, spec, "safe") == 1.0


def test_conservative_penalty_is_logsumexp_over_possible_actions_minus_the_logged_q() -> None:
    q = torch.tensor([[1.0, 2.0, 50.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # row 0: the 50 is not possible
    penalty = conservative_penalty(q, torch.tensor([0, 2]), mask)
    assert penalty.tolist() == pytest.approx([np.log(np.e + np.e**2) - 1.0, np.log(3.0)])


def test_cql_is_its_own_algorithm_type_in_run_configs() -> None:
    config = TypeAdapter(AlgorithmConfig).validate_python({"type": "cql", "cql_alpha": 2.0, "n_step": 3})
    assert isinstance(config, CqlConfig) and config.cql_alpha == 2.0 and config.n_step == 3
    with pytest.raises(ValidationError, match="cql_alpha"):
        TypeAdapter(AlgorithmConfig).validate_python({"type": "dqn", "cql_alpha": 1.0})
