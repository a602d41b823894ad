"""The continuous-action loop normalizes every logged row once and trains exactly what
normalizing each minibatch inside the update trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from continuous_timelines import ACTION_HIGH, ACTION_LOW, fit_spec, make_continuous_bandit_timelines

from trainer import SacConfig, Td3Config
from trainer.continuous import (
    build_continuous_transitions,
    build_learner,
    normalized_transitions,
    train_continuous,
)
from trainer.distributed import MinibatchShard

COMMON = {
    "action_low": ACTION_LOW,
    "action_high": ACTION_HIGH,
    "gamma": 0.0,
    "num_epochs": 2,
    "batch_size": 32,
}


@pytest.mark.parametrize("config", [SacConfig(**COMMON), Td3Config(**COMMON)], ids=["sac", "td3"])
def test_normalizing_once_trains_the_weights_normalizing_every_batch_trains(tmp_path: Path, config) -> None:
    timelines = make_continuous_bandit_timelines(200, seed=4)
    spec = fit_spec(timelines)

    trained = train_continuous(timelines, spec, ["a"], config, tmp_path / "tb").network

    data = build_continuous_transitions(timelines, spec.feature_names, ["a"], config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        learner = build_learner(spec, config)
        shuffle = torch.Generator().manual_seed(config.seed)
        for _ in range(config.num_epochs):
            for rows in torch.randperm(data.n_rows, generator=shuffle).split(config.batch_size):
                # The old path: the minibatch's raw rows, normalized right before the update.
                learner.update(normalized_transitions(learner.actor, data.take(rows)), MinibatchShard(rows))

    for name, tensor in learner.actor.state_dict().items():
        assert torch.equal(trained.state_dict()[name], tensor), name
