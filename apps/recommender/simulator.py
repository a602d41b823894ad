"""A recommender showing one of a few candidate items per request, run against streamrl over HTTP and Kafka.

Each request carries a user's context and K candidate items, each described by its features;
serving picks one (a parametric action: the model scores Q(user, item features)), the user
clicks it or not, and the click is the reward.

The world (pure functions below; `run` is the only part that talks to streamrl)
------------------------------------------------------------------------------
A fixed catalog of `CATALOG_SIZE` = 500 items, drawn once from `WORLD_SEED` (the same in every
run, so what a model learned in one run holds in the next). Item c has

    item_topic_0..2     z_c   how much it is about each of three topics, i.i.d. N(0, 1)
    item_quality        q_c   how good it is for anyone, N(0, 0.5²)

A run (`--seed`) draws its own users, one per four decisions, each with a fresh uuid4 id and

    user_topic_0..2     x_u   the user's interest in each topic, i.i.d. N(0, 1)
    user_activity       a_u   how clicky the user is, N(0, 0.5²) (lifts every item alike)

Request i: a user drawn uniformly from the run's users, K uniform on [4, 8], and K distinct
catalog items drawn uniformly. Showing item c to user u earns a click with probability

    p(u, c) = σ(BIAS + a_u + q_c + Σ_k w_k · x_uk · z_ck)      BIAS = −1.5, w = (1.0, 0.75, 0.5)

(`bias` and `w` are hidden from the model: it sees only the features). The best item depends on
the user: quality alone closes about a third of the gap from uniform to the oracle, matching
the user's interests the rest. Exact values over a list of requests, without sampling:
- uniform random is worth the mean over requests of mean_c p(u, c);
- the oracle, the mean over requests of max_c p(u, c);
- the items served, the mean of p(u, c_served) (`expected_reward` in the summary).

The I/O: each batch of requests goes to `POST /v1/apps/{app}/act/batch` (serving logs the
decisions to `<app>.decisions` itself), the click is drawn, and one reward event per decision
(`metrics: {"click": 0 or 1}`, `reward` the manifest's weighted sum) goes to `<app>.rewards`.
Every request is its own episode (`mdp_id` = its request id).

    python apps/recommender/simulator.py --url http://127.0.0.1:18082 \\
        --bootstrap 127.0.0.1:19092 --decisions 3000 --seed 1 [--batch 200]

Nothing here imports a streamrl stage: an app talks to it over HTTP and Kafka only (`apps.app_client`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from apps.app_client import AppClientError, RewardProducer, post_batches

MANIFEST_PATH = Path(__file__).resolve().parent / "manifest.yaml"

# --- the world ---------------------------------------------------------------------------------
WORLD_SEED = 2026
CATALOG_SIZE = 500
TOPICS = 3
TOPIC_WEIGHTS = (1.0, 0.75, 0.5)  # hidden
BIAS = -1.5  # hidden
QUALITY_STD = 0.5
ACTIVITY_STD = 0.5
CANDIDATES_RANGE = (4, 8)  # K, inclusive
DECISIONS_PER_USER = 4
USER_FEATURES = (*(f"user_topic_{k}" for k in range(TOPICS)), "user_activity")
ITEM_FEATURES = (*(f"item_topic_{k}" for k in range(TOPICS)), "item_quality")
#: The reward the manifest declares (`reward.metrics`); the tests hold the manifest to it.
REWARD_WEIGHTS: dict[str, float] = {"click": 1.0}


class SimulatorError(AppClientError):
    """The simulator was asked something its world cannot answer, or serving/Kafka failed it."""


@dataclass(frozen=True, eq=False)
class RecommenderWorld:
    """The truth: the catalog's features and the hidden weights of the click model."""

    item_topics: np.ndarray  # [items, TOPICS]
    item_quality: np.ndarray  # [items]
    topic_weights: np.ndarray  # [TOPICS], hidden
    bias: float  # hidden

    def __post_init__(self) -> None:
        items = np.shape(self.item_topics)
        if len(items) != 2 or np.shape(self.item_quality) != (items[0],):
            raise SimulatorError(
                f"item_topics must be [items, topics] and item_quality [items]; got shapes {items} and "
                f"{np.shape(self.item_quality)}"
            )
        if np.shape(self.topic_weights) != (items[1],):
            raise SimulatorError(
                f"topic_weights must have shape ({items[1]},), got {np.shape(self.topic_weights)}"
            )

    @property
    def size(self) -> int:
        return int(self.item_topics.shape[0])

    def candidate(self, item: int) -> dict[str, Any]:
        """One candidate as the HTTP API takes it: `{"id": "item-0007", "features": {...}}`."""
        values = [*map(float, self.item_topics[item]), float(self.item_quality[item])]
        return {"id": item_id(item), "features": dict(zip(ITEM_FEATURES, values, strict=True))}


@dataclass(frozen=True, eq=False)
class User:
    """One user of a run: an id unique to the run and the observed context."""

    id: str
    topics: np.ndarray  # [TOPICS]
    activity: float

    def features(self) -> dict[str, float]:
        """The request's `context_features`."""
        return dict(zip(USER_FEATURES, [*map(float, self.topics), float(self.activity)], strict=True))


@dataclass(frozen=True)
class Request:
    """One recommendation request: who asks and which catalog items are on offer, in offer order."""

    user: User
    items: tuple[int, ...]


def default_world() -> RecommenderWorld:
    """The app's world: the catalog drawn from `WORLD_SEED` and the hidden click model."""
    rng = np.random.default_rng(WORLD_SEED)
    return RecommenderWorld(
        item_topics=rng.normal(0.0, 1.0, (CATALOG_SIZE, TOPICS)).round(4),
        item_quality=rng.normal(0.0, QUALITY_STD, CATALOG_SIZE).round(4),
        topic_weights=np.array(TOPIC_WEIGHTS),
        bias=BIAS,
    )


def item_id(item: int) -> str:
    return f"item-{item:04d}"


def draw_users(rng: np.random.Generator, count: int) -> list[User]:
    """`count` users with fresh uuid4 ids (unique to the run) and contexts drawn from `rng`."""
    topics = rng.normal(0.0, 1.0, (count, TOPICS)).round(4)
    activity = rng.normal(0.0, ACTIVITY_STD, count).round(4)
    return [User(f"user-{uuid.uuid4()}", topics[i], float(activity[i])) for i in range(count)]


def draw_requests(rng: np.random.Generator, world: RecommenderWorld, count: int) -> list[Request]:
    """`count` requests over `ceil(count / DECISIONS_PER_USER)` users of this run."""
    users = draw_users(rng, max(1, math.ceil(count / DECISIONS_PER_USER)))
    low, high = CANDIDATES_RANGE
    if high > world.size:
        raise SimulatorError(
            f"up to {high} distinct candidates need a catalog of >= {high} items, got {world.size}"
        )
    requests = []
    for _ in range(count):
        user = users[int(rng.integers(len(users)))]
        k = int(rng.integers(low, high + 1))
        requests.append(Request(user, tuple(int(c) for c in rng.choice(world.size, size=k, replace=False))))
    return requests


def click_probabilities(world: RecommenderWorld, request: Request) -> np.ndarray:
    """p(u, c) = σ(bias + a_u + q_c + Σ_k w_k x_uk z_ck) for every candidate, in offer order."""
    items = np.asarray(request.items)
    affinity = world.item_topics[items] @ (world.topic_weights * request.user.topics)
    logits = world.bias + request.user.activity + world.item_quality[items] + affinity
    return 1.0 / (1.0 + np.exp(-logits))


def draw_click(rng: np.random.Generator, world: RecommenderWorld, request: Request, item: int) -> float:
    """1.0 if the user clicks `item` (one of the request's candidates), else 0.0."""
    if item not in request.items:
        raise SimulatorError(f"item {item} is not among the request's candidates {list(request.items)}")
    p = click_probabilities(world, request)[request.items.index(item)]
    return float(rng.random() < p)


def uniform_value(world: RecommenderWorld, requests: Sequence[Request]) -> float:
    """Exact click rate of uniform random choice among each request's candidates."""
    return float(np.mean([click_probabilities(world, r).mean() for r in requests]))


def oracle_value(world: RecommenderWorld, requests: Sequence[Request]) -> float:
    """Exact click rate of choosing each request's most clickable candidate."""
    return float(np.mean([click_probabilities(world, r).max() for r in requests]))


def policy_value(world: RecommenderWorld, requests: Sequence[Request], items: Sequence[int]) -> float:
    """Exact click rate of showing `items[i]` (a catalog index among its candidates) for `requests[i]`."""
    if len(items) != len(requests):
        raise SimulatorError(f"{len(items)} items for {len(requests)} requests; expected one per request")
    values = []
    for request, item in zip(requests, items, strict=True):
        if item not in request.items:
            raise SimulatorError(f"item {item} is not among the request's candidates {list(request.items)}")
        values.append(click_probabilities(world, request)[request.items.index(item)])
    return float(np.mean(values))


def chosen_item(request: Request, chosen_id: str) -> int:
    """The catalog index of the candidate id serving chose; refuses an id that was not offered."""
    for item in request.items:
        if item_id(item) == chosen_id:
            return item
    raise SimulatorError(
        f"serving chose {chosen_id!r}, which was not offered; offered {[item_id(c) for c in request.items]}"
    )


# --- the app's side of streamrl: HTTP and Kafka --------------------------------------------------
@dataclass(frozen=True)
class AppSettings:
    """What the simulator takes from its manifest: the app's name and its reward."""

    app: str
    weights: dict[str, float]

    @property
    def rewards_topic(self) -> str:
        return f"{self.app}.rewards"


def read_settings(path: Path) -> AppSettings:
    """The app name and reward weights of the manifest at `path`, checked against the world."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        settings = AppSettings(
            app=str(data["app"]), weights={str(k): float(v) for k, v in data["reward"]["metrics"].items()}
        )
        candidate_features = [str(f) for f in data["actions"]["candidate_features"]]
        context_features = [str(f["name"]) for f in data["features"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise SimulatorError(
            f"cannot read app, features, actions.candidate_features and reward.metrics from manifest {path}: {exc!r}"
        ) from exc
    if sorted(candidate_features) != sorted(ITEM_FEATURES) or sorted(context_features) != sorted(
        USER_FEATURES
    ):
        raise SimulatorError(
            f"{path}: features {context_features} and candidate_features {candidate_features} must be the "
            f"simulator's {list(USER_FEATURES)} and {list(ITEM_FEATURES)}"
        )
    if unknown := sorted(set(settings.weights) - set(REWARD_WEIGHTS)):
        raise SimulatorError(f"{path}: reward.metrics {unknown} are not metrics this world produces")
    return settings


def act_request(world: RecommenderWorld, request: Request) -> dict[str, Any]:
    """One `/act` body: the user's context and the candidates; the request is its own episode."""
    request_id = str(uuid.uuid4())
    return {
        "action_kind": "parametric",
        "entity_id": request.user.id,
        "request_id": request_id,
        "mdp_id": request_id,
        "sequence_number": 0,
        "context_features": request.user.features(),
        "candidates": [world.candidate(c) for c in request.items],
    }


def reward_event(request_id: str, click: float, weights: Mapping[str, float]) -> dict[str, Any]:
    """One reward event: the click and its weighted sum, timestamped now (UTC)."""
    metrics = {"click": click}
    return {
        "schema_version": 1,
        "request_id": request_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "reward": float(sum(w * metrics.get(name, 0.0) for name, w in weights.items())),
        "metrics": metrics,
    }


def run(
    url: str,
    bootstrap: str,
    decisions: int,
    seed: int,
    batch: int = 200,
    manifest: Path = MANIFEST_PATH,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Serve `decisions` requests through `url`, send their clicks to Kafka, return the summary."""
    if decisions < 1 or batch < 1:
        raise SimulatorError(f"decisions and batch must be >= 1, got {decisions} and {batch}")
    settings = read_settings(manifest)
    world = default_world()
    rng = np.random.default_rng(seed)
    requests = draw_requests(rng, world, decisions)
    route = f"/v1/apps/{settings.app}/act/batch"
    chosen: list[int] = []
    rewards: list[float] = []
    versions: dict[str, int] = {}
    with (
        RewardProducer(bootstrap, settings.rewards_topic, timeout_s) as producer,
        httpx.Client(base_url=url, timeout=timeout_s) as client,
    ):
        for first in range(0, decisions, batch):
            part = requests[first : first + batch]
            bodies = [act_request(world, r) for r in part]
            responses = post_batches(client, route, "requests", bodies, len(bodies))
            for request, body, response in zip(part, bodies, responses, strict=True):
                if response["request_id"] != body["request_id"]:
                    raise SimulatorError(
                        f"serving answered request {response['request_id']!r} for {body['request_id']!r}"
                    )
                item = chosen_item(request, response["action"])
                event = reward_event(
                    body["request_id"], draw_click(rng, world, request, item), settings.weights
                )
                producer.send(event)
                chosen.append(item)
                rewards.append(event["reward"])
                versions[response["model_version"]] = versions.get(response["model_version"], 0) + 1
    return {
        "app": settings.app,
        "decisions": decisions,
        "realized_reward": float(np.mean(rewards)),
        "expected_reward": policy_value(world, requests, chosen),
        "uniform_reward": uniform_value(world, requests),
        "oracle_reward": oracle_value(world, requests),
        "model_versions": versions,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the app's serving address, e.g. http://127.0.0.1:18082")
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, e.g. 127.0.0.1:19092")
    parser.add_argument("--decisions", type=int, required=True, help="how many requests to run")
    parser.add_argument("--seed", type=int, required=True, help="seeds the users, requests and clicks")
    parser.add_argument("--batch", type=int, default=200, help="requests per act/batch call")
    parser.add_argument("--manifest", type=Path, default=MANIFEST_PATH, help="the app's manifest")
    args = parser.parse_args(argv)
    try:
        summary = run(args.url, args.bootstrap, args.decisions, args.seed, args.batch, args.manifest)
    except AppClientError as exc:
        print(f"recommender simulator: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
