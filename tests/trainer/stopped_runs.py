"""A per-step hook that stops a training run at a chosen step, as a kill would (for resume tests)."""

from __future__ import annotations

from collections.abc import Callable


class Killed(Exception):
    """Raised by `kill_at`'s hook; the run stops with its checkpoints as they are on disk."""


def kill_at(step: int) -> Callable[[int], None]:
    """An `on_step` hook that raises `Killed` right after global step `step`."""

    def hook(global_step: int) -> None:
        if global_step == step:
            raise Killed(f"killed after step {global_step}")

    return hook
