"""Contextual bandits for one-step problems, trained off-policy on logged timelines.

Every MDP has one step (`not_terminal` is False everywhere): a row is (context, action,
propensity, reward). Three learners, one config each (discriminated on `type`):

- `linucb`: per-action ridge regression in closed form; score = mean + α·sqrt(xᵀA⁻¹x).
- `linear_thompson`: the same posterior; the served sample is mean + v·sqrt(xᵀA⁻¹x)·N(0, 1).
- `neural_bandit`: one MLP reward model per action; exploration through `trainer.policy`.

x is the normalized context (`features.NormalizationModule`: values | presence mask) plus a
constant 1. All export the discrete ONNX contract (`q_values`, `action_probabilities`); the
linear ones add `reward_mean` and `exploration_width` outputs (see `trainer.artifact`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from features import NormalizationModule, NormalizationSpec
from trainer._minibatch_loop import EpochLoop, ModulesAndOptimizers, run_epochs
from trainer.artifact import (
    EXPLORATION_WIDTH_OUTPUT,
    FEATURES_INPUT,
    MASK_INPUT,
    PROBS_OUTPUT,
    Q_OUTPUT,
    REWARD_MEAN_OUTPUT,
    DataRange,
)
from trainer.checkpoint import CheckpointConfig
from trainer.data import build_transitions
from trainer.distributed import SINGLE_PROCESS, DistributedContext, ForwardOf, MinibatchShard
from trainer.errors import TrainerError, TrainingDataError
from trainer.export import parity_sample
from trainer.graph_export import export_graph
from trainer.parametric_data import timeline_data_range

StepHook = Callable[[int], None]


class _BanditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    softmax_temperature: float = Field(1.0, gt=0.0, description="baked into `action_probabilities`")
    propensity_weighting: bool = Field(
        False, description="weight each logged row by min(1/propensity, max_weight) (off-policy correction)"
    )
    max_weight: float = Field(100.0, gt=0.0)
    seed: int = 0
    device: Literal["cpu"] = "cpu"


class LinUcbConfig(_BanditConfig):
    """Disjoint LinUCB: greedy on the upper confidence bound."""

    type: Literal["linucb"] = "linucb"
    ridge_lambda: float = Field(1.0, gt=0.0, description="prior precision: A = λI + Σ w x xᵀ")
    alpha: float = Field(1.0, ge=0.0, description="width of the confidence bound")


class LinearThompsonConfig(_BanditConfig):
    """Disjoint linear Thompson sampling with a Gaussian posterior N(A⁻¹b, v²A⁻¹)."""

    type: Literal["linear_thompson"] = "linear_thompson"
    ridge_lambda: float = Field(1.0, gt=0.0)
    posterior_scale: float = Field(0.5, gt=0.0, description="v: noise scale of the posterior")


class NeuralBanditConfig(_BanditConfig):
    """One MLP reward model per action, fitted by (weighted) squared error on logged rewards."""

    type: Literal["neural_bandit"] = "neural_bandit"
    hidden_sizes: list[int] = Field(default_factory=lambda: [32, 32])
    learning_rate: float = Field(3e-3, gt=0.0)
    batch_size: int = Field(128, ge=1)
    num_epochs: int = Field(30, ge=1)
    weight_decay: float = Field(0.0, ge=0.0)
    num_threads: int = Field(1, ge=1)

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError(f"hidden_sizes must all be >= 1, got {value}")
        return value


BanditConfig = Annotated[
    LinUcbConfig | LinearThompsonConfig | NeuralBanditConfig, Field(discriminator="type")
]


class LinearBandit(nn.Module):
    """raw features → x = [normalized | 1] → per action: mean xᵀμ_a and width scale·sqrt(xᵀA_a⁻¹x).

    `q_values` = mean + `bonus_weight`·width: 1 for LinUCB (greedy = UCB), 0 for Thompson
    (greedy = posterior mean; callers sample with `thompson_choice`).
    """

    def __init__(
        self, spec: NormalizationSpec, means: np.ndarray, a_inv: np.ndarray, scale: float, bonus_weight: float
    ):
        super().__init__()
        self.n_features = len(spec.feature_names)
        self.n_actions = int(means.shape[0])
        self.normalization = NormalizationModule(spec)
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float32))  # [A, D]
        self.register_buffer("a_inv", torch.as_tensor(a_inv, dtype=torch.float32))  # [A, D, D]
        self.scale = float(scale)
        self.bonus_weight = float(bonus_weight)

    def context(self, features_raw: torch.Tensor) -> torch.Tensor:
        z = self.normalization(features_raw)
        return torch.cat([z, torch.ones_like(z[:, :1])], dim=1)

    def mean_and_width(self, features_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.context(features_raw)
        mean = x @ self.means.T
        quad = torch.einsum("bd,ade,be->ba", x, self.a_inv, x)
        return mean, self.scale * torch.sqrt(torch.clamp(quad, min=0.0))

    def q_all(self, features_raw: torch.Tensor) -> torch.Tensor:
        mean, width = self.mean_and_width(features_raw)
        return mean + self.bonus_weight * width

    def forward(self, features_raw: torch.Tensor, possible_mask: torch.Tensor) -> torch.Tensor:
        """Scores with impossible actions at -inf (the DQN contract's `q_values`)."""
        return _masked(self.q_all(features_raw), possible_mask)


class NeuralBandit(nn.Module):
    """raw features → normalization → one MLP per action → expected reward [B, A]."""

    def __init__(self, spec: NormalizationSpec, n_actions: int, hidden_sizes: Sequence[int]):
        super().__init__()
        self.n_features = len(spec.feature_names)
        self.n_actions = n_actions
        self.normalization = NormalizationModule(spec)
        for parameter in self.normalization.parameters():
            parameter.requires_grad_(False)
        self.heads = nn.ModuleList(_mlp(int(spec.output_dim), hidden_sizes) for _ in range(n_actions))

    def q_all(self, features_raw: torch.Tensor) -> torch.Tensor:
        return self.q_normalized(self.normalization(features_raw))

    def q_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """`q_all` after the normalization (training normalizes every logged row once, up front)."""
        return torch.cat([head(z) for head in self.heads], dim=1)

    def forward(self, features_raw: torch.Tensor, possible_mask: torch.Tensor) -> torch.Tensor:
        return _masked(self.q_all(features_raw), possible_mask)


@dataclass(frozen=True)
class BanditResult:
    """A trained bandit plus what the registry records (same fields `run_training` reads from DQN)."""

    network: LinearBandit | NeuralBandit
    feature_names: list[str]
    actions: list[str]
    metrics: dict[str, float]
    data_range: DataRange
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch (one entry: closed form)


def train_bandit(
    timelines: pd.DataFrame,
    spec: NormalizationSpec,
    actions: Sequence[str],
    config: LinUcbConfig | LinearThompsonConfig | NeuralBanditConfig,
    log_dir: Path | None = None,
    *,
    checkpoint: CheckpointConfig | None = None,
    distributed: DistributedContext = SINGLE_PROCESS,
    on_step: StepHook | None = None,
) -> BanditResult:
    """Fit the configured bandit to logged one-step rows (the `TRAIN_FUNCTIONS` signature).

    The neural bandit trains like DQN (`trainer._minibatch_loop`): seeded and deterministic on
    CPU, DDP over `distributed` with the same weights for any number of processes, checkpoints
    and resume. Linear bandits are closed form: under `distributed` each process sums the
    sufficient statistics A and b over its share of the rows and the sums are all-reduced (exact);
    a `checkpoint` is refused, since a single pass over the data has nothing to resume.
    """
    actions = list(actions)
    data = build_transitions(timelines, list(spec.feature_names), actions, gamma=0.0)
    multi_step = np.flatnonzero(data.not_terminal.numpy() > 0.5)
    if len(multi_step):
        raise TrainingDataError(
            f"bandit {config.type!r} needs one-step MDPs, but rows {multi_step[:5].tolist()} are not "
            "terminal; train a DQN on multi-step timelines instead",
            column="not_terminal",
            rows=multi_step.tolist(),
        )
    fit = _FITS[config.type]
    network, history = fit(
        _LoggedRows(data.states, data.actions, data.rewards, _row_weights(timelines, config)),
        spec,
        actions,
        config,
        _FitRun(checkpoint, distributed, on_step),
    )
    metrics = dict(history[-1])
    for i, name in enumerate(actions):
        metrics[f"train/logged_action_share/{name}"] = float((data.actions == i).float().mean())
    if log_dir is not None and distributed.is_main:
        from tensorboardX import SummaryWriter

        with SummaryWriter(str(log_dir)) as writer:
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, 1)
    return BanditResult(
        network=network,
        feature_names=list(spec.feature_names),
        actions=actions,
        metrics=metrics,
        data_range=timeline_data_range(timelines),
        history=history,
    )


def export_bandit(
    network: LinearBandit | NeuralBandit,
    softmax_temperature: float,
    sample_features: np.ndarray | None = None,
    sample_mask: np.ndarray | None = None,
) -> bytes:
    """ONNX bytes with the discrete contract; linear bandits add `reward_mean` and `exploration_width`.

    Parity with PyTorch is checked on every output (≤ 1e-4) before the bytes are returned.
    """
    synthetic_features, synthetic_mask = parity_sample(network.n_features, network.n_actions)
    features = (
        synthetic_features
        if sample_features is None
        else np.concatenate([sample_features, synthetic_features])
    )
    mask = synthetic_mask if sample_mask is None else np.concatenate([sample_mask, synthetic_mask])
    outputs = [Q_OUTPUT, PROBS_OUTPUT]
    if isinstance(network, LinearBandit):
        outputs += [REWARD_MEAN_OUTPUT, EXPLORATION_WIDTH_OUTPUT]
    return export_graph(
        _ServedBandit(network, softmax_temperature),
        {FEATURES_INPUT: features.astype(np.float32), MASK_INPUT: mask.astype(np.float32)},
        outputs,
        {name: {0: "batch"} for name in [FEATURES_INPUT, MASK_INPUT, *outputs]},
    )


def thompson_choice(
    reward_mean: np.ndarray,
    exploration_width: np.ndarray,
    possible_mask: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One Thompson draw per row: argmax over possible actions of mean + width·N(0, 1) → indices [B].

    Exact for disjoint models: for a fixed context, xᵀθ_a with θ_a ~ N(μ_a, v²A_a⁻¹) is
    N(xᵀμ_a, v²·xᵀA_a⁻¹x), independent across actions.
    """
    draw = reward_mean + exploration_width * rng.standard_normal(reward_mean.shape)
    return np.where(np.asarray(possible_mask) > 0.5, draw, -np.inf).argmax(axis=1)


class _ServedBandit(nn.Module):
    def __init__(self, network: LinearBandit | NeuralBandit, softmax_temperature: float):
        super().__init__()
        self.network = network
        self.temperature = float(softmax_temperature)

    def forward(self, features: torch.Tensor, possible_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if isinstance(self.network, LinearBandit):
            mean, width = self.network.mean_and_width(features)
            q = _masked(mean + self.network.bonus_weight * width, possible_mask)
            return q, torch.softmax(q / self.temperature, dim=1), mean, width
        q = self.network(features, possible_mask)
        return q, torch.softmax(q / self.temperature, dim=1)


def _masked(q: torch.Tensor, possible_mask: torch.Tensor) -> torch.Tensor:
    return torch.where(possible_mask > 0.5, q, torch.full_like(q, -math.inf))


def _mlp(width: int, hidden_sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    return nn.Sequential(*layers, nn.Linear(width, 1))


def _row_weights(timelines: pd.DataFrame, config: _BanditConfig) -> np.ndarray:
    """1 per row, or min(1/propensity, max_weight) with `propensity_weighting`."""
    if not config.propensity_weighting:
        return np.ones(len(timelines))
    if "action_probability" not in timelines.columns:
        raise TrainingDataError(
            "propensity_weighting needs the action_probability column; load timelines with "
            "stream.load_timelines or turn propensity_weighting off",
            column="action_probability",
        )
    propensity = timelines["action_probability"].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~(propensity > 0.0) | ~np.isfinite(propensity))
    if len(bad):
        raise TrainingDataError(
            f"action_probability must be in (0, 1]; rows {bad[:5].tolist()} are not",
            column="action_probability",
            rows=bad.tolist(),
        )
    return np.minimum(1.0 / propensity, config.max_weight)


@dataclass(frozen=True)
class _LoggedRows:
    """Every logged row (each process holds all of them): context, action index, reward, weight."""

    states: torch.Tensor  # float32 [N, F] raw
    actions: torch.Tensor  # int64 [N]
    rewards: torch.Tensor  # float32 [N]
    weights: np.ndarray  # float64 [N]


@dataclass(frozen=True)
class _FitRun:
    """How a fit runs: checkpoints, processes, the per-step hook."""

    checkpoint: CheckpointConfig | None
    distributed: DistributedContext
    on_step: StepHook | None


def _fit_linear(
    logged: _LoggedRows,
    spec: NormalizationSpec,
    actions: list[str],
    config: LinUcbConfig | LinearThompsonConfig,
    run: _FitRun,
) -> tuple[LinearBandit, list[dict[str, float]]]:
    """Per action: A = λI + Σ w x xᵀ, b = Σ w r x, μ = A⁻¹b (float64 numpy, stored as float32).

    Σ is over every process's strided share of the rows, all-reduced: exact for any number of
    processes (up to float64 summation order).
    """
    if run.checkpoint is not None:
        raise TrainerError(
            f"{config.type} is a closed-form fit in one pass over the data: there is nothing to "
            "checkpoint or resume; remove the run's `checkpoint:` section"
        )
    ctx = run.distributed
    with torch.no_grad():
        x = (
            torch.cat([NormalizationModule(spec)(logged.states), torch.ones(len(logged.states), 1)], dim=1)
            .double()
            .numpy()
        )
    taken = logged.actions.numpy()
    r = logged.rewards.double().numpy()
    d = x.shape[1]
    gram = np.zeros((len(actions), d, d))
    moment = np.zeros((len(actions), d))
    share = np.arange(len(r))[ctx.rank :: ctx.world_size]
    for a in range(len(actions)):
        rows = share[taken[share] == a]
        xw = x[rows] * logged.weights[rows, None]
        gram[a], moment[a] = xw.T @ x[rows], xw.T @ r[rows]
    totals = ctx.all_reduce_sum(torch.from_numpy(np.concatenate([gram.ravel(), moment.ravel()]))).numpy()
    gram, moment = totals[: gram.size].reshape(gram.shape), totals[gram.size :].reshape(moment.shape)
    a_inv = np.linalg.inv(config.ridge_lambda * np.eye(d) + gram)
    means = np.einsum("ade,ae->ad", a_inv, moment)
    if isinstance(config, LinUcbConfig):
        network = LinearBandit(spec, means, a_inv, scale=config.alpha, bonus_weight=1.0)
    else:
        network = LinearBandit(spec, means, a_inv, scale=config.posterior_scale, bonus_weight=0.0)
    predicted = np.einsum("nd,nd->n", x, means[taken])
    widths = np.sqrt(np.einsum("nd,nde,ne->n", x, a_inv[taken], x))
    if run.on_step is not None:
        run.on_step(1)
    return network, [
        {
            "train/reward_mse": float(np.mean((predicted - r) ** 2)),
            "train/mean_width": float(network.scale * widths.mean()),
        }
    ]


def _fit_neural(
    logged: _LoggedRows,
    spec: NormalizationSpec,
    actions: list[str],
    config: NeuralBanditConfig,
    run: _FitRun,
) -> tuple[NeuralBandit, list[dict[str, float]]]:
    """Minibatch Adam on Σ w (Q(x, logged a) − r)² / Σ w over each global batch; seeded, one torch
    thread by default. `reward_mse` is the last epoch's row-weighted mean of that loss."""
    ctx = run.distributed
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            network = NeuralBandit(spec, len(actions), config.hidden_sizes)
        # The normalization is a fixed row-wise function of the spec: run it once, not every batch.
        with torch.no_grad():
            states = network.normalization(logged.states)
        q_all = ctx.wrap(ForwardOf(network, "q_normalized"))  # the only forward that needs gradients
        optimizer = torch.optim.Adam(
            [p for p in network.parameters() if p.requires_grad],
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
        )
        w = torch.as_tensor(logged.weights, dtype=torch.float32)

        def step(shard: MinibatchShard) -> dict[str, float]:
            rows = shard.rows
            q = q_all(states[rows]).gather(1, logged.actions[rows, None]).squeeze(1)
            # The global batch's weighted mean: its weight total is known to every process.
            squared = (w[rows] * (q - logged.rewards[rows]) ** 2).sum()
            loss = squared * (shard.world_size / w[shard.global_rows].sum())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return {"train/reward_mse": float(loss.detach())}

        loop = EpochLoop.from_config(
            config,
            spec,
            (logged.states, logged.actions, logged.rewards, torch.from_numpy(logged.weights)),
            n_rows=len(logged.rewards),
            shown=("train/reward_mse",),
            actions=actions,
        )
        history = run_epochs(
            loop,
            ModulesAndOptimizers({"network": network}, {"optimizer": optimizer}),
            step,
            ctx,
            checkpoint=run.checkpoint,
            log_dir=None,
            on_step=run.on_step,
        )
    finally:
        torch.set_num_threads(previous_threads)
    network.eval()
    return network, history


#: `type` → fit; each takes (rows, spec, actions, config, run) and returns (network, per-epoch metrics).
_FITS: dict[str, Callable[..., tuple[LinearBandit | NeuralBandit, list[dict[str, float]]]]] = {
    "linucb": _fit_linear,
    "linear_thompson": _fit_linear,
    "neural_bandit": _fit_neural,
}
