"""The progress bars training loops share: tqdm on stderr, for a person at a terminal.

A bar is drawn only when stderr is a terminal, so logs, CI and pytest's captured output get
nothing. `enabled=False` turns it off (processes other than rank 0 under torchrun), and so does
tqdm's own `TQDM_DISABLE=1` in the environment.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

from tqdm import tqdm


def epoch_bar(epochs: range, *, desc: str, enabled: bool = True) -> tqdm:
    """Iterate `epochs` behind a bar counting up to `epochs.stop` (a resumed run starts part-way)."""
    return _bar(epochs, total=epochs.stop, initial=epochs.start, desc=desc, unit="epoch", enabled=enabled)


def step_bar(*, total: int, initial: int, desc: str, unit: str, enabled: bool = True) -> tqdm:
    """A bar the loop advances itself with `bar.update(n)` (a `with` block closes it)."""
    return _bar(None, total=total, initial=initial, desc=desc, unit=unit, enabled=enabled)


def show_metrics(bar: tqdm, metrics: Mapping[str, float], names: tuple[str, ...]) -> None:
    """Show the latest `names` (those present) beside the bar, without the `train/` prefix."""
    bar.set_postfix(
        {name.removeprefix("train/"): f"{metrics[name]:.4g}" for name in names if name in metrics},
        refresh=False,
    )


def _bar(iterable: Iterable | None, *, total: int, initial: int, desc: str, unit: str, enabled: bool) -> tqdm:
    # Passing `disable` only to turn the bar off leaves tqdm's default, which TQDM_DISABLE sets.
    off = {} if enabled and sys.stderr.isatty() else {"disable": True}
    return tqdm(
        iterable,
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        **off,
    )
