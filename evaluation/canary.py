"""Judging a canary by what it realized: the returns of the episodes it served against the others'.

A candidate the logged data cannot judge (`GateDecision.undecided`: its report is unreliable or
its effective sample size too small — typical of long episodes and continuous actions, where
importance weights collapse) may serve a share of the episodes beside the deployed model
(`GateConfig.canary`, `ModelRegistry.start_canary`). Serving routes whole episodes, so each one
was served by one model. A later refresh compares them here:

- the episodes counted are complete (they reached their terminal row), began after the canary
  started, and were served by one version throughout; an episode's return is the sum of its
  rewards;
- the difference of mean returns, canary minus baseline, gets Welch's t bounds at one-sided
  `confidence` (unequal variances, Welch–Satterthwaite degrees of freedom);
- promote when the lower bound is above 0 (the canary is better), stop when the upper bound is
  below 0 (it is worse), otherwise keep it running (too few episodes either side, or a difference
  the episodes cannot yet resolve). Each decision is wrong with probability at most 1 − confidence.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from evaluation.config import CanaryConfig
from trainer import CanaryState, ModelRegistry

CANARY_FILE = "canary.json"

CanaryOutcome = Literal["promote", "stop", "continue"]


class CanaryVerdict(BaseModel):
    """One judgement of a running canary, written to `reports/<canary version>/canary.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    schema_version: Literal[1] = 1
    canary: str
    baseline: str | None = Field(description="the deployed version beside it; None: serving's day-0 fallback")
    baseline_versions: list[str] = Field(description="the versions that served the baseline episodes")
    share: float
    started_at: datetime
    canary_episodes: int
    baseline_episodes: int
    canary_mean: float | None
    baseline_mean: float | None
    difference: float | None = Field(description="canary minus baseline mean return")
    lower: float | None
    upper: float | None
    confidence: float
    outcome: CanaryOutcome
    reason: str
    judged_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def episode_returns(rows: pd.DataFrame, since: datetime) -> pd.DataFrame:
    """One row per complete episode that began at or after `since` and was served by one version:
    `mdp_id`, `model_version`, `return` (the sum of its rewards)."""
    columns = ["mdp_id", "model_version", "return"]
    if len(rows) == 0:
        return pd.DataFrame(columns=columns)
    grouped = rows.groupby("mdp_id", sort=True)
    summary = pd.DataFrame(
        {
            "first": grouped["timestamp"].min(),
            "versions": grouped["model_version"].nunique(),
            "model_version": grouped["model_version"].first(),
            "complete": ~grouped["not_terminal"].all(),
            "return": grouped["reward"].sum(),
        }
    )
    keep = (summary["first"] >= pd.Timestamp(since)) & (summary["versions"] == 1) & summary["complete"]
    return summary.loc[keep].reset_index()[columns]


def welch_bounds(treatment: np.ndarray, control: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """(difference of means, lower, upper): treatment − control ± t_{confidence, ν}·se, one-sided each,
    with se² = s₁²/n₁ + s₀²/n₀ and ν by Welch–Satterthwaite. Both samples need 2+ values."""
    a, b = np.asarray(treatment, np.float64), np.asarray(control, np.float64)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    difference = float(a.mean() - b.mean())
    se = math.sqrt(va + vb)
    if se == 0.0:
        return difference, difference, difference
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(stats.t.ppf(confidence, dof)) * se
    return difference, difference - half, difference + half


def compare_canary(rows: pd.DataFrame, canary: CanaryState, config: CanaryConfig) -> CanaryVerdict:
    """The verdict on `canary` from timeline `rows` (see the module docstring for the rule)."""
    episodes = episode_returns(rows, canary.started_at)
    mine = episodes[episodes["model_version"] == canary.version]["return"].to_numpy(np.float64)
    others = episodes[episodes["model_version"] != canary.version]
    theirs = others["return"].to_numpy(np.float64)
    common = {
        "canary": canary.version,
        "baseline": canary.baseline,
        "baseline_versions": sorted({str(v) for v in others["model_version"]}),
        "share": canary.share,
        "started_at": canary.started_at,
        "canary_episodes": int(mine.size),
        "baseline_episodes": int(theirs.size),
        "canary_mean": float(mine.mean()) if mine.size else None,
        "baseline_mean": float(theirs.mean()) if theirs.size else None,
        "confidence": config.confidence,
    }
    if min(mine.size, theirs.size) < config.min_episodes:
        return CanaryVerdict(
            **common,
            difference=None,
            lower=None,
            upper=None,
            outcome="continue",
            reason=f"too few complete episodes since {canary.started_at:%Y-%m-%d %H:%M:%S} UTC to judge: "
            f"{mine.size} served by the canary and {theirs.size} by the baseline, "
            f"{config.min_episodes} needed each",
        )
    difference, lower, upper = welch_bounds(mine, theirs, config.confidence)
    pct = f"{config.confidence:.0%}"
    measured = (
        f"mean return {mine.mean():.4g} over {mine.size} canary episodes vs {theirs.mean():.4g} over "
        f"{theirs.size} baseline episodes: difference {difference:.4g}, one-sided {pct} Welch bounds "
        f"[{lower:.4g}, {upper:.4g}]"
    )
    if lower > 0:
        outcome, why = "promote", f"better: {measured}"
    elif upper < 0:
        outcome, why = "stop", f"worse: {measured}"
    else:
        outcome, why = "continue", f"not yet resolved: {measured}"
    return CanaryVerdict(
        **common, difference=difference, lower=lower, upper=upper, outcome=outcome, reason=why
    )


def judge_canary(
    registry: ModelRegistry, rows: pd.DataFrame, config: CanaryConfig | None, reports_dir: Path | str
) -> CanaryVerdict | None:
    """Judge the registry's running canary on `rows`, act on the verdict (promote: deploy it; stop:
    end it; continue: leave it) and write it to `reports_dir/<canary>/canary.json`. None when no
    canary runs. A canary started by hand under an environment without `gate.canary` is judged by
    the default `CanaryConfig`."""
    canary = registry.canary()
    if canary is None:
        return None
    verdict = compare_canary(rows, canary, config or CanaryConfig())
    if verdict.outcome != "continue":
        registry.end_canary(
            promote=verdict.outcome == "promote", reason=f"canary {verdict.outcome}: {verdict.reason}"
        )
    out = Path(reports_dir) / canary.version / CANARY_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(verdict.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(out)
    return verdict
