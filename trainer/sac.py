"""Soft actor-critic (Haarnoja et al. 2018) for continuous actions, top to bottom.

Tanh-squashed Gaussian actor, twin critics with target networks, entropy temperature tuned
towards `target_entropy` (default −action_dim). Offline on timelines via `train_sac`; the online
Gym loop (`trainer.gym_loop`) calls `SacLearner.update` on replay-buffer minibatches.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
from pydantic import Field

from features import NormalizationSpec
from trainer._minibatch_loop import ModulesAndOptimizers
from trainer.continuous import (
    ContinuousActor,
    ContinuousConfig,
    ContinuousTransitions,
    TwinCritic,
    mlp,
    soft_update,
    train_continuous,
    update_twin_critic,
)
from trainer.distributed import SINGLE_PROCESS, DistributedContext, ForwardOf, MinibatchShard

LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0


class SacConfig(ContinuousConfig):
    """Hyper-parameters of SAC; stored verbatim in the model's metadata."""

    type: Literal["sac"] = "sac"
    initial_alpha: float = Field(0.2, gt=0.0, description="starting entropy temperature")
    tune_alpha: bool = True
    target_entropy: float | None = Field(None, description="None = −action_dim")
    alpha_learning_rate: float = Field(1e-3, gt=0.0)
    policy_delay: int = Field(1, ge=1, description="actor/alpha update every n critic updates")


class GaussianActor(ContinuousActor):
    """State-dependent mean and log std of the pre-squash Gaussian; log std squashed into a range."""

    def __init__(self, spec: NormalizationSpec, config: SacConfig):
        super().__init__(spec, config.action_low, config.action_high)
        self.body = mlp(int(spec.output_dim), config.hidden_sizes, 2 * config.action_dim)

    def distribution(self, normalized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_log_std = self.body(normalized).chunk(2, dim=1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw_log_std) + 1.0)
        return loc, log_std

    def sample(self, normalized: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised unit-box action and its log density (tanh change of variables).

        `noise` is the standard normal draw [B, A] (drawn by the caller, see `MinibatchShard`).
        """
        loc, log_std = self.distribution(normalized)
        pre_tanh = loc + log_std.exp() * noise
        unit = torch.tanh(pre_tanh)
        gaussian = -0.5 * ((pre_tanh - loc) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        # log(1 − tanh(u)²) computed stably as 2·(log 2 − u − softplus(−2u)).
        log_det = 2.0 * (math.log(2.0) - pre_tanh - torch.nn.functional.softplus(-2.0 * pre_tanh))
        return unit, (gaussian - log_det).sum(dim=1)


class SacLearner:
    """SAC networks, targets and optimizers; `update` is one critic step (+ actor/alpha per delay).

    Under DDP the critic and the actor's sampling forward are wrapped; the temperature's gradient
    is averaged by hand (it lives outside any module).
    """

    def __init__(
        self, spec: NormalizationSpec, config: SacConfig, distributed: DistributedContext = SINGLE_PROCESS
    ):
        self.config = config
        self.distributed = distributed
        self.actor = GaussianActor(spec, config)
        self.critic = TwinCritic(int(spec.output_dim), config.action_dim, config.hidden_sizes)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.initial_alpha), requires_grad=config.tune_alpha)
        self.target_entropy = (
            -float(config.action_dim) if config.target_entropy is None else config.target_entropy
        )
        self.actor_optimizer = torch.optim.Adam(self.actor.body.parameters(), lr=config.actor_learning_rate)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_learning_rate)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_learning_rate)
        self.steps = 0
        self._critic = distributed.wrap(self.critic)
        self._sample = distributed.wrap(ForwardOf(self.actor, "sample"))
        self._saved = ModulesAndOptimizers(
            {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target},
            {
                "actor_optimizer": self.actor_optimizer,
                "critic_optimizer": self.critic_optimizer,
                "alpha_optimizer": self.alpha_optimizer,
            },
        )

    def update(self, batch: ContinuousTransitions, shard: MinibatchShard | None = None) -> dict[str, float]:
        config = self.config
        shard = shard or MinibatchShard.whole(batch.n_rows)
        scale = shard.loss_scale
        # Drawn for the whole global batch on every process: the math does not depend on the shards.
        noise = shard.share(torch.randn(shard.global_size, 2, config.action_dim))
        with torch.no_grad():
            state, next_state = batch.states, batch.next_states  # normalized (`normalized_transitions`)
            alpha = self.log_alpha.exp()
            next_action, next_log_prob = self.actor.sample(next_state, noise[:, 0])
            next_q = torch.min(*self.critic_target(next_state, next_action)) - alpha * next_log_prob
            y = batch.rewards + config.gamma * batch.not_terminal * next_q

        metrics = update_twin_critic(self._critic, self.critic_optimizer, state, batch.actions, y, scale)

        self.steps += 1
        if self.steps % config.policy_delay == 0:
            self.critic.requires_grad_(False)
            action, log_prob = self._sample(state, noise[:, 1])
            q_pi = torch.min(*self.critic(state, action))
            actor_loss = (alpha * log_prob - q_pi).sum() * scale
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()
            self.critic.requires_grad_(True)
            metrics["train/actor_loss"] = float(actor_loss.detach())
            metrics["train/entropy"] = float(-log_prob.detach().sum() * scale)
            if config.tune_alpha:
                alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).sum() * scale
                self.alpha_optimizer.zero_grad(set_to_none=True)
                alpha_loss.backward()
                self.distributed.average_gradients([self.log_alpha])
                self.alpha_optimizer.step()
        metrics["train/alpha"] = float(self.log_alpha.detach().exp())
        soft_update(self.critic_target, self.critic, config.target_update_tau)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {**self._saved.state_dict(), "log_alpha": self.log_alpha.detach().clone(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._saved.load_state_dict(state)
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.steps = int(state["steps"])


# SAC trains through the shared continuous loop (`train_continuous`); the config's `type`
# picks the learner. Same signature as `train_dqn`, so it is one line in `trainer.algorithms`.
train_sac = train_continuous
