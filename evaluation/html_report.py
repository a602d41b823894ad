"""The CPE report for people: one self-contained HTML page, and TensorBoard scalars.

The page leads with the verdict, then the logged-data health checks, every estimator's
normalized value with its interval, the importance-weight distribution and the per-action
comparison, then the tables behind the plots. Plots are PNGs embedded inline, so the file can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np

from evaluation.estimators import Estimate
from evaluation.health import DataHealth, HealthCheck
from evaluation.report import CpeReport

HTML_FILE = "report.html"


def _png(figure) -> str:  # noqa: ANN001 - a matplotlib Figure; imported lazily
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(report: CpeReport) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plots: dict[str, str] = {}
    names = list(report.estimates)
    est = [report.estimates[n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    y = np.arange(len(names))
    centers = np.array([_number(e.normalized) for e in est])
    low = np.array([_number(e.normalized_ci_low) for e in est])
    high = np.array([_number(e.normalized_ci_high) for e in est])
    ok = np.isfinite(centers) & np.isfinite(low) & np.isfinite(high)
    # Interval and point drawn apart: a percentile interval need not contain its point estimate
    # (the refitted models can shift every resample one way), which an error bar cannot show.
    ax.hlines(y[ok], low[ok], high[ok], color="C0")
    ax.plot(low[ok], y[ok], "|", high[ok], y[ok], "|", color="C0", markersize=8)
    ax.plot(centers[ok], y[ok], "o", color="C0")
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    labels = [
        n + ("" if e.reliable else " (unreliable)" if e.available else " (not computable)")
        for n, e in zip(names, est, strict=True)
    ]
    ax.set_yticks(y, labels)
    ax.set_xlabel("value relative to the logged policy (1.0 = as good)")
    ax.set_title("Estimates and intervals per estimator")
    plots["estimates"] = _png(fig)

    hist = report.weight_histogram
    if hist is not None and hist.counts:
        fig, ax = plt.subplots(figsize=(7, 3))
        edges = np.asarray(hist.edges)
        ax.bar(edges[:-1], hist.counts, width=np.diff(edges), align="edge", edgecolor="black")
        ax.set_xscale("log")
        ax.set_xlabel(
            "kernel-smoothed weight K_h(π − a)/μ of the logged action"
            if report.kernel is not None
            else "importance weight π/μ of the logged action"
        )
        ax.set_ylabel("decisions")
        ax.set_title(f"Weight distribution ({hist.zeros} decisions with weight 0)")
        plots["weights"] = _png(fig)

    if report.actions:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
        x = np.arange(len(report.actions))
        labels = [a.action for a in report.actions]
        left.bar(x - 0.2, [a.logged_share for a in report.actions], 0.4, label="logged")
        left.bar(x + 0.2, [a.target_share for a in report.actions], 0.4, label="new policy")
        left.set_xticks(x, labels)
        left.set_title("How often each action is taken")
        left.legend()
        logged = [
            a.logged_mean_reward if a.logged_mean_reward is not None else math.nan for a in report.actions
        ]
        right.bar(x - 0.2, logged, 0.4, label="logged mean reward")
        right.bar(
            x + 0.2, [a.model_mean_reward for a in report.actions], 0.4, label="reward model, all contexts"
        )
        right.set_xticks(x, labels)
        right.set_title("Value of each action")
        right.legend()
        plots["actions"] = _png(fig)

    if report.action_dimensions:
        dims = report.action_dimensions
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(dims) + 2), 3))
        x = np.arange(len(dims))
        ax.bar(x - 0.2, [d.logged_mean for d in dims], 0.4, yerr=[d.logged_std for d in dims], label="logged")
        ax.bar(
            x + 0.2, [d.target_mean for d in dims], 0.4, yerr=[d.target_std for d in dims], label="new policy"
        )
        ax.set_xticks(x, [d.name for d in dims])
        ax.set_title(
            "Mean ± std per action dimension" if report.kernel else "Chosen candidates' features, mean ± std"
        )
        ax.legend()
        plots["action_dimensions"] = _png(fig)
    return plots


def _number(value: float | None) -> float:
    return math.nan if value is None else value


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if math.isfinite(value) else str(value)


def _estimate_row(name: str, e: Estimate) -> str:
    """One row of the estimates table; an estimator not computable for these data says so and why."""
    esc = html.escape
    max_weight = (
        _fmt(e.max_weight)
        if e.max_weight is not None or e.max_log_weight is None
        else f"exp({e.max_log_weight:.1f})"
    )
    if not e.available:
        numbers = '<td colspan="4">not computable for these data</td>'
        status = "NOT COMPUTABLE (by design, not a data error; does not block the gate): "
        status += esc("; ".join(e.warnings))
    else:
        numbers = (
            f"<td>{_fmt(e.value)}</td><td>{_fmt(e.ci_low)} – {_fmt(e.ci_high)}</td>"
            f"<td>{_fmt(e.normalized, 3)}×</td><td>{_fmt(e.normalized_ci_low, 3)} – {_fmt(e.normalized_ci_high, 3)}</td>"
        )
        status = "yes" if e.reliable else "NO: " + esc("; ".join(e.warnings))
    return (
        f"<tr><td>{esc(name)}</td>{numbers}<td>{_fmt(e.effective_sample_size, 5)}</td>"
        f"<td>{_fmt(e.pareto_k, 2)}</td><td>{max_weight}</td><td>{_fmt(e.clipped_share, 3)}</td><td>{status}</td></tr>"
    )


def _health_row(check: HealthCheck) -> str:
    esc = html.escape
    if check.passed:
        status = "pass"
    else:
        status = "FAIL (blocks the deploy)" if check.blocking else "off (reported, not blocking)"
    error = "" if check.standard_error is None else f" ± {_fmt(check.standard_error, 2)}"
    return (
        f"<tr><td>{esc(check.name)}</td><td>{_fmt(check.value)}{error}</td><td>{_fmt(check.threshold)}</td>"
        f"<td>{status}</td><td>{esc(check.detail)}</td></tr>"
    )


def _health_table(health: DataHealth | None) -> str:
    """The logged-data health checks (`evaluation.health`); empty for reports written before them."""
    if health is None:
        return ""
    esc = html.escape
    rows = "".join(_health_row(c) for c in health.checks)
    skipped = "".join(f"<li>{esc(n)}</li>" for n in health.not_measured)
    outcome = (
        "every blocking check passed"
        if health.passed
        else f"{len(health.failures)} blocking check(s) failed: the model is not deployed"
    )
    return (
        f"<h2>Logged-data health</h2><p>{health.n_decisions} decisions; {outcome}.</p>"
        "<table><tr><th>check</th><th>measured</th><th>threshold</th><th>status</th><th>detail</th></tr>"
        f"{rows}</table>" + (f"<p>Not measured:</p><ul>{skipped}</ul>" if skipped else "")
    )


def render_html(
    report: CpeReport,
    decision_summary: str | None = None,
    reasons: list[str] | None = None,
    notes: list[str] | None = None,
) -> str:
    """The report as one HTML page; `decision_summary`/`reasons`/`notes` come from the gate when known."""
    esc = html.escape
    plots = _plots(report)
    rows = "".join(_estimate_row(name, e) for name, e in report.estimates.items())
    action_rows = "".join(
        f"<tr><td>{esc(a.action)}</td><td>{a.logged_share:.3f}</td><td>{a.target_share:.3f}</td>"
        f"<td>{_fmt(a.logged_mean_reward)}</td><td>{_fmt(a.model_mean_reward)}</td></tr>"
        for a in report.actions
    )
    dimension_rows = "".join(
        f"<tr><td>{esc(d.name)}</td><td>{_fmt(d.logged_mean)}</td><td>{_fmt(d.logged_std)}</td>"
        f"<td>{_fmt(d.target_mean)}</td><td>{_fmt(d.target_std)}</td></tr>"
        for d in report.action_dimensions
    )
    dimension_table = (
        "<h2>Action dimensions</h2><table><tr><th>dimension / candidate feature</th><th>logged mean</th>"
        f"<th>logged std</th><th>new policy mean</th><th>new policy std</th></tr>{dimension_rows}</table>"
        if dimension_rows
        else ""
    )
    action_table = (
        "<h2>Actions</h2><table><tr><th>action</th><th>logged share</th><th>new policy share</th>"
        f"<th>logged mean reward</th><th>reward model mean</th></tr>{action_rows}</table>"
        if action_rows
        else ""
    )
    kernel = report.kernel
    kernel_text = (
        ""
        if kernel is None
        else f"<p>Continuous actions: weights are kernel-smoothed (Kallus &amp; Zhou 2018), {esc(kernel.kernel)} "
        f"kernel, bandwidth {esc(', '.join(_fmt(h) for h in kernel.bandwidth))} by the rule {esc(kernel.rule)}, "
        f"{kernel.target_samples} draws of the new policy per decision; effective sample size of the weights "
        f"{_fmt(kernel.effective_sample_size, 5)} of {kernel.n} decisions.</p>"
    )
    images = "".join(f'<p><img alt="{esc(k)}" src="data:image/png;base64,{v}"></p>' for k, v in plots.items())
    reason_list = "".join(f"<li>{esc(r)}</li>" for r in reasons or [])
    note_list = "".join(f"<li>{esc(n)}</li>" for n in notes or [])
    warning_list = "".join(f"<li>{esc(w)}</li>" for w in report.warnings)
    fqe = report.fqe
    headline = report.headline_estimate
    bound_rows = "".join(
        f"<tr><td>{esc(b.method.value)}</td><td>{esc(b.estimator)}</td><td>{_fmt(b.lower)}</td>"
        f"<td>{_fmt(b.normalized_lower, 3)}×</td><td>{'yes' if b.guaranteed else 'no'}</td><td>{esc(b.description)}</td></tr>"
        for b in report.bounds
    )
    bounds_table = (
        "<h2>High-confidence lower bounds</h2><table><tr><th>method</th><th>on</th><th>lower bound</th>"
        f"<th>normalized</th><th>guaranteed</th><th>assumes</th></tr>{bound_rows}</table>"
        if bound_rows
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CPE report {esc(report.model_version)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child{{text-align:left}}
.verdict{{font-size:1.2em;padding:.6em;background:#f4f4f4;border-left:4px solid #444}}</style></head><body>
<h1>Counterfactual evaluation of model {esc(report.model_version)}</h1>
<p class="verdict">{esc(decision_summary or report.verdict)}</p>
{f"<p>Gate reasons (blocking):</p><ul>{reason_list}</ul>" if reason_list else ""}
{f"<p>Not computable for these data (reported, not blocking):</p><ul>{note_list}</ul>" if note_list else ""}
<p>{esc(report.verdict)}</p>
{f"<p>Warnings:</p><ul>{warning_list}</ul>" if warning_list else ""}
<p>Data: {report.n_decisions} decisions in {report.n_episodes} episodes logged by
{esc(", ".join(report.logged_policy_versions))} ({esc(str(report.data_start))} to {esc(str(report.data_end))}).
Logged policy: {_fmt(report.logged_value)} mean reward per decision, {_fmt(report.logged_episode_value)}
discounted return per episode (γ = {report.gamma}); episodes of up to {report.max_episode_length} decisions,
so the problem is treated as {esc(report.problem.replace("_", "-"))}. The gate judges <b>{esc(report.headline)}</b>
(normalized lower bound {_fmt(headline.normalized_ci_low, 3)}×) — {esc(report.headline_reason)}.</p>
<p>Intervals: {report.estimates[report.headline].bootstrap_samples} bootstrap resamples of whole episodes, each
refitting the reward model and FQE (cross-fitted within the resample), so they hold the models' sampling error
as well as the rows'. An estimate marked not reliable says why its interval cannot be trusted to cover.</p>
{_health_table(report.data_health)}
{bounds_table}
<p>How to read it: 1.0× means "as good as the logged policy" (normalized = 1 + (value − logged)/|logged|, so
above 1 is better also when rewards are costs). One-step estimators (dm … switch_dr) value a
single decision; sequential ones (pdis … magic, fqe) value a whole episode. An estimator is only as good as
its effective sample size: far below the number of decisions, the new policy acts unlike the logged one.
Pareto k̂ says how heavy the weights' tail is: above 0.5 their variance is infinite, a few samples decide
the value, and the interval is not to be trusted whatever the effective sample size.</p>
{kernel_text}
{images}
<h2>Estimates</h2>
<table><tr><th>estimator</th><th>value</th><th>interval</th><th>normalized</th><th>normalized interval</th>
<th>ESS</th><th>Pareto k̂</th><th>max weight</th><th>clipped share</th><th>reliable</th></tr>{rows}</table>
{action_table}
{dimension_table}
<h2>Models behind DM/DR and the sequential estimators</h2>
<p>Reward model ({esc(report.reward_model.model_type)}, {report.reward_model.folds}-fold cross-fitted):
held-out RMSE {_fmt(report.reward_model.rmse)}, R² {_fmt(report.reward_model.r2, 3)}.
{"" if fqe is None else f"FQE ({esc(fqe.model_type)}, {fqe.iterations} iterations): held-out Bellman RMSE {_fmt(fqe.bellman_rmse)}."}
</p>
<p><small>created {esc(str(report.created_at))}</small></p></body></html>
"""


def save_html_report(
    report: CpeReport,
    directory: Path | str,
    decision_summary: str | None = None,
    reasons: list[str] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write `directory/report.html` and return its path."""
    path = Path(directory) / HTML_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_html(report, decision_summary, reasons, notes), encoding="utf-8")
    tmp.replace(path)
    return path


def write_tensorboard_scalars(report: CpeReport, log_dir: Path | str, step: int = 0) -> Path:
    """`cpe/<estimator>/{value,normalized,ci_low,ci_high,ess,pareto_k}`, `cpe/logged_value` and, for continuous
    actions, `cpe/kernel/{ess,bandwidth_<j>}` under `log_dir`."""
    from tensorboardX import SummaryWriter  # imports torch (~3 s): only when asked for

    log_dir = Path(log_dir)
    with SummaryWriter(str(log_dir)) as writer:
        writer.add_scalar("cpe/logged_value", report.logged_value, step)
        writer.add_scalar("cpe/reward_model_rmse", report.reward_model.rmse, step)
        for name, e in report.estimates.items():
            if not e.available:
                continue  # not computable for these data: no number to plot
            writer.add_scalar(f"cpe/{name}/value", e.value, step)
            writer.add_scalar(f"cpe/{name}/normalized", e.normalized, step)
            writer.add_scalar(f"cpe/{name}/ci_low", e.ci_low, step)
            writer.add_scalar(f"cpe/{name}/ci_high", e.ci_high, step)
            if e.effective_sample_size is not None:
                writer.add_scalar(f"cpe/{name}/ess", e.effective_sample_size, step)
            if e.pareto_k is not None:
                writer.add_scalar(f"cpe/{name}/pareto_k", e.pareto_k, step)
        if report.kernel is not None:
            writer.add_scalar("cpe/kernel/ess", report.kernel.effective_sample_size, step)
            for j, h in enumerate(report.kernel.bandwidth):
                writer.add_scalar(f"cpe/kernel/bandwidth_{j}", h, step)
    return log_dir
