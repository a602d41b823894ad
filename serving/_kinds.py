"""What serving does per action kind: one table, `KINDS`, keyed by `contracts.ActionKind`.

Each kind gives its request and response records (`serving.schemas`) and three functions that
turn requests into `Choice`s, the kind's own fields of the logged `DecisionEvent` and of the
response; the app adds the fields every kind shares (ids, context, model version):

- `decide`: the loaded model's policy chooses (`trainer.onnx_policy`: sampling from the served
  distribution, Thompson draws with their exact propensity, or a continuous policy's sample
  with its log density);
- `uniform`: the day-0 fallback (`UniformFallbackConfig`) chooses uniformly at random;
- `logged`: the app chose itself (`/v1/decisions`, `/v1/decisions/batch`); its choice is checked
  against the action space.

Adding a kind is one request/response pair in `serving.schemas`, three functions here and one
line in `KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts import ActionKind
from serving.config import ContinuousActionConfig
from serving.errors import ActionSpaceUnknownError, InvalidDecisionError, ModelOutputError, UnknownActionError
from serving.model_holder import LoadedModel
from serving.schemas import (
    ContinuousActRequest,
    ContinuousActResponse,
    ContinuousLoggedDecision,
    DiscreteActRequest,
    DiscreteActResponse,
    DiscreteLoggedDecision,
    ParametricActRequest,
    ParametricActResponse,
    ParametricLoggedDecision,
)
from trainer.onnx_policy import PolicyOutputError

FeatureMap = dict[str, float | None]


@dataclass(frozen=True, slots=True)
class Choice:
    """One request's decision in its kind's fields: for the `DecisionEvent` and for the response."""

    event: dict[str, Any]
    response: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ContinuousSpace:
    """The continuous action dimensions (vector order) and their bounds, from a model or the config."""

    names: list[str]
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def of_model(cls, model: LoadedModel) -> ContinuousSpace:
        policy = model.policy
        return cls(
            list(model.metadata.actions),
            np.asarray(policy.action_low, dtype=np.float64),  # type: ignore[union-attr]
            np.asarray(policy.action_high, dtype=np.float64),  # type: ignore[union-attr]
        )

    @classmethod
    def of_config(cls, dimensions: list[ContinuousActionConfig]) -> ContinuousSpace:
        return cls(
            [d.name for d in dimensions],
            np.array([d.low for d in dimensions], dtype=np.float64),
            np.array([d.high for d in dimensions], dtype=np.float64),
        )


# decide(model, requests, feature maps, rng, field prefixes) / uniform(requests, rng, space) /
# logged(decision, space, field prefix). A prefix is "" for one request, "requests.3." or
# "decisions.3." in a batch.
Decide = Callable[
    [LoadedModel, Sequence[Any], list[FeatureMap], np.random.Generator, list[str]], list[Choice]
]
Uniform = Callable[[Sequence[Any], np.random.Generator, ContinuousSpace | None], list[Choice]]
Logged = Callable[[Any, ContinuousSpace | None, str], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class KindServing:
    """Serving's implementation of one action kind."""

    request: type
    response: type
    logged_request: type
    expected: str  # what a request of this kind carries, for `WrongKindError`
    decide: Decide
    uniform: Uniform
    logged: Logged


@contextmanager
def _model_rows(model: LoadedModel, requests: Sequence[Any], what: str) -> Iterator[None]:
    """Turn the policy's `PolicyOutputError` (rows without a distribution) into `ModelOutputError`."""
    try:
        yield
    except PolicyOutputError as exc:
        raise ModelOutputError(model.version, [requests[i].request_id for i in exc.rows], what) from exc


def _pick(n: int, rng: np.random.Generator) -> int:
    return int(rng.integers(n))


# --- discrete: named actions ---------------------------------------------------------------------


def _decide_discrete(
    model: LoadedModel,
    requests: Sequence[DiscreteActRequest],
    maps: list[FeatureMap],
    rng: np.random.Generator,
    prefixes: list[str],
) -> list[Choice]:
    for request, prefix in zip(requests, prefixes, strict=True):
        unknown = [a for a in request.possible_actions if a not in model.action_index]
        if unknown:
            where = prefix.rstrip(".") or "request"
            raise UnknownActionError(unknown, list(model.metadata.actions), model.version, where)
    policy = model.policy
    features = policy.features(maps)
    mask = policy.possible_mask([r.possible_actions for r in requests])  # type: ignore[union-attr]
    with _model_rows(model, requests, "action probabilities"):
        chosen, propensity = policy.decide(features, mask, rng)  # type: ignore[union-attr,call-arg]
    choices = []
    for request, index, p in zip(requests, chosen, propensity, strict=True):
        action, probability = model.metadata.actions[int(index)], float(p)
        choices.append(
            Choice(
                event={
                    "possible_actions": request.possible_actions,
                    "action": action,
                    "action_probability": probability,
                },
                response={"action": action, "action_probability": probability},
            )
        )
    return choices


def _uniform_discrete(
    requests: Sequence[DiscreteActRequest], rng: np.random.Generator, space: ContinuousSpace | None
) -> list[Choice]:
    choices = []
    for request in requests:
        n = len(request.possible_actions)
        action = request.possible_actions[_pick(n, rng)]
        choices.append(
            Choice(
                event={
                    "possible_actions": request.possible_actions,
                    "action": action,
                    "action_probability": 1 / n,
                },
                response={"action": action, "action_probability": 1 / n},
            )
        )
    return choices


def _logged_discrete(
    decision: DiscreteLoggedDecision, space: ContinuousSpace | None, prefix: str
) -> dict[str, Any]:
    # The schema already checked that the action is possible and its propensity is in (0, 1].
    return {
        "possible_actions": decision.possible_actions,
        "action": decision.action,
        "action_probability": decision.action_probability,
    }


# --- parametric: per-request candidates described by features ------------------------------------


def _candidate_event(request: ParametricActRequest, action: str, probability: float) -> dict[str, Any]:
    return {
        "possible_actions": [c.id for c in request.candidates],
        "candidate_features": [c.features for c in request.candidates],
        "action": action,
        "action_probability": probability,
    }


def _decide_parametric(
    model: LoadedModel,
    requests: Sequence[ParametricActRequest],
    maps: list[FeatureMap],
    rng: np.random.Generator,
    prefixes: list[str],
) -> list[Choice]:
    known = list(model.metadata.action_feature_names or [])
    for request, prefix in zip(requests, prefixes, strict=True):
        for j, candidate in enumerate(request.candidates):
            if not any(name in candidate.features for name in known):
                raise InvalidDecisionError(
                    f"{prefix}candidates.{j}.features",
                    f"candidate {candidate.id!r} has none of model {model.version}'s action features "
                    f"{known} (it sent {sorted(candidate.features)[:8]}); send at least one of them",
                )
    policy = model.policy
    features = policy.features(maps)
    action_features, candidate_mask = policy.candidates(  # type: ignore[union-attr]
        [[c.features for c in r.candidates] for r in requests]
    )
    with _model_rows(model, requests, "candidate probabilities"):
        chosen, propensity = policy.decide(features, action_features, candidate_mask, rng)  # type: ignore[union-attr,call-arg]
    choices = []
    for request, index, p in zip(requests, chosen, propensity, strict=True):
        action, probability = request.candidates[int(index)].id, float(p)
        choices.append(
            Choice(
                event=_candidate_event(request, action, probability),
                response={"action": action, "action_probability": probability},
            )
        )
    return choices


def _uniform_parametric(
    requests: Sequence[ParametricActRequest], rng: np.random.Generator, space: ContinuousSpace | None
) -> list[Choice]:
    choices = []
    for request in requests:
        n = len(request.candidates)
        action = request.candidates[_pick(n, rng)].id
        choices.append(
            Choice(
                event=_candidate_event(request, action, 1 / n),
                response={"action": action, "action_probability": 1 / n},
            )
        )
    return choices


def _logged_parametric(
    decision: ParametricLoggedDecision, space: ContinuousSpace | None, prefix: str
) -> dict[str, Any]:
    # The schema already checked that the action is a candidate id and its propensity is in (0, 1].
    return _candidate_event(decision, decision.action, decision.action_probability)


# --- continuous: a bounded real vector -----------------------------------------------------------


def _vector_event(space: ContinuousSpace, action: list[float], log_density: float) -> dict[str, Any]:
    return {"possible_actions": space.names, "action_vector": action, "action_log_density": log_density}


def _decide_continuous(
    model: LoadedModel,
    requests: Sequence[ContinuousActRequest],
    maps: list[FeatureMap],
    rng: np.random.Generator,
    prefixes: list[str],
) -> list[Choice]:
    policy = model.policy
    features = policy.features(maps)
    with _model_rows(model, requests, "action distributions"):
        actions, log_density, mean = policy.act(features, rng)  # type: ignore[union-attr]
    space = ContinuousSpace.of_model(model)
    choices = []
    for action, density, greedy in zip(actions, log_density, mean, strict=True):
        vector = [float(x) for x in action]
        choices.append(
            Choice(
                event=_vector_event(space, vector, float(density)),
                response={
                    "action": vector,
                    "action_log_density": float(density),
                    "action_mean": [float(x) for x in greedy],
                },
            )
        )
    return choices


def _uniform_continuous(
    requests: Sequence[ContinuousActRequest], rng: np.random.Generator, space: ContinuousSpace | None
) -> list[Choice]:
    if space is None:
        raise ActionSpaceUnknownError("the uniform fallback for continuous requests")
    width = space.high - space.low
    log_density = -float(np.log(width).sum())
    middle = [float(x) for x in (space.low + space.high) / 2]
    choices = []
    for _ in requests:
        vector = [float(x) for x in space.low + rng.random(len(width)) * width]
        choices.append(
            Choice(
                event=_vector_event(space, vector, log_density),
                response={"action": vector, "action_log_density": log_density, "action_mean": middle},
            )
        )
    return choices


def _logged_continuous(
    decision: ContinuousLoggedDecision, space: ContinuousSpace | None, prefix: str
) -> dict[str, Any]:
    if space is None:
        raise ActionSpaceUnknownError("checking a logged continuous action")
    vector = decision.action
    if len(vector) != len(space.names):
        raise InvalidDecisionError(
            f"{prefix}action",
            f"has {len(vector)} values; expected {len(space.names)}, one per action dimension {space.names}",
        )
    outside = [
        f"action.{j} ({name}) = {x} is outside [{lo}, {hi}]"
        for j, (name, x, lo, hi) in enumerate(zip(space.names, vector, space.low, space.high, strict=True))
        if not (lo <= x <= hi)
    ]
    if outside:
        raise InvalidDecisionError(f"{prefix}action", "; ".join(outside) + "; send actions within the bounds")
    return _vector_event(space, list(vector), decision.action_log_density)


KINDS: dict[ActionKind, KindServing] = {
    ActionKind.DISCRETE: KindServing(
        DiscreteActRequest,
        DiscreteActResponse,
        DiscreteLoggedDecision,
        "possible_actions=[name, ...]",
        _decide_discrete,
        _uniform_discrete,
        _logged_discrete,
    ),
    ActionKind.PARAMETRIC: KindServing(
        ParametricActRequest,
        ParametricActResponse,
        ParametricLoggedDecision,
        'candidates=[{"id": ..., "features": {...}}, ...]',
        _decide_parametric,
        _uniform_parametric,
        _logged_parametric,
    ),
    ActionKind.CONTINUOUS: KindServing(
        ContinuousActRequest,
        ContinuousActResponse,
        ContinuousLoggedDecision,
        "the context only (the response carries the action vector)",
        _decide_continuous,
        _uniform_continuous,
        _logged_continuous,
    ),
}
