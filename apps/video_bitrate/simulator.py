"""A video player choosing the bitrate of each chunk, run against streamrl over HTTP and Kafka.

Modeled on Horizon's 360-video bitrate case: before downloading each chunk the player picks a
level of its bitrate ladder; a higher bitrate looks better but takes longer to download, and if
the download outlasts the buffered video the picture stalls. The reward is quality minus a
rebuffering penalty (plus a small penalty for visible quality switches).

The world (pure functions below; `run` is the only part that talks to streamrl)
------------------------------------------------------------------------------
A decision is one chunk of `CHUNK_S` = 2 s of video for one viewer. The player observes

    bandwidth_mbps      B   its throughput estimate, log-uniform on [0.75, 24] Mbps (mobile to fibre)
    buffer_s            S   seconds of video buffered ahead of the playhead, uniform on [0, 12]
    last_bitrate_mbps   L   the bitrate of the viewer's previous chunk, uniform over the ladder

and picks a level `a` of `LADDER` with bitrate b_a (360p 0.75, 480p 1.5, 720p 3, 1080p 6,
2160p 12 Mbps). The throughput the download really gets is B·f, the factor f hidden and drawn
from `THROUGHPUT_FACTORS` = (0.5, 0.8, 1.0, 1.2), each with probability 1/4 (estimates are noisy
and slightly optimistic). Then

    download_s     = CHUNK_S · b_a / (B · f)
    rebuffer_s     = max(0, download_s − S)          the stall once the buffer runs dry
    quality        = ln(b_a / 0.1)                   concave in the bitrate
    quality_change = |ln(b_a / L)|                   how visible the switch from the last chunk is

and the reward is the manifest's weighted sum Σ_m w_m · metric_m (quality 1.0, rebuffer_s −1.0,
quality_change −0.5). Since f takes four values, E[reward | context, a] is an exact mean of four
terms: `expected_rewards`. The best level depends on the context: a fast link with a full buffer
affords 2160p, a slow one with an empty buffer only 360p, and L pulls towards staying put.

Contexts are drawn independently per decision (many viewers at once, each decision from a fresh
viewer id), so they do not depend on the policy serving, and over a list of contexts
- uniform random is worth the mean over contexts of the mean over levels of E[reward | x, a];
- the oracle, the mean over contexts of the max over levels;
- the levels served, the mean of E[reward | x, a_served] (`expected_reward` in the summary).

The I/O: each batch of contexts goes to `POST /v1/apps/{app}/act/batch` (serving logs the
decisions to `<app>.decisions` itself), the chosen level's outcome is drawn, and one reward event
per decision goes to `<app>.rewards`. Every decision is its own episode (`mdp_id` = its request
id): the manifest explains why.

    python apps/video_bitrate/simulator.py --url http://127.0.0.1:18081 \\
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
#: The bitrate ladder: level name → bitrate in Mbps, lowest first (the manifest's action names).
LADDER: dict[str, float] = {"360p": 0.75, "480p": 1.5, "720p": 3.0, "1080p": 6.0, "2160p": 12.0}
CHUNK_S = 2.0
QUALITY_REFERENCE_MBPS = 0.1
THROUGHPUT_FACTORS = (0.5, 0.8, 1.0, 1.2)  # equally likely
BANDWIDTH_RANGE_MBPS = (0.75, 24.0)  # log-uniform
BUFFER_RANGE_S = (0.0, 12.0)  # uniform
#: The reward the manifest declares (`reward.metrics`); the tests hold the manifest to it.
REWARD_WEIGHTS: dict[str, float] = {"quality": 1.0, "rebuffer_s": -1.0, "quality_change": -0.5}
FEATURE_NAMES = ("bandwidth_mbps", "buffer_s", "last_bitrate_mbps")


class SimulatorError(AppClientError):
    """The simulator was asked something its world cannot answer, or serving/Kafka failed it."""


@dataclass(frozen=True, slots=True)
class ChunkContext:
    """What the player knows before choosing a chunk's bitrate."""

    bandwidth_mbps: float
    buffer_s: float
    last_bitrate_mbps: float

    def features(self) -> dict[str, float]:
        """The request's `context_features`."""
        return {
            "bandwidth_mbps": self.bandwidth_mbps,
            "buffer_s": self.buffer_s,
            "last_bitrate_mbps": self.last_bitrate_mbps,
        }


def draw_contexts(rng: np.random.Generator, count: int) -> list[ChunkContext]:
    """`count` independent chunk contexts (see the module docstring for the distributions)."""
    low, high = BANDWIDTH_RANGE_MBPS
    bandwidth = np.exp(rng.uniform(math.log(low), math.log(high), count))
    buffer = rng.uniform(*BUFFER_RANGE_S, count)
    rates = np.array(list(LADDER.values()))
    last = rates[rng.integers(len(rates), size=count)]
    return [
        ChunkContext(round(float(b), 4), round(float(s), 3), float(r))
        for b, s, r in zip(bandwidth, buffer, last, strict=True)
    ]


def chunk_metrics(context: ChunkContext, level: str, factor: float) -> dict[str, float]:
    """The metrics of downloading one chunk at `level` when the link delivers `factor` × the estimate."""
    bitrate = _bitrate(level)
    download_s = CHUNK_S * bitrate / (context.bandwidth_mbps * factor)
    return {
        "quality": math.log(bitrate / QUALITY_REFERENCE_MBPS),
        "rebuffer_s": max(0.0, download_s - context.buffer_s),
        "quality_change": abs(math.log(bitrate / context.last_bitrate_mbps)),
    }


def reward_of(metrics: Mapping[str, float], weights: Mapping[str, float] = REWARD_WEIGHTS) -> float:
    """Σ weight × metric: the reward the loop maximizes (a metric the event lacks counts 0)."""
    return float(sum(weight * metrics.get(name, 0.0) for name, weight in weights.items()))


def expected_rewards(context: ChunkContext, weights: Mapping[str, float] = REWARD_WEIGHTS) -> np.ndarray:
    """E[reward | context, level] for every level of `LADDER`, in ladder order: exact (four factors)."""
    return np.array(
        [
            np.mean([reward_of(chunk_metrics(context, level, f), weights) for f in THROUGHPUT_FACTORS])
            for level in LADDER
        ]
    )


def draw_outcome(rng: np.random.Generator, context: ChunkContext, level: str) -> dict[str, float]:
    """The metrics one download really produced: the hidden factor drawn uniformly."""
    factor = THROUGHPUT_FACTORS[int(rng.integers(len(THROUGHPUT_FACTORS)))]
    return chunk_metrics(context, level, factor)


def uniform_value(contexts: Sequence[ChunkContext], weights: Mapping[str, float] = REWARD_WEIGHTS) -> float:
    """Exact expected reward per decision of uniform random choice over the ladder on `contexts`."""
    return float(np.mean([expected_rewards(c, weights).mean() for c in contexts]))


def oracle_value(contexts: Sequence[ChunkContext], weights: Mapping[str, float] = REWARD_WEIGHTS) -> float:
    """Exact expected reward per decision of the best level for each context."""
    return float(np.mean([expected_rewards(c, weights).max() for c in contexts]))


def policy_value(
    contexts: Sequence[ChunkContext], levels: Sequence[str], weights: Mapping[str, float] = REWARD_WEIGHTS
) -> float:
    """Exact expected reward per decision of choosing `levels[i]` for `contexts[i]`."""
    if len(levels) != len(contexts):
        raise SimulatorError(f"{len(levels)} levels for {len(contexts)} contexts; expected one per context")
    names = list(LADDER)
    values = [
        expected_rewards(c, weights)[names.index(_check_level(a))]
        for c, a in zip(contexts, levels, strict=True)
    ]
    return float(np.mean(values))


def _bitrate(level: str) -> float:
    return LADDER[_check_level(level)]


def _check_level(level: str) -> str:
    if level not in LADDER:
        raise SimulatorError(f"unknown bitrate level {level!r}; the ladder is {list(LADDER)}")
    return level


# --- the app's side of streamrl: HTTP and Kafka --------------------------------------------------
@dataclass(frozen=True)
class AppSettings:
    """What the simulator takes from its manifest: the app's name, its actions and its reward."""

    app: str
    actions: list[str]
    weights: dict[str, float]

    @property
    def rewards_topic(self) -> str:
        return f"{self.app}.rewards"


def read_settings(path: Path) -> AppSettings:
    """The app name, action names and reward weights of the manifest at `path`, checked against the world."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        settings = AppSettings(
            app=str(data["app"]),
            actions=[str(a) for a in data["actions"]["names"]],
            weights={str(k): float(v) for k, v in data["reward"]["metrics"].items()},
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise SimulatorError(
            f"cannot read app, actions.names and reward.metrics from manifest {path}: {exc!r}"
        ) from exc
    if sorted(settings.actions) != sorted(LADDER):
        raise SimulatorError(
            f"{path}: actions.names {settings.actions} must be the simulator's ladder {list(LADDER)}"
        )
    if unknown := sorted(set(settings.weights) - set(REWARD_WEIGHTS)):
        raise SimulatorError(f"{path}: reward.metrics {unknown} are not metrics this world produces")
    return settings


def act_request(context: ChunkContext, actions: Sequence[str]) -> dict[str, Any]:
    """One `/act` body: a fresh viewer and request id; the request is its own episode."""
    request_id = str(uuid.uuid4())
    return {
        "action_kind": "discrete",
        "entity_id": f"viewer-{uuid.uuid4()}",
        "request_id": request_id,
        "mdp_id": request_id,
        "sequence_number": 0,
        "context_features": context.features(),
        "possible_actions": list(actions),
    }


def reward_event(
    request_id: str, metrics: Mapping[str, float], weights: Mapping[str, float]
) -> dict[str, Any]:
    """One reward event: the metrics and their weighted sum, timestamped now (UTC)."""
    return {
        "schema_version": 1,
        "request_id": request_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "reward": reward_of(metrics, weights),
        "metrics": dict(metrics),
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
    """Serve `decisions` chunks through `url`, send their rewards to Kafka, return the summary."""
    if decisions < 1 or batch < 1:
        raise SimulatorError(f"decisions and batch must be >= 1, got {decisions} and {batch}")
    settings = read_settings(manifest)
    rng = np.random.default_rng(seed)
    contexts = draw_contexts(rng, decisions)
    route = f"/v1/apps/{settings.app}/act/batch"
    chosen: list[str] = []
    rewards: list[float] = []
    versions: dict[str, int] = {}
    with (
        RewardProducer(bootstrap, settings.rewards_topic, timeout_s) as producer,
        httpx.Client(base_url=url, timeout=timeout_s) as client,
    ):
        for first in range(0, decisions, batch):
            part = contexts[first : first + batch]
            bodies = [act_request(c, settings.actions) for c in part]
            responses = post_batches(client, route, "requests", bodies, len(bodies))
            for context, body, response in zip(part, bodies, responses, strict=True):
                if response["request_id"] != body["request_id"]:
                    raise SimulatorError(
                        f"serving answered request {response['request_id']!r} for {body['request_id']!r}"
                    )
                level = response["action"]
                metrics = draw_outcome(rng, context, level)
                event = reward_event(body["request_id"], metrics, settings.weights)
                producer.send(event)
                chosen.append(level)
                rewards.append(event["reward"])
                versions[response["model_version"]] = versions.get(response["model_version"], 0) + 1
    return {
        "app": settings.app,
        "decisions": decisions,
        "realized_reward": float(np.mean(rewards)),
        "expected_reward": policy_value(contexts, chosen, settings.weights),
        "uniform_reward": uniform_value(contexts, settings.weights),
        "oracle_reward": oracle_value(contexts, settings.weights),
        "model_versions": versions,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the app's serving address, e.g. http://127.0.0.1:18081")
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, e.g. 127.0.0.1:19092")
    parser.add_argument("--decisions", type=int, required=True, help="how many chunk decisions to run")
    parser.add_argument("--seed", type=int, required=True, help="seeds the contexts and the outcomes")
    parser.add_argument("--batch", type=int, default=200, help="decisions per act/batch call")
    parser.add_argument("--manifest", type=Path, default=MANIFEST_PATH, help="the app's manifest")
    args = parser.parse_args(argv)
    try:
        summary = run(args.url, args.bootstrap, args.decisions, args.seed, args.batch, args.manifest)
    except AppClientError as exc:
        print(f"video_bitrate simulator: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
