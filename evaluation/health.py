"""Logged-data health: checks the timelines must pass before a candidate trained on them may deploy.

`check_data_health` measures, on the timelines a candidate is evaluated on, what the estimates
silently assume of the logs, and returns a `DataHealth` record the CPE report carries
(`CpeReport.data_health`) and the gate reads (`evaluation.gate.gate_model`): every blocking
check that fails rejects the candidate, with its measured value and threshold in the reason.

| check | measures | blocks |
| --- | --- | --- |
| `propensity_range` | share of decisions whose logged propensity is missing, ≤ 0, < `min_propensity` or > 1 (continuous: whose log density is missing or not finite) | yes |
| `propensity_count` | per logging model version, mean 1/μ of the chosen action vs the number of possible actions | no |
| `target_support` | share of the candidate's probability on actions the logger could choose | yes |
| `weight_mean` | mean importance weight ± its standard error: the candidate's mass where the logger gave probability > 0 | no |
| `reward_join_rate` | share of decisions with a reward attributed (`reward_observed`) | yes |
| `missing_feature` | per context feature, share of decisions where it is absent, None or NaN | yes |

What a decision row can and cannot say about the logging distribution μ(·|x): it carries the
chosen action's μ(a|x) only, so Σ_a μ(a|x) = 1 cannot be checked row by row. Two things can:

- In expectation over the logger's own choices, E_μ[1/μ(a|x)] = |{a : μ(a|x) > 0}|, the number of
  actions it gives probability. So per logging model version the mean of 1/μ should not exceed
  the mean number of possible actions. A mean significantly above it (by more than 3 standard
  errors) says the logged propensities are too small for what was chosen (they sum to less than 1)
  or the logger chose actions its `possible_actions` do not list; either inflates every importance
  weight. A mean below it is expected of a logger that gives some offered actions no probability
  (greedy, or exploring a subset), which is legitimate; it cannot be told apart from propensities
  logged too large. This check (`propensity_count`) is reported, not blocking: 1/μ is unbounded,
  so on a night's few hundred decisions its mean and standard error hinge on the few rows with
  small propensities and a 3-standard-error rule is not a calibrated test; and what breaks an
  estimate in the ambiguous direction — the candidate needing actions the logger never takes — is
  what `target_support` blocks on directly.
- A propensity of exactly 1 with several actions possible is a greedy choice: there the logger
  gave every other action probability 0. That is fine for the logger, but the candidate's mass on
  those other actions has no support, and `target_support` counts it so.

Support (`target_support`, discrete and parametric): per decision, the candidate's probability on
the actions the logger could choose — those the row lists in `possible_actions`, or only the
logged one where it was logged with propensity 1 — averaged over decisions. This is exact for
what the logs show and an upper bound on the true support (the logger may give an offered action
probability 0 without the row saying so); `weight_mean` estimates the true one: E_μ[π/μ] =
Σ_{a: μ(a|x) > 0} π(a|x), so the mean weight is an unbiased estimate of the candidate's mass
where the logger acts. It is reported with its standard error, not blocking: a candidate that
favours actions the logger explores rarely (μ > 0, so supported) gets a low sample mean with a
small standard error whenever those rare decisions happen to be absent, so the estimate would
block supported candidates; the report already flags that case on the importance-weighted
estimates (`ips`, `snips`, `pdis`: weights averaging off 1). For continuous actions the weights are kernel-smoothed, so near the
logger's action bounds the kernel's mass outside them lowers the mean too; there is no offered
set to count, so continuous actions have `weight_mean` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from contracts import ActionKind
from contracts.actions import ACTION_LOG_DENSITY_COLUMN

# A diagnostic estimate is off when it sits more than this many standard errors from what it
# should be (as `evaluation.scoring` marks importance weights whose mean is off 1).
_STANDARD_ERRORS = 3.0
_EXAMPLES = 3
# Relative slack for float rounding in comparisons whose exact answer is an equality.
_ROUNDING = 1e-9
_FLOAT32_ROUNDING = 1e-6


class HealthThresholds(BaseModel):
    """What logged data must satisfy; a breach blocks the deploy and names the check."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    max_bad_propensity_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of decisions tolerated whose logged propensity is missing, ≤ 0, below "
        "`min_propensity` or above 1 (continuous: whose log density is missing or not finite). Evaluation "
        "itself refuses any propensity outside (0, 1] whatever this allows: such rows cannot enter an estimator",
    )
    min_propensity: float = Field(
        1e-4,
        ge=0,
        lt=1,
        description="a logged propensity below this counts as out of range (its importance weight could reach "
        "1/min_propensity); not applied to continuous actions, whose densities have no upper or lower bound",
    )
    min_target_support: float = Field(
        0.99,
        ge=0,
        le=1,
        description="share of the candidate's probability mass that must fall on actions the logging policy "
        "could choose: listed in the decision's possible_actions, or the logged action itself where it was "
        "logged with propensity 1 (overlap; discrete and parametric actions)",
    )
    min_reward_join_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of decisions that must have a reward attributed (`reward_observed`); 0 where "
        "rewards arrive for only some decisions by design",
    )
    max_missing_feature_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="per context feature (the normalization spec's, else every name in state_features): share "
        "of decisions where it may be missing (absent, None or NaN)",
    )


class HealthCheckKind(StrEnum):
    """The checks of the table in this module's docstring."""

    PROPENSITY_RANGE = "propensity_range"
    PROPENSITY_COUNT = "propensity_count"
    TARGET_SUPPORT = "target_support"
    WEIGHT_MEAN = "weight_mean"
    REWARD_JOIN_RATE = "reward_join_rate"
    MISSING_FEATURE = "missing_feature"


class HealthCheck(BaseModel):
    """One measured check: its value against its threshold, and a sentence saying what it found."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    check: HealthCheckKind
    subject: str | None = Field(
        None,
        description="what the check is about: the feature (missing_feature) or the logging model version",
    )
    value: float = Field(description="the measured share (or mean, for propensity_count and weight_mean)")
    threshold: float | None = Field(
        description="the bound it is held to (max for propensity_range and missing_feature, min for "
        "target_support and reward_join_rate, the expected value for the diagnostics)"
    )
    standard_error: float | None = Field(None, description="of `value`, for the estimated diagnostics")
    passed: bool
    blocking: bool = Field(description="a failure rejects the candidate at the gate")
    detail: str = Field(description="plain language: what was measured, on what, against which bound")

    @property
    def name(self) -> str:
        return self.check.value if self.subject is None else f"{self.check.value}:{self.subject}"


class DataHealth(BaseModel):
    """Logged-data health of the timelines a candidate was evaluated on (`check_data_health`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    schema_version: Literal[1] = 1
    n_decisions: int
    thresholds: HealthThresholds
    checks: list[HealthCheck]
    not_measured: list[str] = Field(
        default_factory=list, description="checks that could not be measured on these data, each with why"
    )

    @property
    def failures(self) -> list[HealthCheck]:
        """Blocking checks that failed: each rejects the candidate."""
        return [c for c in self.checks if c.blocking and not c.passed]

    @property
    def warnings(self) -> list[HealthCheck]:
        """Diagnostics that are off: reported, not blocking."""
        return [c for c in self.checks if not c.blocking and not c.passed]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True, slots=True)
class TargetOverlap:
    """What the evaluation computed about where the candidate puts its probability, per decision
    (aligned with the rows of the timelines given to `check_data_health`).

    `weights` are the importance weights of the logged actions (kernel-smoothed for continuous
    actions); `offered_mass` is the candidate's probability summed over the row's possible actions
    (discrete, parametric; None for continuous), meaningful where `offered_known` is True (the row
    lists its possible actions).
    """

    weights: np.ndarray
    offered_mass: np.ndarray | None = None
    offered_known: np.ndarray | None = None


def check_data_health(
    timelines: pd.DataFrame,
    thresholds: HealthThresholds,
    kind: ActionKind,
    *,
    overlap: TargetOverlap | None = None,
    feature_names: Sequence[str] | None = None,
) -> DataHealth:
    """Every health check on `timelines` (any row order) logged for actions of `kind`.

    `overlap` (what the evaluation computed, rows aligned with `timelines`) enables the support
    checks; `feature_names` is the list of context features to check (the normalization spec's),
    else every name that appears in `state_features`. A check whose columns are absent is listed
    in `not_measured` instead. Never raises on bad values: measuring them is its job.
    """
    kind = ActionKind(kind)
    frame = timelines.reset_index(drop=True)
    n = len(frame)
    versions = (
        frame["model_version"].astype(str).to_numpy()
        if "model_version" in frame.columns
        else np.full(n, "unknown", dtype=object)
    )
    checks: list[HealthCheck] = []
    not_measured: list[str] = []

    def measure(found: list[HealthCheck] | HealthCheck | str) -> None:
        if isinstance(found, str):
            not_measured.append(found)
        elif isinstance(found, HealthCheck):
            checks.append(found)
        else:
            checks.extend(found)

    if n == 0:
        not_measured.append("every check: the timelines are empty")
        return DataHealth(n_decisions=0, thresholds=thresholds, checks=[], not_measured=not_measured)
    if kind is ActionKind.CONTINUOUS:
        measure(_log_density_range(frame, versions, thresholds))
    else:
        measure(_propensity_range(frame, versions, thresholds))
        measure(_propensity_counts(frame, versions))
    if overlap is None:
        not_measured.append("target_support, weight_mean: the candidate's probabilities were not computed")
    else:
        if kind is not ActionKind.CONTINUOUS:
            measure(_target_support(frame, versions, overlap, thresholds))
        measure(_weight_mean(overlap.weights, kind))
    measure(_reward_join_rate(frame, versions, thresholds))
    measure(_missing_features(frame, versions, feature_names, thresholds))
    return DataHealth(n_decisions=n, thresholds=thresholds, checks=checks, not_measured=not_measured)


def _percent(share: float) -> str:
    """A threshold as people write it: 0.5 → '50%', 0.995 → '99.5%', 0 → '0%'."""
    return f"{share * 100:g}%"


def _worst_version(versions: np.ndarray, per_row: np.ndarray, highest: bool) -> tuple[str, float] | None:
    """(version, mean of `per_row` there) of the version where it is highest (or lowest); None for one version."""
    names = pd.unique(versions)
    if len(names) < 2:
        return None
    means = {str(v): float(per_row[versions == v].mean()) for v in names}
    pick = max(means, key=means.__getitem__) if highest else min(means, key=means.__getitem__)
    return pick, means[pick]


def _row_labels(frame: pd.DataFrame, rows: np.ndarray) -> list[str]:
    picked = frame.iloc[rows[:_EXAMPLES]]
    if "mdp_id" not in frame.columns:
        return [f"row {i}" for i in rows[:_EXAMPLES]]
    if "sequence_number_ordinal" not in frame.columns:
        return [str(m) for m in picked["mdp_id"]]
    return [f"{m}#{s}" for m, s in zip(picked["mdp_id"], picked["sequence_number_ordinal"], strict=True)]


def _share_check(
    check: HealthCheckKind,
    flagged: np.ndarray,
    versions: np.ndarray,
    limit: float,
    what: str,
    *,
    at_most: bool,
    subject: str | None = None,
    extra: str = "",
) -> HealthCheck:
    """A check on the share of decisions `flagged`: at most `limit` (`at_most`) or at least it.
    `what` leads the sentence up to the share ("feature 'age' missing on")."""
    share = float(flagged.mean())
    passed = share <= limit if at_most else share >= limit
    detail = f"{what} {share:.1%} of decisions ({'max' if at_most else 'min'} {_percent(limit)})"
    worst = _worst_version(versions, flagged.astype(np.float64), highest=at_most)
    if worst is not None:
        detail += f"; {worst[1]:.1%} under logging model '{worst[0]}'"
    return HealthCheck(
        check=check,
        subject=subject,
        value=share,
        threshold=limit,
        passed=passed,
        blocking=True,
        detail=detail + extra,
    )


def _propensity_range(
    frame: pd.DataFrame, versions: np.ndarray, thresholds: HealthThresholds
) -> HealthCheck | str:
    def bad(mu: np.ndarray) -> np.ndarray:
        return ~(np.isfinite(mu) & (mu > 0.0) & (mu >= thresholds.min_propensity) & (mu <= 1.0))

    what = f"logged propensity missing, ≤ 0, below {thresholds.min_propensity:g} or above 1 on"
    return _out_of_range(frame, versions, thresholds, "action_probability", bad, what)


def _log_density_range(
    frame: pd.DataFrame, versions: np.ndarray, thresholds: HealthThresholds
) -> HealthCheck | str:
    what = f"logged {ACTION_LOG_DENSITY_COLUMN} missing or not finite on"
    return _out_of_range(
        frame, versions, thresholds, ACTION_LOG_DENSITY_COLUMN, lambda x: ~np.isfinite(x), what
    )


def _out_of_range(
    frame: pd.DataFrame,
    versions: np.ndarray,
    thresholds: HealthThresholds,
    column: str,
    is_bad: Callable[[np.ndarray], np.ndarray],
    what: str,
) -> HealthCheck | str:
    """The propensity-range check on `column` (a propensity or a log density): the share of rows
    `is_bad` flags, with a few examples, against `max_bad_propensity_share`."""
    if column not in frame.columns:
        return f"propensity_range: no {column} column"
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = is_bad(values)
    rows = np.flatnonzero(bad)
    examples = ", ".join(
        f"{label} = {value}"
        for label, value in zip(_row_labels(frame, rows), values[rows[:_EXAMPLES]], strict=True)
    )
    return _share_check(
        HealthCheckKind.PROPENSITY_RANGE,
        bad,
        versions,
        thresholds.max_bad_propensity_share,
        what,
        at_most=True,
        extra=f"; {rows.size} of {len(frame)} decisions, e.g. {examples}" if examples else "",
    )


def _list_lengths(values: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(length, listed) per row of a possible_actions column; None or a non-list counts as not listed."""
    lengths = []
    for value in values:
        lengths.append(len(value) if value is not None and not isinstance(value, (str, float)) else 0)
    out = np.asarray(lengths, dtype=np.float64)
    return out, out > 0


def _mean_and_error(values: np.ndarray) -> tuple[float, float | None]:
    mean = float(values.mean())
    if values.size < 2:
        return mean, None
    return mean, float(values.std(ddof=1) / math.sqrt(values.size))


def _propensity_counts(frame: pd.DataFrame, versions: np.ndarray) -> list[HealthCheck] | str:
    """Per logging model version: mean 1/μ vs the mean number of possible actions (diagnostic)."""
    if "action_probability" not in frame.columns or "possible_actions" not in frame.columns:
        return "propensity_count: no action_probability or possible_actions column"
    mu = pd.to_numeric(frame["action_probability"], errors="coerce").to_numpy(dtype=np.float64)
    sizes, listed = _list_lengths(frame["possible_actions"])
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(mu) & (mu > 0.0) & (mu <= 1.0) & listed
    found: list[HealthCheck] = []
    for version in pd.unique(versions):
        rows = usable & (versions == version)
        if not rows.any():
            continue
        inverse, size = 1.0 / mu[rows], sizes[rows]
        mean_inverse = float(inverse.mean())
        mean_size = float(size.mean())
        _, error = _mean_and_error(inverse - size)
        greedy = int(np.sum((mu[rows] >= 1.0) & (size > 1)))
        excess = mean_inverse - mean_size
        detail = (
            f"logging model '{version}': mean 1/propensity {mean_inverse:.4g}"
            + ("" if error is None else f" ± {error:.2g}")
            + f" vs {mean_size:.4g} possible actions per decision ({int(rows.sum())} decisions)"
        )
        # 1/(1/3) is 3.0000000000000004: an exact logger must not fail on rounding.
        slack = _STANDARD_ERRORS * (error or 0.0) + _ROUNDING * mean_size
        passed = error is None or excess <= slack
        if not passed:
            detail += (
                ": more than the actions on offer, so its logged propensities are too small for what it chose "
                "(they sum to less than 1) or it chose actions its possible_actions do not list; every "
                f"importance weight is inflated, by about {mean_inverse / mean_size:.2f}× on average"
            )
        elif error is not None and -excess > slack:
            detail += (
                ": fewer than on offer, so it gives some offered actions no probability (a greedy or "
                "restricted logger, fine if intended) or logs propensities too large"
            )
        else:
            detail += ": consistent with propensities that sum to 1 over the offered actions"
        if greedy:
            detail += (
                f"; {greedy} decisions log propensity 1 with several actions possible (greedy: the candidate's "
                "mass on the other actions has no support there)"
            )
        found.append(
            HealthCheck(
                check=HealthCheckKind.PROPENSITY_COUNT,
                subject=str(version),
                value=mean_inverse,
                threshold=mean_size,
                standard_error=error,
                passed=passed,
                blocking=False,
                detail=detail,
            )
        )
    if not found:
        return "propensity_count: no decision has both a propensity in (0, 1] and possible actions"
    return found


def _target_support(
    frame: pd.DataFrame, versions: np.ndarray, overlap: TargetOverlap, thresholds: HealthThresholds
) -> HealthCheck | str:
    n = len(frame)
    w = np.asarray(overlap.weights, dtype=np.float64)
    if overlap.offered_mass is None or w.shape != (n,) or "action_probability" not in frame.columns:
        return "target_support: the candidate's probabilities on the offered actions were not computed"
    offered = np.clip(np.asarray(overlap.offered_mass, dtype=np.float64), 0.0, 1.0)
    known = (
        np.ones(n, dtype=bool)
        if overlap.offered_known is None
        else np.asarray(overlap.offered_known, dtype=bool)
    )
    mu = pd.to_numeric(frame["action_probability"], errors="coerce").to_numpy(dtype=np.float64)
    # Logged with propensity 1: the logger gave every other action 0, so its support is the logged
    # action alone, where the candidate's probability is its weight π(a|x)/1.
    greedy = mu >= 1.0
    supported = np.where(greedy, np.clip(w, 0.0, 1.0), np.where(known, offered, 1.0))
    not_offered = float(np.where(~greedy & known, 1.0 - offered, 0.0).mean())
    beside_greedy = float(np.where(greedy, 1.0 - supported, 0.0).mean())
    share = float(supported.mean())
    limit = thresholds.min_target_support
    detail = (
        f"the candidate puts {share:.1%} of its probability on actions the logger could choose "
        f"(min {_percent(limit)}); {not_offered:.1%} on actions the decision did not offer, "
        f"{beside_greedy:.1%} on actions other than one logged with propensity 1 (a greedy choice)"
    )
    worst = _worst_version(versions, supported, highest=False)
    if worst is not None:
        detail += f"; {worst[1]:.1%} under logging model '{worst[0]}'"
    unlisted = int(np.sum(~known & ~greedy))
    if unlisted:
        detail += f"; {unlisted} of {n} decisions list no possible actions (counted as offering every action)"
    return HealthCheck(
        check=HealthCheckKind.TARGET_SUPPORT,
        value=share,
        threshold=limit,
        passed=share >= limit - _FLOAT32_ROUNDING,  # served probabilities are float32
        blocking=True,
        detail=detail,
    )


def _weight_mean(weights: np.ndarray, kind: ActionKind) -> HealthCheck | str:
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or not np.all(np.isfinite(w)):
        return "weight_mean: the importance weights are empty or not finite"
    mean, error = _mean_and_error(w)
    what = "kernel-smoothed importance weights" if kind is ActionKind.CONTINUOUS else "importance weights"
    detail = f"the {what} average {mean:.4g}" + ("" if error is None else f" ± {error:.2g}")
    detail += " (1 when the logger gives probability to every action the candidate takes)"
    passed = error is None or abs(mean - 1.0) <= _STANDARD_ERRORS * error + _ROUNDING
    if not passed and mean < 1.0:
        detail += (
            f": about {1.0 - mean:.0%} of the candidate's mass falls where the logs do not reach (actions the "
            "logger gives no or rarely sampled probability"
            + (
                ", or the kernel's mass beyond the logged actions' bounds"
                if kind is ActionKind.CONTINUOUS
                else ""
            )
            + ")"
        )
    elif not passed:
        detail += ": above 1, so the logged propensities may be too small for what was chosen"
    return HealthCheck(
        check=HealthCheckKind.WEIGHT_MEAN,
        value=mean,
        threshold=1.0,
        standard_error=error,
        passed=passed,
        blocking=False,
        detail=detail,
    )


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(np.isnan(value))
    except (TypeError, ValueError):
        return False


def _observed(value: Any) -> bool:
    return not _is_missing(value) and bool(value)


def _reward_join_rate(
    frame: pd.DataFrame, versions: np.ndarray, thresholds: HealthThresholds
) -> HealthCheck | str:
    if "reward_observed" not in frame.columns:
        return "reward_join_rate: no reward_observed column"
    joined = np.array([_observed(v) for v in frame["reward_observed"]], dtype=bool)
    return _share_check(
        HealthCheckKind.REWARD_JOIN_RATE,
        joined,
        versions,
        thresholds.min_reward_join_rate,
        "reward joined to",
        at_most=False,
    )


def _present_names(value: Any) -> set[str]:
    """Names with a value in one state_features cell (a dict, or Arrow map pairs); None/NaN = missing."""
    if value is None or isinstance(value, float):
        return set()
    items = value.items() if isinstance(value, Mapping) else value
    return {str(name) for name, v in items if not _is_missing(v)}


def _missing_features(
    frame: pd.DataFrame,
    versions: np.ndarray,
    feature_names: Sequence[str] | None,
    thresholds: HealthThresholds,
) -> list[HealthCheck] | str:
    if "state_features" not in frame.columns:
        return "missing_feature: no state_features column"
    present = [_present_names(v) for v in frame["state_features"]]
    if feature_names is None:
        feature_names = sorted(set().union(*present))
    if not feature_names:
        return "missing_feature: no context feature named in state_features or the spec"
    return [
        _share_check(
            HealthCheckKind.MISSING_FEATURE,
            np.array([name not in row for row in present], dtype=bool),
            versions,
            thresholds.max_missing_feature_share,
            f"feature '{name}' missing on",
            at_most=True,
            subject=name,
        )
        for name in feature_names
    ]
