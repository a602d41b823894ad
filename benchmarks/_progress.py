"""Progress bars for the long benchmark loops: tqdm on stderr, so stdout keeps only the figures.

A bar is drawn only when stderr is a terminal (`make bench > out.txt 2>&1`, CI and tests get
nothing); `progress=False` on a benchmark's `main`, or tqdm's own `TQDM_DISABLE=1`, turns it off.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def progress_bar(items: Iterable, *, desc: str, enabled: bool = True) -> tqdm:
    """Iterate `items` behind a bar on stderr that is cleared when the loop ends."""
    # Passing `disable` only to turn the bar off leaves tqdm's default, which TQDM_DISABLE sets.
    off = {} if enabled and sys.stderr.isatty() else {"disable": True}
    return tqdm(items, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, **off)


def write(line: str) -> None:
    """Print `line` on stdout from inside a loop with a bar, without tearing the bar."""
    tqdm.write(line, file=sys.stdout)
