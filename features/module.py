"""`NormalizationModule`: `features.transform.normalize` as a torch module, exportable to ONNX.

Kept apart from `features.transform` so numpy-only users (serving, evaluation) do not import torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from features.spec import (
    ACTION_EPS,
    BOXCOX_MIN_SHIFTED,
    CLIP_LOG_MIN,
    OUTPUT_CLAMP,
    PROBABILITY_EPS,
    FeatureType,
    NormalizationSpec,
)

__all__ = ["NormalizationModule"]

_F32 = np.float32


def _const(values: Sequence[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(list(values), dtype=dtype)


class NormalizationModule(nn.Module):
    """Torch version of `normalize`: float32 [B, F] raw → float32 [B, spec.output_dim].

    Features are grouped by type at construction; forward runs one vectorised op per type and
    reorders the columns with a constant index, so the traced graph has no data-dependent control
    flow and its size does not grow with the number of features.
    """

    def __init__(self, spec: NormalizationSpec) -> None:
        super().__init__()
        self.spec_version = spec.version
        self.n_features = spec.n_features
        self.output_dim = spec.output_dim
        groups: dict[FeatureType, list[int]] = {}
        for j, f in enumerate(spec.features):
            groups.setdefault(f.feature_type, []).append(j)
        self._types = sorted(groups, key=lambda t: t.value)

        # Output column of every (feature, slot) in spec order, and the column each group fills.
        first_column: list[int] = []
        column = 0
        for f in spec.features:
            first_column.append(column)
            column += f.output_width
        produced: list[int] = []  # concatenated group outputs → spec output column

        feats = spec.features
        for kind in self._types:
            idx = groups[kind]
            prefix = f"_{kind.value}"
            if kind is FeatureType.ENUM:
                src = [j for j in idx for _ in feats[j].parameters.possible_values]
                vals = [v for j in idx for v in feats[j].parameters.possible_values]
                self.register_buffer(f"{prefix}_src", _const(src, torch.long), persistent=False)
                self.register_buffer(f"{prefix}_values", _const(vals), persistent=False)
                produced += [first_column[j] + k for j in idx for k in range(feats[j].output_width)]
                continue
            self.register_buffer(f"{prefix}_src", _const(idx, torch.long), persistent=False)
            produced += [first_column[j] for j in idx]
            params = [feats[j].parameters for j in idx]
            if kind in (FeatureType.CONTINUOUS, FeatureType.BOXCOX):
                self.register_buffer(f"{prefix}_mean", _const([p.mean for p in params]), persistent=False)
                self.register_buffer(f"{prefix}_std", _const([p.stddev for p in params]), persistent=False)
            if kind is FeatureType.BOXCOX:
                lams = [float(p.boxcox_lambda) for p in params]
                self.register_buffer(
                    f"{prefix}_shift", _const([p.boxcox_shift for p in params]), persistent=False
                )
                # λ = 0 is the log limit: use λ=1 in the power branch there and select the log branch.
                self.register_buffer(f"{prefix}_lam", _const([lam or 1.0 for lam in lams]), persistent=False)
                self.register_buffer(
                    f"{prefix}_is_log", _const([lam == 0.0 for lam in lams], torch.bool), persistent=False
                )
            if kind is FeatureType.CONTINUOUS_ACTION:
                self.register_buffer(f"{prefix}_lo", _const([p.min_value for p in params]), persistent=False)
                self.register_buffer(f"{prefix}_hi", _const([p.max_value for p in params]), persistent=False)
            if kind is FeatureType.QUANTILE:
                # One entry per quantile segment; a [S, G] matrix sums segments into their feature.
                seg_src, seg_lo, seg_width = [], [], []
                assign = torch.zeros(sum(len(p.quantiles) - 1 for p in params), len(idx))
                s = 0
                for g, (j, p) in enumerate(zip(idx, params, strict=True)):
                    q = np.asarray(p.quantiles, dtype=_F32)
                    for a, b in zip(q[:-1], q[1:], strict=True):
                        seg_src.append(j)
                        seg_lo.append(float(a))
                        seg_width.append(float(b - a))
                        assign[s, g] = float(_F32(1.0 / (len(q) - 1)))
                        s += 1
                self.register_buffer(f"{prefix}_seg_src", _const(seg_src, torch.long), persistent=False)
                self.register_buffer(f"{prefix}_seg_lo", _const(seg_lo), persistent=False)
                self.register_buffer(f"{prefix}_seg_width", _const(seg_width), persistent=False)
                self.register_buffer(f"{prefix}_assign", assign, persistent=False)

        order = [0] * len(produced)
        for position, out_column in enumerate(produced):
            order[out_column] = position
        self.register_buffer("_order", _const(order, torch.long), persistent=False)

    def _group(self, kind: FeatureType, x: torch.Tensor) -> torch.Tensor:
        """Value columns for all features of one type; `x` is [B, F] with missing already 0."""
        b = lambda name: getattr(self, f"_{kind.value}_{name}")  # noqa: E731
        if kind is FeatureType.ENUM:
            return (x.index_select(1, b("src")) == b("values")).to(torch.float32)
        if kind is FeatureType.QUANTILE:
            seg = (x.index_select(1, b("seg_src")) - b("seg_lo")) / b("seg_width")
            return torch.clamp(seg, 0.0, 1.0) @ b("assign")
        v = x.index_select(1, b("src"))
        if kind is FeatureType.BINARY:
            return (v != 0).to(torch.float32)
        if kind is FeatureType.PROBABILITY:
            c = torch.clamp(v, PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
            return torch.log(c) - torch.log(1.0 - c)
        if kind is FeatureType.CONTINUOUS:
            return (v - b("mean")) / b("std")
        if kind is FeatureType.BOXCOX:
            shifted = torch.clamp(v + b("shift"), min=BOXCOX_MIN_SHIFTED)
            power = (torch.pow(shifted, b("lam")) - 1.0) / b("lam")
            return (torch.where(b("is_log"), torch.log(shifted), power) - b("mean")) / b("std")
        if kind is FeatureType.CONTINUOUS_ACTION:
            lo, hi = b("lo"), b("hi")
            y = (v - lo) / (hi - lo) * (2.0 - 2.0 * ACTION_EPS) + (-1.0 + ACTION_EPS)
            return torch.clamp(y, -1.0 + ACTION_EPS, 1.0 - ACTION_EPS)
        if kind is FeatureType.DO_NOT_PREPROCESS:
            return v
        if kind is FeatureType.CLIP_LOG:
            return torch.log(torch.clamp(v, min=CLIP_LOG_MIN))
        raise AssertionError(kind)  # pragma: no cover

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        present = torch.isfinite(raw)
        x = torch.where(present, raw, torch.zeros_like(raw))
        parts = []
        for kind in self._types:  # static: fixed by the spec at construction
            y = torch.clamp(self._group(kind, x), -OUTPUT_CLAMP, OUTPUT_CLAMP)
            mask = present.index_select(1, getattr(self, f"_{kind.value}_src"))
            parts.append(torch.where(mask, y, torch.zeros_like(y)))
        values = torch.cat(parts, dim=1).index_select(1, self._order)
        return torch.cat([values, present.to(torch.float32)], dim=1)
