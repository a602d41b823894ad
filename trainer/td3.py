"""TD3 (Fujimoto et al. 2018) for continuous actions, top to bottom.

Deterministic tanh actor, twin critics with clipped double-Q targets, target policy smoothing
and delayed actor updates. Its exported `action_log_std` is the constant exploration noise
(`exploration_noise_std`, pre-squash), so served exploration follows the same contract as SAC.
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


class Td3Config(ContinuousConfig):
    """Hyper-parameters of TD3; stored verbatim in the model's metadata."""

    type: Literal["td3"] = "td3"
    policy_delay: int = Field(2, ge=1, description="actor and target update every n critic updates")
    target_noise_std: float = Field(0.2, ge=0.0, description="target policy smoothing, unit box")
    target_noise_clip: float = Field(0.5, ge=0.0)
    exploration_noise_std: float = Field(
        0.2, gt=0.0, description="std of served exploration noise, added before the tanh squash"
    )


class DeterministicActor(ContinuousActor):
    """tanh(body(state)) is the action; log std is a constant (exploration noise, not learned)."""

    def __init__(self, spec: NormalizationSpec, config: Td3Config):
        super().__init__(spec, config.action_low, config.action_high)
        self.body = mlp(int(spec.output_dim), config.hidden_sizes, config.action_dim)
        self.register_buffer(
            "log_std", torch.full((config.action_dim,), math.log(config.exploration_noise_std))
        )

    def distribution(self, normalized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.body(normalized)
        return loc, self.log_std.expand_as(loc)

    def act(self, normalized: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(normalized))


class Td3Learner:
    """TD3 networks, targets and optimizers; `update` is one critic step (+ actor every `policy_delay`).

    Under DDP the critic and the actor's forward are wrapped.
    """

    def __init__(
        self, spec: NormalizationSpec, config: Td3Config, distributed: DistributedContext = SINGLE_PROCESS
    ):
        self.config = config
        self.actor = DeterministicActor(spec, config)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = TwinCritic(int(spec.output_dim), config.action_dim, config.hidden_sizes)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.body.parameters(), lr=config.actor_learning_rate)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_learning_rate)
        self.steps = 0
        self._critic = distributed.wrap(self.critic)
        self._act = distributed.wrap(ForwardOf(self.actor, "act"))
        self._saved = ModulesAndOptimizers(
            {
                "actor": self.actor,
                "actor_target": self.actor_target,
                "critic": self.critic,
                "critic_target": self.critic_target,
            },
            {"actor_optimizer": self.actor_optimizer, "critic_optimizer": self.critic_optimizer},
        )

    def update(self, batch: ContinuousTransitions, shard: MinibatchShard | None = None) -> dict[str, float]:
        config = self.config
        shard = shard or MinibatchShard.whole(batch.n_rows)
        scale = shard.loss_scale
        # Drawn for the whole global batch on every process: the math does not depend on the shards.
        noise = shard.share(torch.randn(shard.global_size, config.action_dim))
        with torch.no_grad():
            state, next_state = batch.states, batch.next_states  # normalized (`normalized_transitions`)
            noise = (noise * config.target_noise_std).clamp(
                -config.target_noise_clip, config.target_noise_clip
            )
            next_action = (self.actor_target.act(next_state) + noise).clamp(-1.0, 1.0)
            next_q = torch.min(*self.critic_target(next_state, next_action))
            y = batch.rewards + config.gamma * batch.not_terminal * next_q

        metrics = update_twin_critic(self._critic, self.critic_optimizer, state, batch.actions, y, scale)

        self.steps += 1
        if self.steps % config.policy_delay == 0:
            self.critic.requires_grad_(False)
            actor_loss = -self.critic.q1(torch.cat([state, self._act(state)], dim=1)).sum() * scale
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()
            self.critic.requires_grad_(True)
            metrics["train/actor_loss"] = float(actor_loss.detach())
            soft_update(self.actor_target, self.actor, config.target_update_tau)
            soft_update(self.critic_target, self.critic, config.target_update_tau)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {**self._saved.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._saved.load_state_dict(state)
        self.steps = int(state["steps"])


# TD3 trains through the shared continuous loop (`train_continuous`); the config's `type`
# picks the learner. Same signature as `train_dqn`, so it is one line in `trainer.algorithms`.
train_td3 = train_continuous
