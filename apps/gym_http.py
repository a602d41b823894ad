"""Gymnasium environments and the recommendation simulator as apps of the served loop.

Each app asks serving for its actions over HTTP (`POST /v1/act/batch`), applies them, and logs
each reward to Kafka with the app-side `EventLogger`, joined to serving's logged decision by
request id. Serving logs the decisions itself. Nothing here reads streamrl internals (no
`trainer`): the apps see only the HTTP API and the event types. (The example apps of
`streamrl up`, `apps/notifications|video_bitrate|recommender`, go further: plain JSON on Kafka,
no streamrl import at all.)

| app | kind | request adds | what the app applies |
| --- | --- | --- | --- |
| `CARTPOLE` (CartPole-v1) | discrete | `possible_actions: ["left", "right"]` | the named action's index |
| `PENDULUM` (Pendulum-v1) | continuous | `action_kind: "continuous"` | the served vector (`action`) |
| `run_recsys` (`apps.recsys`) | parametric | `action_kind: "parametric"`, `candidates` | the chosen item |

A Gym episode is one MDP (`mdp_id`), its steps the sequence numbers; a recommendation request
is a one-step MDP. Several episodes run side by side so every HTTP call scores a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import gymnasium as gym
import httpx
import numpy as np

from apps.recsys import RecsysRequest, RecsysSim, user_id
from contracts import ActionKind, RewardEvent, StreamrlError
from stream import EventLogger

#: CartPole-v1's observation by name: the same names as `trainer.gym_discrete.CARTPOLE_FEATURES`
#: (which apps may not import), so offline and served CartPole models read the same features.
CARTPOLE_FEATURES = ("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity")
CARTPOLE_ACTIONS = ("left", "right")
#: Pendulum-v1's observation and its one action dimension (torque in [−2, 2]).
PENDULUM_FEATURES = ("cos_theta", "sin_theta", "angular_velocity")
PENDULUM_ACTIONS = ("torque",)
PENDULUM_BOUNDS = ((-2.0,), (2.0,))


class GymAppError(StreamrlError):
    """Serving refused or failed a request of a simulated app, or answered something it cannot apply."""


@dataclass(frozen=True)
class GymApp:
    """One Gymnasium environment as an app: how it names its observation and its actions."""

    name: str
    env_id: str
    kind: ActionKind
    feature_names: tuple[str, ...]
    actions: tuple[str, ...]  # discrete: action names in env order; continuous: the dimensions


CARTPOLE = GymApp("cartpole", "CartPole-v1", ActionKind.DISCRETE, CARTPOLE_FEATURES, CARTPOLE_ACTIONS)
PENDULUM = GymApp("pendulum", "Pendulum-v1", ActionKind.CONTINUOUS, PENDULUM_FEATURES, PENDULUM_ACTIONS)


def _discrete_request(app: GymApp) -> dict[str, Any]:
    return {"possible_actions": list(app.actions)}


def _continuous_request(app: GymApp) -> dict[str, Any]:
    return {"action_kind": ActionKind.CONTINUOUS.value}


def _discrete_action(app: GymApp, response: dict[str, Any]) -> int:
    return app.actions.index(response["action"])


def _continuous_action(app: GymApp, response: dict[str, Any]) -> np.ndarray:
    vector = np.asarray(response["action"], np.float32)
    if vector.shape != (len(app.actions),):
        raise GymAppError(
            f"{app.name}: serving answered an action vector of length {vector.size}, expected "
            f"{len(app.actions)} ({list(app.actions)})"
        )
    return vector


@dataclass(frozen=True)
class _KindCodec:
    """What a request of one kind adds to the context, and how a response becomes an env action."""

    request: Callable[[GymApp], dict[str, Any]]
    action: Callable[[GymApp, dict[str, Any]], Any]


_CODECS: dict[ActionKind, _KindCodec] = {
    ActionKind.DISCRETE: _KindCodec(_discrete_request, _discrete_action),
    ActionKind.CONTINUOUS: _KindCodec(_continuous_request, _continuous_action),
}


@dataclass
class EpisodesOutcome:
    """What a run of a Gym app produced, as the app saw it."""

    steps: int = 0
    episode_returns: list[float] = field(default_factory=list)  # completed episodes, by episode number
    request_ids: list[str] = field(default_factory=list)
    model_versions: dict[str, int] = field(default_factory=dict)  # decisions per serving model version

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.episode_returns)) if self.episode_returns else float("nan")


@dataclass
class _Slot:
    """One environment running side by side with the others: its episode and where it stands."""

    env: gym.Env
    episode: int
    obs: np.ndarray
    step: int = 0
    total: float = 0.0


def run_episodes(
    app: GymApp,
    client: httpx.Client,
    logger: EventLogger,
    *,
    seed: int,
    mdp_prefix: str,
    max_steps: int | None = None,
    episodes: int | None = None,
    parallel: int = 32,
    flush_timeout_s: float = 30.0,
) -> EpisodesOutcome:
    """Play `app` through serving until `max_steps` steps are logged or `episodes` episodes end.

    Episode `e` resets its env with seed `seed + e` and is the MDP `f"{mdp_prefix}-{e}"`. With
    `max_steps`, the episodes still running when the budget is spent stop there (their steps are
    logged, their returns not counted, and the timeline job closes each on a terminal row: pick
    `max_steps` a multiple of `parallel` × the episode length where episodes have a fixed length);
    with only `episodes`, every episode runs to its end.
    """
    if max_steps is None and episodes is None:
        raise GymAppError(f"{app.name}: give max_steps, episodes or both, so the run ends")
    codec = _CODECS[app.kind]
    outcome = EpisodesOutcome()
    returns: dict[int, float] = {}
    started = 0

    def start(env: gym.Env) -> _Slot | None:
        nonlocal started
        if episodes is not None and started >= episodes:
            return None
        obs, _ = env.reset(seed=seed + started)
        started += 1
        return _Slot(env=env, episode=started - 1, obs=np.asarray(obs))

    envs = [gym.make(app.env_id) for _ in range(min(parallel, episodes or parallel))]
    slots = [s for s in (start(env) for env in envs) if s is not None]
    try:
        while slots and (max_steps is None or outcome.steps < max_steps):
            if max_steps is not None:
                slots = slots[: max_steps - outcome.steps]
            requests = [
                {
                    "entity_id": f"{mdp_prefix}-{s.episode}",
                    "mdp_id": f"{mdp_prefix}-{s.episode}",
                    "sequence_number": s.step,
                    "context_features": dict(zip(app.feature_names, map(float, s.obs), strict=True)),
                    **codec.request(app),
                }
                for s in slots
            ]
            responses = _act(client, requests, f"{app.name} step batch at {outcome.steps} steps")
            now = datetime.now(UTC)
            still_running: list[_Slot] = []
            for slot, response in zip(slots, responses, strict=True):
                obs, reward, terminated, truncated, _ = slot.env.step(codec.action(app, response))
                logger.log_reward(
                    RewardEvent(request_id=response["request_id"], timestamp=now, reward=float(reward))
                )
                _count(outcome, response)
                outcome.steps += 1
                slot.obs, slot.step, slot.total = np.asarray(obs), slot.step + 1, slot.total + float(reward)
                if not (terminated or truncated):
                    still_running.append(slot)
                    continue
                returns[slot.episode] = slot.total
                following = start(slot.env)
                if following is not None:
                    still_running.append(following)
            slots = still_running
    finally:
        for env in envs:
            env.close()
    logger.flush(timeout_s=flush_timeout_s)
    outcome.episode_returns = [returns[e] for e in sorted(returns)]
    return outcome


@dataclass
class RecsysOutcome:
    """What a run of recommendation requests produced: the choices, their clicks and their truth."""

    requests: list[RecsysRequest]
    chosen: list[int]  # catalog index of the item served, per request
    clicks: list[float]
    request_ids: list[str]
    model_versions: dict[str, int]

    @property
    def click_rate(self) -> float:
        return float(np.mean(self.clicks)) if self.clicks else float("nan")


def run_recsys(
    sim: RecsysSim,
    client: httpx.Client,
    logger: EventLogger,
    *,
    start: int,
    count: int,
    mdp_prefix: str,
    batch_size: int = 256,
    flush_timeout_s: float = 30.0,
) -> RecsysOutcome:
    """Serve requests `start … start + count − 1` of `sim` through serving, one-step MDPs, clicks logged."""
    outcome = RecsysOutcome(requests=[], chosen=[], clicks=[], request_ids=[], model_versions={})
    counts = EpisodesOutcome()
    for first in range(start, start + count, batch_size):
        batch = sim.requests(first, min(batch_size, start + count - first))
        body = [
            {
                "action_kind": ActionKind.PARAMETRIC.value,
                "entity_id": user_id(r.user),
                "mdp_id": f"{mdp_prefix}-{r.index}",
                "sequence_number": 0,
                "context_features": sim.context(r.user),
                "candidates": [sim.candidate(int(c)) for c in r.candidates],
            }
            for r in batch
        ]
        responses = _act(client, body, f"recsys requests {first}..{first + len(batch) - 1}")
        now = datetime.now(UTC)
        for request, response in zip(batch, responses, strict=True):
            try:
                item = sim.item_index(request, response["action"])
            except StreamrlError as exc:
                raise GymAppError(f"serving chose a candidate that was not offered: {exc}") from exc
            click = sim.draw_reward(request, item)
            logger.log_reward(RewardEvent(request_id=response["request_id"], timestamp=now, reward=click))
            _count(counts, response)
            outcome.requests.append(request)
            outcome.chosen.append(item)
            outcome.clicks.append(click)
    logger.flush(timeout_s=flush_timeout_s)
    outcome.request_ids, outcome.model_versions = counts.request_ids, counts.model_versions
    return outcome


def _act(client: httpx.Client, requests: Sequence[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    response = client.post("/v1/act/batch", json={"requests": list(requests)})
    if response.status_code != 200:
        raise GymAppError(
            f"serving at {client.base_url} answered {response.status_code} for {what}: {response.text[:500]}"
        )
    return response.json()["responses"]


def _count(outcome: EpisodesOutcome, response: dict[str, Any]) -> None:
    outcome.request_ids.append(response["request_id"])
    version = response["model_version"]
    outcome.model_versions[version] = outcome.model_versions.get(version, 0) + 1
