"""The normalization spec: per feature, how raw values become model inputs.

The spec is baked into every exported model, so it crosses file boundaries and must be
versioned. Its `version` is derived from a hash of its content: two fits that produce the
same parameters share a version, and any change to a type or parameter produces a new one.
`diff_specs` makes type changes and large parameter shifts visible instead of letting a
regenerated spec silently change what a model sees (Horizon/ReAgent issue 192).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contracts import StreamrlError

SPEC_SCHEMA_VERSION = 1

#: Every normalized value column is clamped to [-OUTPUT_CLAMP, OUTPUT_CLAMP].
OUTPUT_CLAMP = 11.5
#: PROBABILITY inputs are clamped to [PROBABILITY_EPS, 1 - PROBABILITY_EPS] before the logit.
PROBABILITY_EPS = 1e-5
#: CONTINUOUS_ACTION maps [min, max] to [-1 + ACTION_EPS, 1 - ACTION_EPS].
ACTION_EPS = 1e-6
#: BOXCOX inputs are floored here after the shift so the power stays defined.
BOXCOX_MIN_SHIFTED = 1e-6
#: CLIP_LOG computes log(max(x, CLIP_LOG_MIN)) (so 0 and negatives map to log(1e-5) ≈ -11.5).
CLIP_LOG_MIN = 1e-5


class SpecError(StreamrlError):
    """A normalization spec file is missing, corrupt or not a valid spec."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class FeatureType(StrEnum):
    """How one feature is transformed. Values are stable: they are stored in spec files."""

    BINARY = "binary"
    PROBABILITY = "probability"
    CONTINUOUS = "continuous"
    ENUM = "enum"
    BOXCOX = "boxcox"
    QUANTILE = "quantile"
    CONTINUOUS_ACTION = "continuous_action"
    DO_NOT_PREPROCESS = "do_not_preprocess"
    CLIP_LOG = "clip_log"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NormalizationParameters(_Model):
    """Parameters of the transform; which fields are used depends on the feature type."""

    mean: float = 0.0
    stddev: float = 1.0
    min_value: float | None = None
    max_value: float | None = None
    possible_values: list[float] | None = None
    boxcox_lambda: float | None = None
    boxcox_shift: float | None = None
    quantiles: list[float] | None = None

    @field_validator("stddev")
    @classmethod
    def _positive_stddev(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"stddev must be finite and > 0, got {value}")
        return value


class FeatureStats(_Model):
    """What the fit saw for one feature (for humans and for drift checks, not used by transforms)."""

    count: int = Field(ge=0, description="rows with a present (finite) value")
    missing_share: float = Field(ge=0.0, le=1.0)
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    bin_edges: list[float] | None = Field(
        None, description="interior cut points (deciles of the sample); drift (PSI) is measured on them"
    )
    bin_shares: list[float] | None = Field(None, description="share of present values per bin (len(edges)+1)")

    @model_validator(mode="after")
    def _bins_match(self) -> FeatureStats:
        if (self.bin_edges is None) != (self.bin_shares is None) or (
            self.bin_edges is not None and len(self.bin_shares) != len(self.bin_edges) + 1
        ):
            raise ValueError("bin_shares must have one more entry than bin_edges (or both be absent)")
        return self


class FeatureNormalization(_Model):
    """One feature: its name, identified (or forced) type, transform parameters and fit stats."""

    name: str = Field(min_length=1)
    feature_type: FeatureType
    parameters: NormalizationParameters = Field(default_factory=NormalizationParameters)
    stats: FeatureStats | None = None
    reason: str | None = Field(None, description="why this type was chosen (for people; not hashed)")

    @model_validator(mode="after")
    def _parameters_fit_type(self) -> FeatureNormalization:
        p = self.parameters
        if self.feature_type is FeatureType.ENUM and not p.possible_values:
            raise ValueError(f"feature {self.name!r}: ENUM needs a non-empty possible_values list")
        if self.feature_type is FeatureType.ENUM and len(set(p.possible_values)) != len(p.possible_values):
            raise ValueError(
                f"feature {self.name!r}: ENUM possible_values has duplicates: {p.possible_values}"
            )
        if self.feature_type is FeatureType.BOXCOX and (p.boxcox_lambda is None or p.boxcox_shift is None):
            raise ValueError(f"feature {self.name!r}: BOXCOX needs boxcox_lambda and boxcox_shift")
        if self.feature_type is FeatureType.QUANTILE:
            q = p.quantiles or []
            if len(q) < 2 or any(b <= a for a, b in zip(q, q[1:], strict=False)):
                raise ValueError(
                    f"feature {self.name!r}: QUANTILE needs ≥ 2 strictly increasing quantiles, got {q}"
                )
        if self.feature_type is FeatureType.CONTINUOUS_ACTION and (
            p.min_value is None or p.max_value is None or not p.max_value > p.min_value
        ):
            raise ValueError(
                f"feature {self.name!r}: CONTINUOUS_ACTION needs min_value < max_value, "
                f"got {p.min_value}, {p.max_value}"
            )
        return self

    @property
    def output_width(self) -> int:
        """Number of value columns this feature produces (one-hot width for ENUM, else 1)."""
        if self.feature_type is FeatureType.ENUM:
            return len(self.parameters.possible_values or [])
        return 1


class DataRange(_Model):
    """Which data a spec (or model) was fitted on."""

    start: datetime | None = None
    end: datetime | None = None
    rows: int = 0


def _content_sha256(features: list[FeatureNormalization]) -> str:
    """Hash of what changes a model's inputs: names, order, types, parameters (not stats/time)."""
    content = [f.model_dump(mode="json", include={"name", "feature_type", "parameters"}) for f in features]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def spec_version_for(features: list[FeatureNormalization]) -> str:
    """The version string a spec with these features carries, e.g. 'spec-1a2b3c4d5e6f'."""
    return f"spec-{_content_sha256(features)[:12]}"


class NormalizationSpec(_Model):
    """Ordered per-feature normalization; model input order is `feature_names`.

    Build one with `NormalizationSpec.create(...)` (or `fit_normalization`) so the version is
    derived from the content; a spec whose version does not match its content is rejected.
    """

    schema_version: Literal[1] = SPEC_SCHEMA_VERSION
    version: str
    created_at: datetime
    data_range: DataRange = Field(default_factory=DataRange)
    features: list[FeatureNormalization] = Field(min_length=1)

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must be timezone-aware UTC")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _consistent(self) -> NormalizationSpec:
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate feature names: {duplicates}")
        expected = spec_version_for(self.features)
        if self.version != expected:
            raise ValueError(
                f"version {self.version!r} does not match the content (expected {expected!r}); "
                "the file was edited or corrupted — refit the spec instead of editing it"
            )
        return self

    @classmethod
    def create(
        cls,
        features: list[FeatureNormalization],
        data_range: DataRange | None = None,
        created_at: datetime | None = None,
    ) -> NormalizationSpec:
        """A spec over `features` (in model input order) with its content-derived version."""
        return cls(
            version=spec_version_for(features),
            created_at=created_at or datetime.now(UTC),
            data_range=data_range or DataRange(),
            features=features,
        )

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def output_dim(self) -> int:
        """Width of the normalized output: all value columns plus one presence column per feature."""
        return sum(f.output_width for f in self.features) + len(self.features)

    @property
    def content_sha256(self) -> str:
        """Full hash behind `version` (what model metadata records as the spec hash)."""
        return _content_sha256(self.features)

    def feature(self, name: str) -> FeatureNormalization:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"feature {name!r} is not in spec {self.version} (features: {self.feature_names})")


def spec_file_name(spec: NormalizationSpec) -> str:
    return f"normalization_{spec.version}.json"


def save_spec(spec: NormalizationSpec, directory: str | Path) -> Path:
    """Write the spec as JSON into `directory` atomically; the file name carries the version."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / spec_file_name(spec)
    payload = spec.model_dump_json(indent=2)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".spec-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def load_spec(path: str | Path) -> NormalizationSpec:
    """Read and validate a spec file; any problem raises `SpecError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError(
            f"normalization spec {path} does not exist; fit one with fit_normalization", path=path
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"normalization spec {path} cannot be read: {exc}", path=path) from exc
    try:
        return NormalizationSpec.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise SpecError(
            f"normalization spec {path} is not a valid spec (schema_version {SPEC_SCHEMA_VERSION}): {problems}. "
            "Refit and save it again rather than editing it by hand.",
            path=path,
        ) from exc


class TypeChange(_Model):
    name: str
    old: FeatureType
    new: FeatureType


class ParameterShift(_Model):
    name: str
    parameter: str
    old: float | list[float] | None
    new: float | list[float] | None
    detail: str


class SpecDiff(_Model):
    """What changed between two specs. Anything here changes what a model sees for the same input."""

    old_version: str
    new_version: str
    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    order_changed: bool = False
    type_changes: list[TypeChange] = Field(default_factory=list)
    parameter_shifts: list[ParameterShift] = Field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        return bool(
            self.added or self.removed or self.order_changed or self.type_changes or self.parameter_shifts
        )

    @property
    def is_input_compatible(self) -> bool:
        """Same names, order and types: a model trained on the old spec gets inputs of the same shape."""
        return not (self.added or self.removed or self.order_changed or self.type_changes)

    def summary(self) -> str:
        if not self.has_changes:
            return f"{self.old_version} → {self.new_version}: no material changes"
        lines = [f"{self.old_version} → {self.new_version}:"]
        lines += [f"  added feature {n}" for n in self.added]
        lines += [f"  removed feature {n}" for n in self.removed]
        if self.order_changed:
            lines.append("  feature order changed")
        lines += [f"  TYPE CHANGE {c.name}: {c.old.value} → {c.new.value}" for c in self.type_changes]
        lines += [f"  {s.name}.{s.parameter}: {s.detail}" for s in self.parameter_shifts]
        return "\n".join(lines)


def _parameter_shifts(
    old: FeatureNormalization, new: FeatureNormalization, threshold: float
) -> list[ParameterShift]:
    """Large shifts of a same-typed feature's parameters (relative to the old scale)."""
    po, pn = old.parameters, new.parameters
    shifts: list[ParameterShift] = []
    name = old.name
    if old.feature_type in (FeatureType.CONTINUOUS, FeatureType.BOXCOX):
        moved = abs(pn.mean - po.mean) / po.stddev
        if moved > threshold:
            shifts.append(
                ParameterShift(
                    name=name, parameter="mean", old=po.mean, new=pn.mean,
                    detail=f"{po.mean:.6g} → {pn.mean:.6g} ({moved:.2f} old stddevs)",
                )
            )  # fmt: skip
        ratio = pn.stddev / po.stddev
        if ratio > 1 + threshold or ratio < 1 / (1 + threshold):
            shifts.append(
                ParameterShift(
                    name=name, parameter="stddev", old=po.stddev, new=pn.stddev,
                    detail=f"{po.stddev:.6g} → {pn.stddev:.6g} (×{ratio:.2f})",
                )
            )  # fmt: skip
    if (
        old.feature_type is FeatureType.BOXCOX
        and abs((pn.boxcox_lambda or 0) - (po.boxcox_lambda or 0)) > threshold
    ):
        shifts.append(
            ParameterShift(
                name=name, parameter="boxcox_lambda", old=po.boxcox_lambda, new=pn.boxcox_lambda,
                detail=f"{po.boxcox_lambda:.4g} → {pn.boxcox_lambda:.4g}",
            )
        )  # fmt: skip
    if old.feature_type is FeatureType.ENUM and po.possible_values != pn.possible_values:
        shifts.append(
            ParameterShift(
                name=name, parameter="possible_values", old=po.possible_values, new=pn.possible_values,
                detail=f"{po.possible_values} → {pn.possible_values} (one-hot columns change)",
            )
        )  # fmt: skip
    if old.feature_type is FeatureType.QUANTILE:
        qo, qn = po.quantiles or [], pn.quantiles or []
        span = (qo[-1] - qo[0]) or 1.0
        moved = max((abs(a - b) for a, b in zip(qo, qn, strict=False)), default=0.0) / span
        if len(qo) != len(qn) or moved > threshold:
            shifts.append(
                ParameterShift(
                    name=name, parameter="quantiles", old=qo, new=qn,
                    detail=f"{len(qo)} → {len(qn)} boundaries, max move {moved:.2f} of the old range",
                )
            )  # fmt: skip
    if old.feature_type is FeatureType.CONTINUOUS_ACTION and (
        po.min_value != pn.min_value or po.max_value != pn.max_value
    ):
        shifts.append(
            ParameterShift(
                name=name, parameter="range", old=[po.min_value, po.max_value], new=[pn.min_value, pn.max_value],
                detail=f"[{po.min_value}, {po.max_value}] → [{pn.min_value}, {pn.max_value}]",
            )
        )  # fmt: skip
    return shifts


def diff_specs(old: NormalizationSpec, new: NormalizationSpec, *, shift_threshold: float = 0.5) -> SpecDiff:
    """Report added/removed features, order and TYPE changes, and parameter shifts above the threshold.

    `shift_threshold` is relative: a mean moving more than that many old stddevs, a stddev ratio
    outside [1/(1+t), 1+t], a Box-Cox λ moving more than t, quantiles moving more than t of the
    old range. Callers decide what to do; nothing here is silently accepted.
    """
    old_names, new_names = old.feature_names, new.feature_names
    common = [n for n in old_names if n in set(new_names)]
    type_changes: list[TypeChange] = []
    shifts: list[ParameterShift] = []
    for name in common:
        fo, fn = old.feature(name), new.feature(name)
        if fo.feature_type is not fn.feature_type:
            type_changes.append(TypeChange(name=name, old=fo.feature_type, new=fn.feature_type))
        else:
            shifts.extend(_parameter_shifts(fo, fn, shift_threshold))
    return SpecDiff(
        old_version=old.version,
        new_version=new.version,
        added=[n for n in new_names if n not in set(old_names)],
        removed=[n for n in old_names if n not in set(new_names)],
        order_changed=common != [n for n in new_names if n in set(old_names)],
        type_changes=type_changes,
        parameter_shifts=shifts,
    )
