"""Adam for small networks updated thousands of times an epoch: torch's fused kernel, called directly.

`torch.optim.Adam(fused=True)` updates every parameter in one kernel, but its `step()` spends
as long again in Python bookkeeping (grouping tensors, grad-mode and profiler contexts) as in
the kernel. `adam_step` makes the same call with the same state as that `step()` — exp_avg,
exp_avg_sq and a step count per parameter in `optimizer.state`, so checkpoints and
`load_state_dict` are unchanged — and falls back to `step()` whenever the fast path does not
apply (state not yet created, a missing gradient, options the fast path does not cover).
"""

from __future__ import annotations

import torch


def fused_adam(
    parameters: list[torch.nn.Parameter], learning_rate: float, weight_decay: float
) -> torch.optim.Adam:
    """A torch Adam on `parameters` that `adam_step` can step (fused, one parameter group)."""
    return torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay, fused=True)


def adam_step(optimizer: torch.optim.Adam) -> None:
    """`optimizer.step()` for an optimizer from `fused_adam`: the same update, bitwise."""
    group = optimizer.param_groups[0]
    params: list[torch.Tensor] = group["params"]
    states = [optimizer.state.get(p) for p in params]
    if (
        len(optimizer.param_groups) != 1
        or not group.get("fused")
        or group["amsgrad"]
        or group["maximize"]
        or group["decoupled_weight_decay"]
        or isinstance(group["lr"], torch.Tensor)
        or not all(states)
        or any(p.grad is None for p in params)
    ):
        optimizer.step()
        return
    steps = [state["step"] for state in states]
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    torch._fused_adam_(
        params,
        [p.grad for p in params],
        [state["exp_avg"] for state in states],
        [state["exp_avg_sq"] for state in states],
        [],
        steps,
        amsgrad=False,
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )
