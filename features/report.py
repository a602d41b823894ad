"""The feature report: one HTML page per spec that a person can skim after a refresh.

Per feature: a PNG with the histogram of raw values and of normalized values, the chosen type and
why, fit statistics, drift (PSI) against the previous spec, and any type change or parameter shift
from the diff. Written next to the spec (`report_<version>/index.html`); matplotlib is imported
lazily and used without pyplot (no global backend state).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from features.drift import drift_level, population_stability
from features.identify import numeric_values
from features.spec import FeatureNormalization, NormalizationSpec, SpecDiff
from features.transform import normalize

__all__ = ["write_feature_report"]

_PLOT_SAMPLE = 20_000
_COLORS = {"stable": "#2e7d32", "moderate": "#ef6c00", "major": "#c62828", "n/a": "#757575"}


def _plot(feature: FeatureNormalization, values: np.ndarray, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 2.6), dpi=80)
    raw_ax, norm_ax = fig.subplots(1, 2)
    if values.size:
        raw_ax.hist(values, bins=50, color="#607d8b")
        one = NormalizationSpec.create([feature.model_copy(update={"stats": None})])
        normalized = normalize(one, values.astype(np.float32)[:, None])[:, : feature.output_width]
        if feature.output_width > 1:  # ENUM: share of rows per one-hot column
            labels = [f"{v:g}" for v in feature.parameters.possible_values or []]
            norm_ax.bar(labels, normalized.mean(axis=0), color="#3f51b5")
            norm_ax.set_ylabel("share")
        else:
            norm_ax.hist(normalized[:, 0], bins=50, color="#3f51b5")
    else:
        raw_ax.text(0.5, 0.5, "no present values", ha="center", va="center")
    raw_ax.set_title(f"{feature.name}: raw ({values.size} sampled)", fontsize=9)
    norm_ax.set_title(f"normalized ({feature.feature_type.value})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def write_feature_report(
    spec: NormalizationSpec,
    frame: pd.DataFrame,
    directory: str | Path,
    *,
    previous: NormalizationSpec | None = None,
    diff: SpecDiff | None = None,
    seed: int = 0,
) -> Path:
    """Write `report_<version>/index.html` (+ one PNG per feature) under `directory`; returns the page."""
    out = Path(directory) / f"report_{spec.version}"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    notes: dict[str, list[str]] = {}
    if diff is not None:
        for change in diff.type_changes:
            notes.setdefault(change.name, []).append(f"TYPE CHANGE {change.old.value} → {change.new.value}")
        for shift in diff.parameter_shifts:
            notes.setdefault(shift.name, []).append(f"{shift.parameter}: {shift.detail}")
    rows, sections = [], []
    for feature in spec.features:
        values = np.empty(0)
        if feature.name in frame.columns:
            values = numeric_values(feature.name, frame[feature.name])
            values = values[np.isfinite(values)]
        if values.size > _PLOT_SAMPLE:
            values = rng.choice(values, _PLOT_SAMPLE, replace=False)
        png = f"{feature.name}.png"
        _plot(feature, values, out / png)
        old = previous.feature(feature.name) if previous and feature.name in previous.feature_names else None
        psi = population_stability(old.stats if old else None, values)
        level = drift_level(psi)
        stats = feature.stats
        name = html.escape(feature.name)
        note = "<br>".join(html.escape(n) for n in notes.get(feature.name, []))
        rows.append(
            f"<tr><td><a href='#{name}'>{name}</a></td><td>{feature.feature_type.value}</td>"
            f"<td style='color:{_COLORS[level]}'>{_fmt(psi)} ({level})</td>"
            f"<td>{_fmt(stats.missing_share if stats else None)}</td><td class='n'>{note}</td></tr>"
        )
        facts = (
            f"count {stats.count}, missing {stats.missing_share:.1%}, min {_fmt(stats.min)}, "
            f"max {_fmt(stats.max)}, mean {_fmt(stats.mean)}, std {_fmt(stats.std)}"
            if stats
            else "no statistics"
        )
        parameters = html.escape(feature.parameters.model_dump_json(exclude_none=True))
        sections.append(
            f"<h2 id='{name}'>{name} — {feature.feature_type.value}</h2>"
            f"<p><b>why:</b> {html.escape(feature.reason or 'not recorded')}</p>"
            f"<p><b>fit:</b> {facts}<br><b>parameters:</b> <code>{parameters}</code><br>"
            f"<b>drift vs previous spec:</b> PSI {_fmt(psi)} ({level})"
            + (f"<br><b class='n'>{note}</b>" if note else "")
            + f"</p><img src='{png}' alt='histograms of {name}'>"
        )
    summary = html.escape(diff.summary()) if diff is not None else "first spec: nothing to compare with"
    span = spec.data_range
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>features {spec.version}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 8px;text-align:left}}
.n{{color:#c62828}}pre{{background:#f5f5f5;padding:8px}}</style></head><body>
<h1>Normalization spec {spec.version}</h1>
<p>created {spec.created_at:%Y-%m-%d %H:%M:%S} UTC from {span.rows} rows ({span.start} → {span.end});
previous spec: {previous.version if previous else "none"}</p>
<pre>{summary}</pre>
<table><tr><th>feature</th><th>type</th><th>PSI</th><th>missing</th><th>changes</th></tr>{"".join(rows)}</table>
{"".join(sections)}
</body></html>"""
    page_path = out / "index.html"
    page_path.write_text(page, encoding="utf-8")
    return page_path
