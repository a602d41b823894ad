"""CPE interval coverage where the truth is known: how often each reported 95 % interval holds it.

The two discrete tasks of benchmarks/cpe_accuracy.py, through `evaluate_probabilities` (reward
model, FQE, every estimator), target π_α = (1 − α)·logging + α·other for α in 0.1, 0.25, 0.5, 1:
- the notification simulator (apps/notifications.py): one day logged under the ε-rule per seed;
  the truth is exact (`NotificationSim.policy_value`, per decision, on that seed's day);
- CartPole-v1 (60-step horizon, γ = 0.95) logged under a noisy controller; the truth is the mean
  discounted return of 1,000,000 target rollouts, the same for every seed of an α.
Each estimator is compared with the truth in its own unit: one-step estimators value the mean
reward per decision, sequential ones and FQE the (discounted) return per episode. On the simulator
(γ = 1, `slots_per_day` decisions per episode) the per-episode truth is slots × the per-decision
one; CartPole has no per-decision truth, so its one-step rows read "—".
Reading the tables (rows: estimators, columns: α): "cov% (rk/N) w×" is the share of the N seeds
where the estimate was available whose interval [ci_low, ci_high] holds the truth, k of them marked
reliable by the report, and the mean interval width over WDR's in the same cell (both per episode).
Unavailable estimates are counted apart, not as misses. The second table is the coverage among
the seeds marked reliable, which issue 14 wants ≥ 90 % everywhere. The third, per α, the Pareto k̂
of WDR's weights over the seeds (`evaluation.pareto`) and, among the seeds no other rule flags, the
coverage of those at or below the report's k̂ limit and of those above it (which it marks
unreliable). Then the report's headline per task and α: which estimator(s) it chose over the seeds
and how often its interval covered. Where the report marks the headline unreliable it reports the
truncated importance-sampling interval (`evaluation.bounds.truncated_is_interval`), which holds
whatever the weights' tail, instead of the bootstrap's: the headline rows count those, a line
under each says how many and how wide, and the width tables leave them out.
The last line is one JSON object: `min_coverage_reliable` (the lowest coverage among reliable seeds
over task × α × estimator cells with any), `worst_reliable_cell` (that cell), `headline_coverage`
(the lowest headline coverage over task × α), `headline_unmeasured` (cells where some headline had
no truth to compare with or was unavailable), `mean_width_vs_wdr` (per estimator, the mean over
cells of its width relative to WDR's) and `seeds`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from apps.notifications import ACTIONS, FEATURE_NAMES, NotificationSim, NotificationSimConfig
from apps.offline import simulate_timelines
from benchmarks._progress import progress_bar
from benchmarks.cpe_accuracy import (
    ALPHAS,
    CARTPOLE_GAMMA,
    CARTPOLE_HORIZON,
    _cartpole_logging,
    _cartpole_other,
    _cartpole_rollouts,
    _cartpole_timelines,
    _evaluate,
    _mixture,
    _notification_other,
)
from evaluation import SEQUENTIAL_ESTIMATORS, CpeReport, EvaluationConfig

NOTIFICATIONS = "notifications"
CARTPOLE = "CartPole"
TASKS = (NOTIFICATIONS, CARTPOLE)
CARTPOLE_STATE = ("cart_position", "cart_velocity", "pole_angle", "pole_velocity")
REFERENCE = "wdr"  # widths are shown relative to this estimator's


@dataclass(frozen=True, slots=True)
class Truth:
    """The target's true value in both units; `per_decision` None where there is none (CartPole)."""

    per_decision: float | None
    per_episode: float
    decisions_per_episode: float | None  # converts a per-decision width to per episode


@dataclass(frozen=True, slots=True)
class Outcome:
    """One estimate of one (task, seed, α) against the truth."""

    task: str
    seed: int
    alpha: float
    estimator: str
    available: bool
    reliable: bool
    covered: bool | None  # None: unavailable, or no truth in this estimator's unit
    width_per_episode: float | None
    headline: bool
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    truth: float | None = None
    effective_sample_size: float | None = None
    pareto_k: float | None = None  # k̂ of the weights it relies on (`evaluation.pareto`)
    warnings: tuple[str, ...] = ()
    interval: str = "bootstrap"  # or "truncated_is": an unreliable headline's (`Estimate.interval`)


def _per_episode(name: str) -> bool:
    return name in SEQUENTIAL_ESTIMATORS or name == "fqe"


def _outcomes(task: str, seed: int, alpha: float, report: CpeReport, truth: Truth) -> list[Outcome]:
    out = []
    for name, estimate in report.estimates.items():
        target = truth.per_episode if _per_episode(name) else truth.per_decision
        scale = 1.0 if _per_episode(name) else truth.decisions_per_episode
        covered: bool | None = None
        width: float | None = None
        if estimate.available and estimate.ci_low is not None and estimate.ci_high is not None:
            if target is not None:
                covered = bool(estimate.ci_low <= target <= estimate.ci_high)
            if scale is not None:
                width = (estimate.ci_high - estimate.ci_low) * scale
        out.append(
            Outcome(
                task=task,
                seed=seed,
                alpha=alpha,
                estimator=name,
                available=estimate.available,
                reliable=estimate.reliable,
                covered=covered,
                width_per_episode=width,
                headline=name == report.headline,
                value=estimate.value,
                ci_low=estimate.ci_low,
                ci_high=estimate.ci_high,
                truth=target,
                effective_sample_size=estimate.effective_sample_size,
                pareto_k=estimate.pareto_k,
                warnings=tuple(estimate.warnings),
                interval=estimate.interval,
            )
        )
    return out


def notification_seed(seed: int, n_users: int, bootstrap: int) -> tuple[list[Outcome], list[float]]:
    """Every α's outcomes for one logged day, and the wall seconds of each evaluation."""
    sim = NotificationSim(NotificationSimConfig(n_users=n_users))
    slots = sim.config.slots_per_day
    config = EvaluationConfig(gamma=1.0, bootstrap_samples=bootstrap, min_rows=1, seed=seed)
    frame = simulate_timelines(sim, seed, sim.rule_send_probability, "rule", seed=seed)
    frame = frame.sort_values(["mdp_id", "sequence_number_ordinal"], kind="stable").reset_index(drop=True)
    features = np.array([[s[name] for name in FEATURE_NAMES] for s in frame["state_features"]])
    day = sim.start_day(seed)
    outcomes: list[Outcome] = []
    seconds: list[float] = []
    for alpha in ALPHAS:
        policy = _mixture(sim.rule_send_probability, _notification_other, alpha)
        per_decision = sim.policy_value(day, policy)
        truth = Truth(per_decision, per_decision * slots, float(slots))
        p_send = policy(features)
        target = np.stack([1.0 - p_send, p_send], axis=1)  # ACTIONS = (dont_send, send)
        started = time.perf_counter()
        report = _evaluate(frame, target, list(ACTIONS), config)
        seconds.append(time.perf_counter() - started)
        outcomes.extend(_outcomes(NOTIFICATIONS, seed, alpha, report, truth))
    return outcomes, seconds


TRUTH_CHUNK = 20_000  # rollouts per lockstep batch


def cartpole_truths(rollouts: int) -> tuple[dict[float, float], dict[float, float]]:
    """Discounted return per episode of each π_α over `rollouts` target rollouts, and its standard
    error. The truth is shared by every seed of an α, so its own Monte Carlo error would shift every
    seed's miss the same way: with cpe_accuracy's 20,000 rollouts it is a quarter of WDR's spread
    at α = 0.1; the default 1,000,000 makes it a thirtieth."""
    discount = CARTPOLE_GAMMA ** np.arange(CARTPOLE_HORIZON)
    truths: dict[float, float] = {}
    errors: dict[float, float] = {}
    for alpha in ALPHAS:
        policy = _mixture(_cartpole_logging, _cartpole_other, alpha)
        returns = np.concatenate(
            [
                np.sum(_cartpole_rollouts(policy, TRUTH_CHUNK, 10_000 + chunk)["rewards"] * discount, axis=1)
                for chunk in range(max(1, rollouts // TRUTH_CHUNK))
            ]
        )
        truths[alpha] = float(returns.mean())
        errors[alpha] = float(returns.std(ddof=1) / np.sqrt(returns.size))
    return truths, errors


def cartpole_seed(
    seed: int, episodes: int, bootstrap: int, truths: dict[float, float]
) -> tuple[list[Outcome], list[float]]:
    """Every α's outcomes for one logged batch of CartPole episodes, and each evaluation's seconds."""
    config = EvaluationConfig(gamma=CARTPOLE_GAMMA, bootstrap_samples=bootstrap, min_rows=1, seed=seed)
    frame = _cartpole_timelines(_cartpole_rollouts(_cartpole_logging, episodes, seed), seed)
    obs = np.array([[s[k] for k in CARTPOLE_STATE] for s in frame["state_features"]])
    outcomes: list[Outcome] = []
    seconds: list[float] = []
    for alpha in ALPHAS:
        p_right = _mixture(_cartpole_logging, _cartpole_other, alpha)(obs)
        target = np.stack([1.0 - p_right, p_right], axis=1)
        started = time.perf_counter()
        report = _evaluate(frame, target, ["left", "right"], config)
        seconds.append(time.perf_counter() - started)
        outcomes.extend(_outcomes(CARTPOLE, seed, alpha, report, Truth(None, truths[alpha], None)))
    return outcomes, seconds


def _run_seed(
    task: str, seed: int, args: argparse.Namespace, truths: dict[float, float]
) -> tuple[str, list[Outcome], list[float]]:
    if task == NOTIFICATIONS:
        return (task, *notification_seed(seed, args.users, args.bootstrap))
    return (task, *cartpole_seed(seed, args.episodes, args.bootstrap, truths))


def run_all(
    args: argparse.Namespace, truths: dict[float, float]
) -> tuple[list[Outcome], dict[str, list[float]]]:
    """Every (task, seed), in a process pool when `args.workers` > 1; outcomes and seconds per task."""
    jobs = [(task, seed) for task in args.tasks for seed in range(args.seeds)]
    outcomes: list[Outcome] = []
    seconds: dict[str, list[float]] = {task: [] for task in args.tasks}
    bar = {"desc": f"coverage, {len(jobs)} (task, seed) jobs", "enabled": args.progress}
    if args.workers <= 1:
        results: Iterable = (_run_seed(task, seed, args, truths) for task, seed in jobs)
        for task, found, took in progress_bar(results, **bar):
            outcomes.extend(found)
            seconds[task].extend(took)
        return outcomes, seconds
    # spawn: fresh interpreters, no inherited BLAS or tqdm threads across a fork
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        futures = [pool.submit(_run_seed, task, seed, args, truths) for task, seed in jobs]
        for future in progress_bar(as_completed(futures), **bar):
            task, found, took = future.result()
            outcomes.extend(found)
            seconds[task].extend(took)
    return outcomes, seconds


# --- summaries -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Cell:
    """One (task, α, estimator) over the seeds."""

    seeds: int
    available: int
    measured: int  # available with a truth in the estimator's unit
    covered: int
    reliable: int  # marked reliable (and measured)
    reliable_covered: int
    mean_width: float | None  # per episode, over available seeds

    @property
    def coverage(self) -> float | None:
        return self.covered / self.measured if self.measured else None

    @property
    def reliable_coverage(self) -> float | None:
        return self.reliable_covered / self.reliable if self.reliable else None


def summarize(outcomes: list[Outcome]) -> dict[tuple[str, float, str], Cell]:
    groups: dict[tuple[str, float, str], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.task, o.alpha, o.estimator), []).append(o)
    cells = {}
    for key, group in groups.items():
        measured = [o for o in group if o.covered is not None]
        reliable = [o for o in measured if o.reliable]
        # bootstrap widths only: an unreliable headline's truncated interval is compared apart
        widths = [
            o.width_per_episode
            for o in group
            if o.width_per_episode is not None and o.interval == "bootstrap"
        ]
        cells[key] = Cell(
            seeds=len(group),
            available=sum(o.available for o in group),
            measured=len(measured),
            covered=sum(bool(o.covered) for o in measured),
            reliable=len(reliable),
            reliable_covered=sum(bool(o.covered) for o in reliable),
            mean_width=float(np.mean(widths)) if widths else None,
        )
    return cells


def relative_widths(cells: dict[tuple[str, float, str], Cell]) -> dict[tuple[str, float, str], float]:
    """Mean width over WDR's mean width in the same (task, α), where both are known and WDR's > 0."""
    out = {}
    for (task, alpha, name), cell in cells.items():
        reference = cells.get((task, alpha, REFERENCE))
        if cell.mean_width is None or reference is None or not reference.mean_width:
            continue
        out[(task, alpha, name)] = cell.mean_width / reference.mean_width
    return out


def _estimators(cells: dict[tuple[str, float, str], Cell], task: str) -> list[str]:
    return list(dict.fromkeys(name for t, _, name in cells if t == task))


def _row(name: str, cells: Iterable[str], width: int) -> str:
    return "   " + f"{name:>13}" + "".join(f"{c:>{width}}" for c in cells)


def print_task(
    task: str, cells: dict[tuple[str, float, str], Cell], widths: dict[tuple[str, float, str], float]
) -> None:
    names = _estimators(cells, task)
    print(_row("estimator", (f"α={a}" for a in ALPHAS), 21))
    for name in names:
        row = []
        for alpha in ALPHAS:
            cell, w = cells[(task, alpha, name)], widths.get((task, alpha, name))
            if cell.coverage is None:
                row.append("—" if cell.available else "unavailable")
                continue
            ratio = f"{w:.2f}×" if w is not None else "—×"
            row.append(f"{cell.coverage:4.0%} (r{cell.reliable}/{cell.measured}) {ratio}")
        print(_row(name, row, 21))
    for name in names:
        missing = {a: cells[(task, a, name)].seeds - cells[(task, a, name)].available for a in ALPHAS}
        if any(missing.values()):
            counts = ", ".join(f"α={a}: {m}" for a, m in missing.items() if m)
            print(f"   {name} unavailable in some seeds ({counts}); left out of its coverage")
    print("   coverage among the seeds the report marked reliable (cov% of k seeds)")
    print(_row("estimator", (f"α={a}" for a in ALPHAS), 14))
    for name in names:
        row = []
        for alpha in ALPHAS:
            cell = cells[(task, alpha, name)]
            coverage = cell.reliable_coverage
            row.append("—" if coverage is None else f"{coverage:4.0%} of {cell.reliable}")
        print(_row(name, row, 14))


def headline_summary(
    outcomes: list[Outcome],
) -> dict[tuple[str, float], tuple[Counter, int, int, int, int]]:
    """Per (task, α): how often each estimator was the headline, then covered and measured counts
    over all seeds, then the same over the seeds whose headline the report marked reliable (the
    only ones the gate can approve on)."""
    out: dict[tuple[str, float], tuple[Counter, int, int, int, int]] = {}
    for o in outcomes:
        if not o.headline:
            continue
        chosen, covered, measured, covered_r, measured_r = out.get((o.task, o.alpha), (Counter(), 0, 0, 0, 0))
        chosen[o.estimator] += 1
        if o.covered is not None:
            covered, measured = covered + int(o.covered), measured + 1
            if o.reliable:
                covered_r, measured_r = covered_r + int(o.covered), measured_r + 1
        out[(o.task, o.alpha)] = (chosen, covered, measured, covered_r, measured_r)
    return out


def print_tails(outcomes: list[Outcome], task: str, name: str = REFERENCE) -> None:
    """Per α, the Pareto k̂ of `name`'s weights over the seeds (median, range, how many above the
    report's limit) and, where the effective sample size alone would call it reliable, its coverage
    among the seeds with k̂ at most the limit and above it."""
    print(f"   Pareto k̂ of {name}'s weights per α: median (range); seeds above the limit; among the seeds")
    print("   the ESS rule alone would mark reliable, coverage with k̂ ≤ limit | k̂ > limit")
    for alpha in ALPHAS:
        group = [o for o in outcomes if o.task == task and o.alpha == alpha and o.estimator == name]
        tails = [o.pareto_k for o in group if o.pareto_k is not None]
        if not tails:
            print(f"   α={alpha:<5} k̂ not computed (no tail to fit) in all {len(group)} seeds")
            continue
        heavy = [o for o in group if any("heavy-tailed" in w for w in o.warnings)]
        ess_only = [
            o
            for o in group
            if o.covered is not None and all("heavy-tailed" in w for w in o.warnings)  # no other warning
        ]
        split = []
        for above in (False, True):
            part = [o for o in ess_only if (o in heavy) == above]
            split.append(f"{sum(bool(o.covered) for o in part)}/{len(part)}" if part else "—")
        print(
            f"   α={alpha:<5} {np.median(tails):.2f} ({min(tails):.2f}–{max(tails):.2f}); "
            f"{len(heavy)}/{len(group)} above; {split[0]} | {split[1]}"
        )


def _load_dump(path: str) -> tuple[list[Outcome], dict[float, float], float, dict[str, list[float]]]:
    """The outcomes of a `--dump` file (no truth errors or timings: those are not in it)."""
    with open(path, encoding="utf-8") as lines:
        outcomes = [Outcome(**{**row, "warnings": tuple(row["warnings"])}) for row in map(json.loads, lines)]
    return outcomes, {a: float("nan") for a in ALPHAS}, 0.0, {}


# --- entry point ---------------------------------------------------------------------------------
def _tasks(text: str) -> tuple[str, ...]:
    """`--tasks`: names from TASKS, any case, comma-separated; an unknown one is an error."""
    wanted = {p.strip().lower() for p in text.split(",") if p.strip()}
    known = {t.lower(): t for t in TASKS}
    if not wanted or (unknown := sorted(wanted - set(known))):
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown or text!r}: expected a subset of {TASKS}")
    return tuple(t for t in TASKS if t.lower() in wanted)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks cpe_coverage", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=40, help="logged batches per task (default 40)")
    parser.add_argument("--users", type=int, default=2000, help="simulated users per notification day")
    parser.add_argument("--episodes", type=int, default=1000, help="logged CartPole episodes per seed")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per interval")
    parser.add_argument("--workers", type=int, default=2, help="processes running seeds; 1 = in-process")
    parser.add_argument(
        "--truth-rollouts", type=int, default=1_000_000, help="target rollouts per CartPole truth"
    )
    parser.add_argument(
        "--tasks",
        type=_tasks,
        default=TASKS,
        help=f"comma-separated subset of {', '.join(TASKS)} (default both)",
    )
    parser.add_argument("--dump", default=None, help="also write every outcome as JSON lines to this file")
    parser.add_argument(
        "--from-dump", default=None, help="print the tables of an earlier --dump file instead of computing"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args([] if argv is None else argv)

    started = time.perf_counter()
    if args.from_dump:
        outcomes, truth_errors, truth_s, seconds = _load_dump(args.from_dump)
    else:
        truths, truth_errors = cartpole_truths(args.truth_rollouts)
        truth_s = time.perf_counter() - started
        outcomes, seconds = run_all(args, truths)
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as out:
            for outcome in outcomes:
                out.write(json.dumps(dataclasses.asdict(outcome)) + "\n")
    wall_s = time.perf_counter() - started
    cells = summarize(outcomes)
    widths = relative_widths(cells)
    print(
        f"   {args.seeds} seeds × {len(ALPHAS)} α per task, {args.bootstrap} bootstrap resamples, "
        f"nominal 95 %; {wall_s:.0f}s, {args.workers} worker(s), CartPole truths {truth_s:.0f}s"
    )
    print(
        "   seconds per evaluation (one seed, one α): "
        + ", ".join(f"{t} {np.mean(s):.1f} (max {np.max(s):.1f})" for t, s in seconds.items() if s)
    )
    descriptions = {
        NOTIFICATIONS: f"notification simulator, {args.users} users × 4 slots (truth exact, per seed's day)",
        CARTPOLE: (
            f"CartPole, {args.episodes} logged episodes (truth: {args.truth_rollouts:,} rollouts, "
            "discounted return; its standard error per α: "
            + ", ".join(f"{a} ±{truth_errors[a]:.4f}" for a in ALPHAS)
            + ")"
        ),
    }
    for task in args.tasks:
        print(f"   {descriptions[task]}")
        print(f"   coverage (reliable/N) and mean width relative to {REFERENCE}, per estimator and α")
        print_task(task, cells, widths)
        print_tails(outcomes, task)

    headlines = headline_summary(outcomes)
    print("   headline the report chose, how often its interval covered the truth, and how often where")
    print("   the report marked it reliable (the gate approves nothing else)")
    headline_coverage: list[float] = []
    headline_reliable: list[float] = []
    unmeasured: list[str] = []
    for (task, alpha), (chosen, covered, measured, covered_r, measured_r) in headlines.items():
        names = ", ".join(f"{name} ×{count}" for name, count in chosen.most_common())
        if measured < sum(chosen.values()):
            unmeasured.append(f"{task}/α={alpha}")
        coverage = f"{covered / measured:.0%} ({covered}/{measured})" if measured else "— (no truth)"
        when = f"{covered_r / measured_r:.0%} ({covered_r}/{measured_r})" if measured_r else "— (never)"
        print(f"   {task:>13} α={alpha:<5} {names}: covers {coverage}; when reliable {when}")
        guaranteed = [
            o
            for o in outcomes
            if o.headline and o.task == task and o.alpha == alpha and o.interval == "truncated_is"
        ]
        measured_g = [o for o in guaranteed if o.covered is not None]
        if guaranteed:
            wdr = cells.get((task, alpha, REFERENCE))
            spans = [o.width_per_episode for o in guaranteed if o.width_per_episode is not None]
            ratio = (
                f", {np.mean(spans) / wdr.mean_width:.1f}× WDR's bootstrap width"
                if spans and wdr is not None and wdr.mean_width
                else f", mean width {np.mean(spans):.3g} per episode"
                if spans
                else ""
            )
            print(
                f"   {'':>13} {'':<7} truncated IS interval (unreliable headline) in {len(guaranteed)} seeds: "
                f"covers {sum(bool(o.covered) for o in measured_g)}/{len(measured_g)}{ratio}"
            )
        if measured:
            headline_coverage.append(covered / measured)
        if measured_r:
            headline_reliable.append(covered_r / measured_r)
    if unmeasured:
        note = f"headline without a truth in its unit, or unavailable, in some seeds: {', '.join(unmeasured)}"
        print(textwrap.fill(note, 100, initial_indent="   ", subsequent_indent="     "))

    reliable = {
        key: cell.reliable_coverage for key, cell in cells.items() if cell.reliable_coverage is not None
    }
    worst = min(reliable, key=lambda key: reliable[key]) if reliable else None
    by_estimator: dict[str, list[float]] = {}
    for (_, _, name), ratio in widths.items():
        by_estimator.setdefault(name, []).append(ratio)
    figures: dict[str, object] = {
        "min_coverage_reliable": round(reliable[worst], 4) if worst else None,
        "headline_coverage": round(min(headline_coverage), 4) if headline_coverage else None,
        "headline_coverage_when_reliable": round(min(headline_reliable), 4) if headline_reliable else None,
        "seeds": len({o.seed for o in outcomes}),
        "worst_reliable_cell": f"{worst[0]}/{worst[2]}/α={worst[1]}" if worst else None,
        "headline_unmeasured": unmeasured,
        "mean_width_vs_wdr": {name: round(float(np.mean(r)), 4) for name, r in by_estimator.items()},
    }
    print(json.dumps(figures, ensure_ascii=False), flush=True)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
