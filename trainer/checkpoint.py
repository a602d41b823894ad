"""Training checkpoints: plain state dicts, written atomically, read back with `weights_only=True`.

A checkpoint holds tensors, numbers, strings, lists and dicts only — never pickled objects —
so loading one cannot run code. Each carries the fingerprint of the run that wrote it (config,
actions, normalization spec, data), and a run refuses to resume from a checkpoint whose
fingerprint differs: silently continuing someone else's run is worse than starting over.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from features import NormalizationSpec
from trainer.errors import TrainerError

# 2: every family's learner state under "learner" (format 1 DQN checkpoints kept it at the top level).
CHECKPOINT_FORMAT = 2
_PREFIX = "checkpoint-"
_SUFFIX = ".pt"
_REQUIRED_KEYS = ("format", "fingerprint", "fingerprint_parts", "global_step")
# Config fields that do not change the math: raising `num_epochs` continues a finished run.
_SAME_MATH_FIELDS = {"num_epochs", "num_threads", "device"}


class CheckpointConfig(BaseModel):
    """Where and how often to checkpoint; `resume` picks up the newest checkpoint in `dir`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    dir: Path
    interval_steps: int = Field(
        200, ge=1, description="optimizer steps between checkpoints (and every epoch end)"
    )
    keep: int = Field(2, ge=1, description="newest checkpoints kept; older ones are deleted")
    resume: bool = True


class CheckpointError(TrainerError):
    """A checkpoint that cannot be read, or that belongs to a different run."""

    def __init__(self, message: str, *, path: Path, differing: list[str] | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.differing = differing or []


def run_fingerprint(parts: dict[str, str]) -> str:
    """sha256 over the named parts of a run; equal fingerprints mean the same math from the same data."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def fingerprint_parts(
    config: BaseModel,
    spec: NormalizationSpec,
    data: Sequence[torch.Tensor],
    *,
    actions: Sequence[str] | None = None,
    action_spec: NormalizationSpec | None = None,
) -> dict[str, str]:
    """What must match to resume a run, by name (so a mismatch can say which part differs).

    The algorithm config minus `num_epochs`, `num_threads` and `device`; the actions (discrete
    kinds) or the action features' spec (parametric); the normalization spec; the training tensors.
    """
    parts = {
        "algorithm_config": json.dumps(
            config.model_dump(mode="json", exclude=_SAME_MATH_FIELDS), sort_keys=True
        ),
        "normalization_spec_sha256": spec.content_sha256,
        "data_sha256": tensor_digest(*data),
    }
    if actions is not None:
        parts["actions"] = json.dumps(list(actions))
    if action_spec is not None:
        parts["action_normalization_spec_sha256"] = action_spec.content_sha256
    return parts


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 of tensors' bytes: a cheap identity for the training data."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(config: CheckpointConfig, state: dict[str, Any]) -> Path:
    """Write `state` as `checkpoint-<global_step>.pt` via a temporary file and rename.

    A process killed mid-write leaves only a stray temporary file, never a torn checkpoint.
    """
    missing = [key for key in _REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint state lacks keys {missing}; this is a bug", path=config.dir)
    config.dir.mkdir(parents=True, exist_ok=True)
    path = config.dir / f"{_PREFIX}{int(state['global_step']):010d}{_SUFFIX}"
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    for old in list_checkpoints(config.dir)[: -config.keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"{_PREFIX}*{_SUFFIX}"))


def load_checkpoint(path: Path, fingerprint_parts: dict[str, str]) -> dict[str, Any]:
    """Read one checkpoint (no code execution) and check it was written by the same run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "unreadable"
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded with weights_only=True ({type(exc).__name__}: {exc}); "
            "delete it to resume from an older one",
            path=path,
        ) from exc
    if not isinstance(state, dict) or any(key not in state for key in _REQUIRED_KEYS):
        raise CheckpointError(
            f"{path} is not a streamrl checkpoint (expected keys {_REQUIRED_KEYS})", path=path
        )
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format']}, this code reads format {CHECKPOINT_FORMAT}; "
            "start fresh with another checkpoint.dir (or checkpoint.resume: false)",
            path=path,
        )
    if state["fingerprint"] != run_fingerprint(fingerprint_parts):
        saved = state["fingerprint_parts"]
        differing = sorted(
            k for k in set(saved) | set(fingerprint_parts) if saved.get(k) != fingerprint_parts.get(k)
        )
        details = "; ".join(
            f"{k}: checkpoint {str(saved.get(k))[:120]!r} vs now {str(fingerprint_parts.get(k))[:120]!r}"
            for k in differing
        )
        raise CheckpointError(
            f"checkpoint {path} was written by a different run ({details}); restore the original config "
            f"and data, or start fresh with another checkpoint.dir (or checkpoint.resume: false)",
            path=path,
            differing=differing,
        )
    return state


def load_latest_checkpoint(
    config: CheckpointConfig, fingerprint_parts: dict[str, str]
) -> dict[str, Any] | None:
    """The newest checkpoint in `config.dir`, or None when there is none (a fresh run)."""
    found = list_checkpoints(config.dir)
    return load_checkpoint(found[-1], fingerprint_parts) if found else None
