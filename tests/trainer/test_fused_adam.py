"""`adam_step` is `optimizer.step()` of a fused torch Adam, bitwise, across a save and reload."""

from __future__ import annotations

import io

import torch
from torch import nn

from trainer._fused_adam import adam_step, fused_adam


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def _train(steps: range, network: nn.Module, optimizer: torch.optim.Adam, fast: bool) -> None:
    for step in steps:
        x = torch.randn(16, 5, generator=torch.Generator().manual_seed(step))
        for parameter in network.parameters():
            parameter.grad = None
        network(x).pow(2).sum().backward()
        if fast:
            adam_step(optimizer)
        else:
            optimizer.step()


def test_adam_step_equals_optimizer_step_bitwise_across_a_reload() -> None:
    slow, fast = _network(), _network()
    slow_adam = fused_adam(list(slow.parameters()), 1e-2, weight_decay=0.01)
    fast_adam = fused_adam(list(fast.parameters()), 1e-2, weight_decay=0.01)
    _train(range(20), slow, slow_adam, fast=False)
    _train(range(10), fast, fast_adam, fast=True)

    saved = io.BytesIO()  # a checkpoint and resume halfway: the state tensors are replaced
    torch.save({"net": fast.state_dict(), "adam": fast_adam.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    fast = _network()
    fast.load_state_dict(state["net"])
    fast_adam = fused_adam(list(fast.parameters()), 1e-2, weight_decay=0.01)
    fast_adam.load_state_dict(state["adam"])
    _train(range(10, 20), fast, fast_adam, fast=True)

    for (name, a), b in zip(slow.state_dict().items(), fast.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for p, q in zip(slow.parameters(), fast.parameters(), strict=True):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(slow_adam.state[p][key], fast_adam.state[q][key]), key


def test_adam_step_falls_back_to_step_when_a_gradient_is_missing() -> None:
    network = _network()
    optimizer = fused_adam(list(network.parameters()), 1e-2, weight_decay=0.0)
    _train(range(2), network, optimizer, fast=True)
    frozen = network[2].bias.detach().clone()
    network[2].bias.grad = None
    network[0].weight.grad = torch.ones_like(network[0].weight)

    adam_step(optimizer)  # torch's own step skips parameters without a gradient

    assert torch.equal(network[2].bias, frozen)
    assert int(optimizer.state[network[0].weight]["step"]) == 3
