"""A simulated recommender with parametric candidates and a known truth.

The world (all of it seeded by `RecsysSimConfig.seed`):
- `n_users` users, each with an observed context vector `x_u` (`USER_FEATURES`, i.i.d. N(0, 1));
- `n_items` items, each with an observed feature vector `z_c` (`item_0 … item_{k−1}`, i.i.d. N(0, 1))
  and an observed popularity `b_c` (`item_popularity`, N(0, popularity_scale²));
- a hidden interaction matrix `W` (`user_dim × item_dim`, i.i.d. N(0, interaction_scale²)) and a
  hidden intercept `bias`.

Request `i` (its own seeded draw, so any range of requests can be replayed): a user drawn
uniformly, a candidate count `K` uniform on [`min_candidates`, `max_candidates`] and `K` distinct
items drawn uniformly from the catalog. Showing item `c` to user `u` earns a Bernoulli reward
(a click) with probability

    p(u, c) = sigmoid(x_uᵀ W z_c + b_c + bias).

Every request is a one-step episode. Exact values over a list of requests, without sampling:
- the oracle picks each request's best candidate: mean over requests of `max_c p(u, c)`;
- uniform random picks any candidate with probability 1/K: mean over requests of `mean_c p(u, c)`;
- a policy that chose item `c_i` for request `i` is worth the mean of `p(u_i, c_i)`.
`gap_closed(policy) = (policy − uniform) / (oracle − uniform)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts import StreamrlError

POPULARITY_FEATURE = "item_popularity"


class RecsysError(StreamrlError):
    """A simulator built or asked with values that do not fit its world."""


class RecsysSimConfig(BaseModel):
    """Size of the world, how strongly users and items interact, and the seed of everything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(1, ge=1, le=1)
    n_users: int = Field(2000, ge=1)
    n_items: int = Field(300, ge=1)
    user_dim: int = Field(4, ge=1)
    item_dim: int = Field(4, ge=1)
    min_candidates: int = Field(5, ge=1)
    max_candidates: int = Field(10, ge=1)
    interaction_scale: float = Field(0.6, ge=0.0, description="std of each entry of the hidden W")
    popularity_scale: float = Field(0.5, ge=0.0, description="std of the item popularity term")
    bias: float = -1.0
    seed: int = 11

    @model_validator(mode="after")
    def _candidate_range(self) -> RecsysSimConfig:
        if self.min_candidates > self.max_candidates:
            raise ValueError(
                f"min_candidates ({self.min_candidates}) must be <= max_candidates ({self.max_candidates})"
            )
        if self.max_candidates > self.n_items:
            raise ValueError(
                f"max_candidates ({self.max_candidates}) must be <= n_items ({self.n_items}): "
                "candidates are distinct items"
            )
        return self


@dataclass(frozen=True)
class RecsysWorld:
    """The truth: observed user and item features, the hidden interaction matrix and intercept."""

    user_features: np.ndarray  # [n_users, user_dim]
    item_features: np.ndarray  # [n_items, item_dim]
    popularity: np.ndarray  # [n_items]
    weights: np.ndarray  # [user_dim, item_dim], hidden
    bias: float  # hidden

    def __post_init__(self) -> None:
        users, items = np.shape(self.user_features), np.shape(self.item_features)
        if len(users) != 2 or len(items) != 2:
            raise RecsysError(f"user_features and item_features must be 2-D, got shapes {users} and {items}")
        expected = {"popularity": (items[0],), "weights": (users[1], items[1])}
        for name, shape in expected.items():
            if np.shape(getattr(self, name)) != shape:
                raise RecsysError(
                    f"RecsysWorld.{name} must have shape {shape}, got {np.shape(getattr(self, name))}"
                )

    def expected_reward(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """p(u, c) = sigmoid(x_uᵀ W z_c + b_c + bias), elementwise over aligned index arrays."""
        users, items = np.asarray(users), np.asarray(items)
        x = self.user_features[users]
        z = self.item_features[items]
        logits = np.einsum("...d,dk,...k->...", x, self.weights, z) + self.popularity[items] + self.bias
        return 1.0 / (1.0 + np.exp(-logits))


@dataclass(frozen=True)
class RecsysRequest:
    """One recommendation request: who asks and which items are on offer (catalog indices)."""

    index: int
    user: int
    candidates: np.ndarray  # [K] distinct item indices


def user_feature_names(config: RecsysSimConfig) -> list[str]:
    return [f"user_{i}" for i in range(config.user_dim)]


def item_feature_names(config: RecsysSimConfig) -> list[str]:
    return [*(f"item_{i}" for i in range(config.item_dim)), POPULARITY_FEATURE]


def item_id(item: int) -> str:
    return f"item-{item}"


def user_id(user: int) -> str:
    return f"user-{user:06d}"


class RecsysSim:
    """Requests, rewards and the exact values of the oracle, uniform random and any choices."""

    def __init__(self, config: RecsysSimConfig, world: RecsysWorld | None = None) -> None:
        self.config = config
        self.world = world if world is not None else _draw_world(config)
        if self.world.user_features.shape != (config.n_users, config.user_dim) or (
            self.world.item_features.shape != (config.n_items, config.item_dim)
        ):
            raise RecsysError(
                f"world shapes users {self.world.user_features.shape}, items "
                f"{self.world.item_features.shape} do not fit the config's "
                f"({config.n_users}, {config.user_dim}) and ({config.n_items}, {config.item_dim})"
            )
        self.user_features = user_feature_names(config)
        self.item_features = item_feature_names(config)

    # --- requests and what the app sends -------------------------------------------------------
    def request(self, index: int) -> RecsysRequest:
        """Request `index`: its own seeded draw of a user, a candidate count and distinct items."""
        if index < 0:
            raise RecsysError(f"request index must be >= 0, got {index}")
        rng = np.random.default_rng((self.config.seed, 2, index))
        user = int(rng.integers(self.config.n_users))
        count = int(rng.integers(self.config.min_candidates, self.config.max_candidates + 1))
        candidates = rng.choice(self.config.n_items, size=count, replace=False)
        return RecsysRequest(index=index, user=user, candidates=candidates)

    def requests(self, start: int, count: int) -> list[RecsysRequest]:
        return [self.request(i) for i in range(start, start + count)]

    def context(self, user: int) -> dict[str, float]:
        """The user's observed context, by feature name (what the app sends as `context_features`)."""
        return dict(zip(self.user_features, map(float, self.world.user_features[user]), strict=True))

    def candidate(self, item: int) -> dict[str, object]:
        """One candidate as the HTTP API takes it: `{"id": "item-7", "features": {...}}`."""
        values = [*map(float, self.world.item_features[item]), float(self.world.popularity[item])]
        return {"id": item_id(item), "features": dict(zip(self.item_features, values, strict=True))}

    def item_index(self, request: RecsysRequest, chosen_id: str) -> int:
        """The catalog index of the candidate id serving chose; refuses an id that was not offered."""
        for item in request.candidates:
            if item_id(int(item)) == chosen_id:
                return int(item)
        offered = [item_id(int(c)) for c in request.candidates]
        raise RecsysError(
            f"request {request.index}: chosen id {chosen_id!r} was not offered; offered {offered}"
        )

    # --- truth -----------------------------------------------------------------------------------
    def expected_rewards(self, request: RecsysRequest) -> np.ndarray:
        """p(u, c) for every candidate of `request`, in offer order."""
        return self.world.expected_reward(np.full(request.candidates.size, request.user), request.candidates)

    def draw_reward(self, request: RecsysRequest, item: int) -> float:
        """The click (1.0) or not (0.0) for showing `item`; seeded by the request, so replayable."""
        if item not in request.candidates:
            raise RecsysError(f"request {request.index}: item {item} was not among its candidates")
        p = float(self.world.expected_reward(np.asarray(request.user), np.asarray(item)))
        u = np.random.default_rng((self.config.seed, 3, request.index)).random()
        return float(u < p)

    def oracle_value(self, requests: Sequence[RecsysRequest]) -> float:
        """Mean over requests of the best candidate's expected reward."""
        return float(np.mean([self.expected_rewards(r).max() for r in requests]))

    def uniform_value(self, requests: Sequence[RecsysRequest]) -> float:
        """Mean over requests of the mean candidate's expected reward (uniform random choice)."""
        return float(np.mean([self.expected_rewards(r).mean() for r in requests]))

    def policy_value(self, requests: Sequence[RecsysRequest], chosen: Sequence[int]) -> float:
        """Mean expected reward of the items chosen (catalog indices aligned with `requests`)."""
        if len(chosen) != len(requests):
            raise RecsysError(f"{len(chosen)} choices for {len(requests)} requests; expected one per request")
        users = np.array([r.user for r in requests])
        return float(np.mean(self.world.expected_reward(users, np.asarray(chosen))))

    def gap_closed(self, requests: Sequence[RecsysRequest], chosen: Sequence[int]) -> float:
        """(policy − uniform) / (oracle − uniform) on these requests; 1 = oracle, 0 = uniform random."""
        uniform, oracle = self.uniform_value(requests), self.oracle_value(requests)
        if oracle - uniform <= 0.0:
            raise RecsysError("the oracle is no better than uniform on these requests; the gap is undefined")
        return (self.policy_value(requests, chosen) - uniform) / (oracle - uniform)


def _draw_world(config: RecsysSimConfig) -> RecsysWorld:
    rng = np.random.default_rng((config.seed, 1))
    return RecsysWorld(
        user_features=rng.normal(0.0, 1.0, (config.n_users, config.user_dim)),
        item_features=rng.normal(0.0, 1.0, (config.n_items, config.item_dim)),
        popularity=rng.normal(0.0, config.popularity_scale, config.n_items),
        weights=rng.normal(0.0, config.interaction_scale, (config.user_dim, config.item_dim)),
        bias=config.bias,
    )
