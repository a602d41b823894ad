"""Closed loops through the real service: CartPole-v1, Pendulum-v1 and a recommender, from day 0.

For each family, on the local stack as `streamrl demo` runs it (fresh topics, `streamrl serve` and
`streamrl stream` as child processes): serving starts with no model and its uniform fallback; the
app (`apps.gym_http`) asks `POST /v1/act/batch` for every action and logs every reward; each
round, once the stream has closed the round's MDPs into timelines, the refresh trains the
environment's `trainer:` on all timelines so far, evaluates it on the round's logs, gates it and
deploys it if approved — or, where the data cannot judge it and the gate has a canary
(Pendulum), serves it to half of the episodes until the next refresh compares realized returns;
serving hot-swaps before the next round. Then the policy *as served over HTTP* (its own
exploration, and a running canary's share, included) is scored:

| family | logged before scoring | score | target |
| --- | --- | --- | --- |
| cartpole | ≤ 30 000 steps (15k uniform, 15k served) | mean return over 50 episodes | ≥ 475 |
| pendulum | ≤ 20 000 steps (5k uniform, then 3 × 5k served; whole episodes) | mean return over 20 episodes | ≥ −300 |
| recsys | 5 000 + 5 000 requests | share of the uniform→oracle gap closed on 5 000 new requests | ≥ 0.8 |

`python -m benchmarks served_loop` runs all three; `python -m benchmarks.served_loop --family
cartpole` one. Each family's environment file is written to `runs/served_loop/<family>/
environment.yaml`; the last line printed is one JSON object
`{"cartpole": mean_return, "pendulum": mean_return, "recsys_gap_closed": fraction}` (null for a
family not run). Scoring episodes are logged too (serving logs every decision), after the last refresh.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from apps.gym_http import CARTPOLE, PENDULUM, PENDULUM_BOUNDS, GymApp, run_episodes, run_recsys
from apps.recsys import RecsysSim, RecsysSimConfig
from benchmarks._progress import write
from contracts import StreamrlError, Topics
from features import build_feature_store
from infra.config import load_config
from infra.environment import Environment
from infra.loop_waits import wait_for_timelines, wait_serving
from infra.processes import ManagedProcess, start_process
from infra.refresh import run_refresh
from infra.stack import LocalStack
from stream import EventLogger, ensure_topics, load_timelines
from trainer import ModelRegistry

RUN_ROOT = Path("runs/served_loop")
DAY0_VERSION = "day0-uniform"


class ServedLoopError(StreamrlError):
    """A family's loop could not complete (a service died, timelines never arrived, serving never swapped)."""


@dataclass(frozen=True)
class Played:
    """What one round of an app logged: the request ids (to find their timeline rows) and a summary."""

    request_ids: list[str]
    summary: str


@dataclass(frozen=True)
class Family:
    """One app kind: its environment overrides, its rounds, and how it plays and is scored."""

    name: str
    result_key: str
    target: float
    feature_names: tuple[str, ...]  # what the app sends as context (and the feature store's names)
    rounds: tuple[int, ...]  # steps or requests logged per round; round 0 is served by the fallback
    overrides: dict[str, Any]  # over infra/configs/local.yaml: trainer, exploration, gate, serving
    play: Callable[[httpx.Client, EventLogger, int, int, str], Played]  # (…, round, budget, prefix)
    score: Callable[[httpx.Client, EventLogger, str], tuple[float, str]]


@dataclass
class RoundRecord:
    served: str
    logged: int
    summary: str
    candidate: str = ""
    gate: str = ""


@dataclass
class FamilyResult:
    name: str
    figure: float
    detail: str
    logged_steps: int
    served_version: str
    wall_s: float
    rounds: list[RoundRecord] = field(default_factory=list)


# --- families ----------------------------------------------------------------------------------
def _gym_family(
    app: GymApp,
    result_key: str,
    target: float,
    rounds: tuple[int, ...],
    overrides: dict[str, Any],
    score_episodes: int,
    parallel: int,
) -> Family:
    def play(client: httpx.Client, logger: EventLogger, index: int, budget: int, prefix: str) -> Played:
        outcome = run_episodes(
            app,
            client,
            logger,
            seed=1_000 * (index + 1),
            mdp_prefix=prefix,
            max_steps=budget,
            parallel=parallel,
        )
        return Played(
            outcome.request_ids,
            f"{outcome.steps} steps, {len(outcome.episode_returns)} episodes ended, "
            f"mean return {outcome.mean_return:.1f}",
        )

    def score(client: httpx.Client, logger: EventLogger, prefix: str) -> tuple[float, str]:
        outcome = run_episodes(
            app, client, logger, seed=900_000, mdp_prefix=prefix, episodes=score_episodes, parallel=parallel
        )
        returns = outcome.episode_returns
        detail = (
            f"mean return {outcome.mean_return:.1f} (min {min(returns):.1f}, max {max(returns):.1f}) over "
            f"{len(returns)} episodes served by {outcome.model_versions}"
        )
        return outcome.mean_return, detail

    return Family(app.name, result_key, target, app.feature_names, rounds, overrides, play, score)


def _recsys_family() -> Family:
    sim = RecsysSim(RecsysSimConfig())
    score_start, score_count = 1_000_000, 5_000

    def play(client: httpx.Client, logger: EventLogger, index: int, budget: int, prefix: str) -> Played:
        outcome = run_recsys(sim, client, logger, start=index * 100_000, count=budget, mdp_prefix=prefix)
        gap = sim.gap_closed(outcome.requests, outcome.chosen)
        return Played(
            outcome.request_ids,
            f"{budget} requests, click rate {outcome.click_rate:.3f}, gap closed {gap:.2f}",
        )

    def score(client: httpx.Client, logger: EventLogger, prefix: str) -> tuple[float, str]:
        outcome = run_recsys(sim, client, logger, start=score_start, count=score_count, mdp_prefix=prefix)
        uniform, oracle = sim.uniform_value(outcome.requests), sim.oracle_value(outcome.requests)
        served = sim.policy_value(outcome.requests, outcome.chosen)
        gap = sim.gap_closed(outcome.requests, outcome.chosen)
        detail = (
            f"served expected reward {served:.4f} vs uniform {uniform:.4f} and oracle {oracle:.4f} on "
            f"{score_count} requests (click rate {outcome.click_rate:.3f}): gap closed {gap:.3f}, "
            f"served by {outcome.model_versions}"
        )
        return gap, detail

    overrides = {
        "trainer": {
            "type": "parametric_dqn",
            "gamma": 0.0,
            "hidden_sizes": [64, 64],
            "batch_size": 256,
            "num_epochs": 30,
        },
        "demo": {"learned_exploration": {"type": "epsilon_greedy", "epsilon": 0.05}},
    }
    features = tuple(sim.user_features)
    return Family("recsys", "recsys_gap_closed", 0.8, features, (5_000, 5_000), overrides, play, score)


def families() -> dict[str, Family]:
    cartpole = _gym_family(
        CARTPOLE,
        "cartpole",
        475.0,
        (15_000, 15_000),
        {
            # benchmarks/cartpole_offline.py's 3-step DQN (docs/training-discrete.md)
            "trainer": {
                "type": "dqn",
                "gamma": 0.99,
                "n_step": 3,
                "hidden_sizes": [64, 64],
                "learning_rate": 0.001,
                "batch_size": 256,
                "num_epochs": 50,
            },
            "demo": {"learned_exploration": {"type": "epsilon_greedy", "epsilon": 0.02}},
            # Episodes run to 500 steps under a near-deterministic policy: a sequential estimate's
            # cumulative weights leave an effective sample size near 1, so it could approve nothing.
            # The gate here guards the immediate reward per decision (one-step DR) instead, an
            # explicit override the report names; the long-term score is this benchmark's job.
            "evaluation": {"problem": "one_step", "headline": "dr"},
        },
        score_episodes=50,
        parallel=50,
    )
    pendulum = _gym_family(
        PENDULUM,
        "pendulum",
        -300.0,
        (5_000, 5_000, 5_000, 5_000),
        {
            "trainer": {
                "type": "sac",
                "action_low": list(PENDULUM_BOUNDS[0]),
                "action_high": list(PENDULUM_BOUNDS[1]),
                "hidden_sizes": [128, 128],
                "batch_size": 256,
                "num_epochs": 150,
            },
            # The gate judges the one-step (kernel) DR of the immediate reward, an explicit override
            # of the sequential default (kernel weights over 200-step episodes leave an effective
            # sample size near 1). Pendulum's reward depends on the action only through a small
            # torque cost, so that estimate stays within a percent of the logged policy's whatever
            # the candidate; 0.98 holds back only a candidate it finds clearly worse.
            # No CPE estimate can judge a Pendulum policy from logged data: its immediate reward
            # prices only torque (one-step DR rejects the torque a swing-up needs), and kernel
            # importance weights over 200-step episodes leave an effective sample size near 1, so
            # the sequential report (the default here) is unreliable every time. Such a candidate
            # is *undecided*, and the gate's canary serves it to half the episodes; the next refresh
            # promotes or stops it on realized returns (Welch, 95 %, ≥ 8 complete episodes each).
            # A fifth of each round's episodes is held out for the CPE report, which is kept.
            "evaluation": {
                "holdout_fraction": 0.2,
                "gate": {"canary": {"share": 0.5, "min_episodes": 8, "confidence": 0.95}},
            },
            # Forced CONTINUOUS (z-score) normalization. Left to identification, once served policies
            # balance the pendulum most logged states sit upright and still, and angular velocity and
            # cos θ identify as QUANTILE: the swing-up range |ω| > 2 is squeezed into the top 5 % of
            # [0, 1] and offline SAC cannot tell those states apart (on the same 20 000 logged
            # steps: −1 080 to −1 170 with identified types over three seeds, −159 and −168 forced).
            "normalization": {"overrides": {name: "continuous" for name in PENDULUM.feature_names}},
        },
        score_episodes=20,
        # 25 side by side: each 5 000-step round is 25 whole 200-step episodes. An episode cut by the
        # budget ends on a terminal row, and with Pendulum's negative rewards a false terminal looks
        # like a good place to be (offline SAC on 5k uniform steps: −557 without cut episodes, −1343 with 20).
        parallel=25,
    )
    return {f.name: f for f in (cartpole, pendulum, _recsys_family())}


def _serving_overrides(family: Family) -> dict[str, Any]:
    """Day 0 serves uniformly at random; continuous dimensions and bounds for Pendulum."""
    serving: dict[str, Any] = {"fallback": {"type": "uniform", "model_version": DAY0_VERSION}}
    if family.name == PENDULUM.name:
        serving["continuous_actions"] = [
            {"name": name, "low": low, "high": high}
            for name, low, high in zip(PENDULUM.actions, *PENDULUM_BOUNDS, strict=True)
        ]
    return serving


# --- one family's loop ---------------------------------------------------------------------------
def run_family(
    family: Family, config_path: Path | None, run_root: Path, *, progress: Callable[[str], None] = write
) -> FamilyResult:
    """Day 0 uniform, a refresh after every round, then the served policy scored over HTTP."""
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    topics = Topics(
        decisions=f"decisions.{family.name}.{run_id}",
        rewards=f"rewards.{family.name}.{run_id}",
        dead_letters=f"dead_letters.{family.name}.{run_id}",
        metrics=f"metrics.{family.name}.{run_id}",
    )
    overrides = {
        **family.overrides,
        "topics": topics.model_dump(),
        "serving": _serving_overrides(family),
        "monitoring": {"enabled": False},
        "feature_store": {"feature_names": list(family.feature_names), "online_reader": {"type": "redis"}},
    }
    config = load_config(config_path, overrides=overrides)
    env = Environment.from_config(config, run_root / family.name)
    if env.run_dir.exists():
        shutil.rmtree(env.run_dir)
    env.run_dir.mkdir(parents=True)
    config_file = env.run_dir / "environment.yaml"
    _write_yaml(config, config_file)
    env_args = ["--config", str(config_file), "--run-dir", str(env.run_dir)]

    stack = LocalStack(config.stack)
    was_up = all(s.healthy for s in stack.status())
    stack.up()
    processes: list[ManagedProcess] = []
    result = FamilyResult(family.name, float("nan"), "", 0, DAY0_VERSION, 0.0)
    try:
        ensure_topics(env.bootstrap_servers, topics)
        # Serving looks up online features per entity; these apps send all of theirs in the request.
        build_feature_store(env.feature_store_config())
        serving = start_process(
            "serving", ["-m", "infra.cli", "serve", *env_args], env.logs_dir / "serving.log"
        )
        processes.append(serving)
        stream = start_process(
            "stream", ["-m", "infra.cli", "stream", *env_args], env.logs_dir / "stream.log"
        )
        processes.append(stream)
        wait_serving(env.serving_url, DAY0_VERSION, serving, 120)
        progress(f"   [{family.name}] serving {env.serving_url} (day 0: uniform), logs in {env.logs_dir}")
        with (
            EventLogger(env.bootstrap_servers, topics) as logger,
            httpx.Client(base_url=env.serving_url, timeout=60.0) as client,
        ):
            for index, budget in enumerate(family.rounds):
                served = _served_version(env.serving_url)
                round_start = pd.Timestamp.now(tz="UTC")
                played = family.play(client, logger, index, budget, f"{family.name}-r{index}-{run_id}")
                record = RoundRecord(served=served, logged=len(played.request_ids), summary=played.summary)
                result.rounds.append(record)
                result.logged_steps += record.logged
                progress(f"   [{family.name}] round {index} served by {served}: {played.summary}")
                round_rows = wait_for_timelines(
                    env,
                    played.request_ids,
                    round_start,
                    [stream, serving],
                    600.0,
                    what="the round",
                    error=ServedLoopError,
                )
                training_rows = load_timelines(env.stream_config().output_dir)
                refresh = run_refresh(
                    env,
                    training_rows,
                    round_rows,
                    None,
                    config.demo.learned_exploration,
                    label=f"round{index}",
                )
                record.candidate = refresh.candidate.version
                record.gate = (
                    "approved"
                    if refresh.decision.approved
                    else "canary"
                    if refresh.decision.canary
                    else "rejected"
                )
                if refresh.canary_verdict is not None:
                    verdict = refresh.canary_verdict
                    progress(
                        f"   [{family.name}] canary {verdict.canary}: {verdict.outcome} — {verdict.reason}"
                    )
                headline = refresh.report.headline_estimate if refresh.report is not None else None
                estimate = (
                    f"{refresh.report.headline} {headline.normalized:.3f}× logged [{headline.normalized_ci_low:.3f}, "
                    f"{headline.normalized_ci_high:.3f}]"
                    if headline is not None
                    else "no CPE report"
                )
                progress(
                    f"   [{family.name}] refresh {index}: {len(training_rows)} rows → {record.candidate}, "
                    f"{estimate}, gate {record.gate}"
                    + (f" ({'; '.join(refresh.decision.reasons)})" if refresh.decision.reasons else "")
                )
                state = ModelRegistry(env.registry_dir).deployment_state()
                wait_serving(
                    env.serving_url,
                    state.current or DAY0_VERSION,
                    serving,
                    60,
                    canary=state.canary.version if state.canary else None,
                )
            result.served_version = _served_version(env.serving_url)
            result.figure, result.detail = family.score(client, logger, f"{family.name}-score-{run_id}")
    finally:
        for process in reversed(processes):
            process.stop()
        if not was_up:
            stack.down()
    result.wall_s = time.monotonic() - started
    return result


def _served_version(url: str) -> str:
    return str(httpx.get(f"{url}/healthz", timeout=5.0).json().get("model_version"))


def _write_yaml(config: Any, path: Path) -> None:
    import yaml

    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))


# --- entry point ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, float | None]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.served_loop", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--family", action="append", choices=sorted(families()), help="repeatable; default all"
    )
    parser.add_argument("--config", type=Path, default=None, help="environment file (default: the local one)")
    parser.add_argument("--run-dir", type=Path, default=RUN_ROOT)
    args = parser.parse_args([] if argv is None else argv)
    table = families()
    names = args.family or list(table)
    figures: dict[str, float | None] = {f.result_key: None for f in table.values()}
    for name in names:
        family = table[name]
        result = run_family(family, args.config, args.run_dir)
        verdict = "meets" if result.figure >= family.target else "MISSES"
        write(
            f"   {name}: {result.detail}; {result.logged_steps} logged before scoring, "
            f"{len(result.rounds)} refreshes ({', '.join(r.gate for r in result.rounds)}), scored "
            f"{result.served_version}: {verdict} target {family.target:g}; wall {result.wall_s:.0f}s"
        )
        figures[family.result_key] = round(result.figure, 4)
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
