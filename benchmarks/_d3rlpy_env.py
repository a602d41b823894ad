"""A separate, cached venv with d3rlpy 2.8.1 for benchmarks that compare against it.

d3rlpy 2.8.1 pins gymnasium==1.0.0 (the project pins 1.4.0), so it must never enter the
project's venv. This builds `.venv-bench-d3rlpy/` at the repository root once: a fresh venv
with the same CPU torch as the project (installed first, then held by an explicit pin so
d3rlpy's resolver cannot swap it for a CUDA build) and d3rlpy with its dependencies.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

D3RLPY_VERSION = "2.8.1"
VENV_DIR = Path(__file__).resolve().parent.parent / ".venv-bench-d3rlpy"


class BenchmarkEnvError(RuntimeError):
    """The d3rlpy venv could not be built or does not hold the expected versions."""


def _torch_pin() -> str:
    return torch.__version__.split("+")[0]


def _check_script() -> str:
    return (
        "import d3rlpy, torch; "
        f"assert d3rlpy.__version__ == {D3RLPY_VERSION!r}, d3rlpy.__version__; "
        f"assert torch.__version__.split('+')[0] == {_torch_pin()!r}, torch.__version__; "
        "print(d3rlpy.__version__, torch.__version__)"
    )


def venv_python() -> Path:
    return VENV_DIR / "bin" / "python"


def ensure_d3rlpy_venv(verbose: bool = True) -> Path:
    """Return the venv's python, building the venv first if it is missing or incomplete."""
    python = venv_python()
    if python.exists() and _versions_ok(python):
        return python
    if verbose:
        print(f"   building {VENV_DIR} (d3rlpy {D3RLPY_VERSION}, torch {_torch_pin()}; once, a few minutes)")
    _run([sys.executable, "-m", "venv", "--clear", str(VENV_DIR)])
    pip = [str(python), "-m", "pip", "install", "-q"]
    _run([*pip, f"torch=={_torch_pin()}"])
    _run([*pip, f"d3rlpy=={D3RLPY_VERSION}", f"torch=={_torch_pin()}"])
    if not _versions_ok(python):
        raise BenchmarkEnvError(
            f"{VENV_DIR} was built but does not import d3rlpy {D3RLPY_VERSION} with torch {_torch_pin()}; "
            f'delete {VENV_DIR} and rerun, or run `{python} -c "{_check_script()}"` to see why'
        )
    return python


def _versions_ok(python: Path) -> bool:
    done = subprocess.run([str(python), "-c", _check_script()], capture_output=True, text=True)
    return done.returncode == 0


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchmarkEnvError(
            f"building the d3rlpy benchmark venv failed: `{' '.join(command)}` exited {done.returncode}:\n"
            f"{done.stderr[-2000:]}\ncheck network/pip access, delete {VENV_DIR} and rerun"
        )


if __name__ == "__main__":
    print(ensure_d3rlpy_venv())
