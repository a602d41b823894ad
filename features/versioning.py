"""Publishing a new spec: diff it against the previous one, report, and block it until acknowledged.

A refresh fits a spec every night. `publish_spec` diffs it against the previous spec, writes the
HTML feature report, and — when the config says so (`block_on_type_change`,
`block_on_parameter_shift`) — refuses a spec that changes what models see until a person has
looked and acknowledged its version (`streamrl features ack <version>`). A refused spec is saved
under `pending/` so it can be inspected; acknowledging publishes it. Only published specs sit in
the specs folder, so the previous spec of the next refresh is always one that was accepted.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from features.identify import NormalizationConfig
from features.spec import NormalizationSpec, SpecDiff, SpecError, diff_specs, load_spec, save_spec

__all__ = [
    "PublishedSpec",
    "SpecAcknowledgement",
    "SpecAcknowledgements",
    "SpecChangeBlockedError",
    "acknowledge_spec",
    "blocking_changes",
    "latest_spec",
    "load_acknowledgements",
    "publish_spec",
]

ACK_FILE = "acknowledged.json"
PENDING_DIR = "pending"


class SpecChangeBlockedError(SpecError):
    """A new spec changes types or parameters and the config requires an acknowledgement first."""

    def __init__(self, message: str, *, diff: SpecDiff, pending_path: Path, report_path: Path | None) -> None:
        super().__init__(message, path=pending_path)
        self.diff = diff
        self.pending_path = pending_path
        self.report_path = report_path


class SpecAcknowledgement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    acknowledged_at: datetime
    note: str = ""


class SpecAcknowledgements(BaseModel):
    """`acknowledged.json` in the specs folder: spec versions a person accepted despite changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    acknowledged: list[SpecAcknowledgement] = Field(default_factory=list)

    @property
    def versions(self) -> set[str]:
        return {a.version for a in self.acknowledged}


@dataclass(frozen=True)
class PublishedSpec:
    spec: NormalizationSpec
    path: Path
    diff: SpecDiff | None
    report_path: Path | None


def latest_spec(directory: str | Path) -> NormalizationSpec | None:
    """The most recently created published spec in `directory` (None if there is none).

    A corrupt spec file raises `SpecError` naming it rather than being skipped: skipping would
    silently diff against an older spec.
    """
    paths = sorted(Path(directory).glob("normalization_*.json"))
    specs = [load_spec(p) for p in paths]
    return max(specs, key=lambda s: s.created_at, default=None)


def load_acknowledgements(directory: str | Path) -> SpecAcknowledgements:
    path = Path(directory) / ACK_FILE
    if not path.exists():
        return SpecAcknowledgements()
    try:
        return SpecAcknowledgements.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise SpecError(
            f"acknowledgement file {path} is not valid ({exc}); fix it or delete it and acknowledge again",
            path=path,
        ) from exc


def acknowledge_spec(directory: str | Path, version: str, note: str = "") -> Path:
    """Accept a refused (pending) spec: publish it and record the acknowledgement.

    Publishing it makes it the previous spec of the next refresh, so the acknowledged change is
    not reported again even when the next fit (on newer data) has a different version.
    """
    directory = Path(directory)
    name = f"normalization_{version}.json"
    pending_path = directory / PENDING_DIR / name
    if pending_path.exists():
        save_spec(load_spec(pending_path), directory)
        pending_path.unlink()
    elif not (directory / name).exists():
        pending = sorted(
            p.stem.removeprefix("normalization_") for p in (directory / PENDING_DIR).glob("*.json")
        )
        raise SpecError(
            f"no spec {version!r} in {directory} or its {PENDING_DIR}/ folder; pending specs: {pending or 'none'}",
            path=directory,
        )
    acks = load_acknowledgements(directory)
    entry = SpecAcknowledgement(version=version, acknowledged_at=datetime.now(UTC), note=note)
    updated = SpecAcknowledgements(acknowledged=[*acks.acknowledged, entry])
    target = directory / ACK_FILE
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ack-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(updated.model_dump_json(indent=2))
    os.replace(tmp, target)
    return target


def blocking_changes(diff: SpecDiff | None, config: NormalizationConfig) -> list[str]:
    """The changes in `diff` that the config says must be acknowledged (empty: publish freely)."""
    if diff is None:
        return []
    problems: list[str] = []
    if config.block_on_type_change:
        problems += [f"type change {c.name}: {c.old.value} → {c.new.value}" for c in diff.type_changes]
        problems += [f"feature added: {n}" for n in diff.added] + [
            f"feature removed: {n}" for n in diff.removed
        ]
        problems += ["feature order changed"] if diff.order_changed else []
    if config.block_on_parameter_shift:
        problems += [f"{s.name}.{s.parameter}: {s.detail}" for s in diff.parameter_shifts]
    return problems


def publish_spec(
    spec: NormalizationSpec,
    directory: str | Path,
    config: NormalizationConfig,
    *,
    previous: NormalizationSpec | None = None,
    frame: pd.DataFrame | None = None,
) -> PublishedSpec:
    """Diff, report (when `frame`, the fitted values, is given) and save `spec`, or refuse it.

    Raises `SpecChangeBlockedError` (spec saved under `pending/`, report written) when the diff
    holds changes the config blocks on and `spec.version` has not been acknowledged.
    """
    directory = Path(directory)
    diff = diff_specs(previous, spec, shift_threshold=config.shift_threshold) if previous else None
    report_path = None
    if config.report and frame is not None:
        from features.report import write_feature_report

        report_path = write_feature_report(
            spec, frame, directory, previous=previous, diff=diff, seed=config.seed
        )
    problems = blocking_changes(diff, config)
    if problems and spec.version not in load_acknowledgements(directory).versions:
        pending = save_spec(spec, directory / PENDING_DIR)
        raise SpecChangeBlockedError(
            f"new normalization spec {spec.version} changes what models see compared with "
            f"{previous.version if previous else '?'}: {'; '.join(problems)}. It was not published "
            f"(saved to {pending}; report {report_path or 'disabled'}). Review it, then run "
            f"`streamrl features ack {spec.version}` and refresh again.",
            diff=diff,  # type: ignore[arg-type]
            pending_path=pending,
            report_path=report_path,
        )
    path = save_spec(spec, directory)
    (directory / PENDING_DIR / path.name).unlink(missing_ok=True)
    return PublishedSpec(spec=spec, path=path, diff=diff, report_path=report_path)
