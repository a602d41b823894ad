"""Processes SIGKILLed at random points around the registry (real processes): a refresh while it
registers and deploys — the registry never lists or points at a partial model, and the next
register and deploy complete — and serving during a hot swap — restarted, it serves the pointer."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import free_port, start_serving
from tests.serving.conftest import register_model
from trainer import ModelRegistry

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]

# Registers and deploys models one after another, printing each deployed version, until killed.
_REFRESHER = """
import itertools, sys
sys.path.insert(0, sys.argv[2])
from tests.helpers import free_port, start_serving
from tests.serving.conftest import register_model
from trainer import ModelRegistry
registry = ModelRegistry(sys.argv[1])
for seed in itertools.count(int(sys.argv[3])):
    version = register_model(registry, seed=seed)
    registry.deploy(version, reason="refresh")
    print(version, flush=True)
"""


def _check(registry: ModelRegistry) -> None:
    """Every listed version verifies (sha256, graph), and the pointer names one of them."""
    versions = registry.list_versions()
    for version in versions:
        registry.get(version)
    state = registry.deployment_state()  # parses: never half-written
    assert state.current is None or state.current in versions, (state.current, versions)
    if state.current is not None:
        registry.verify_servable(state.current)


def test_registry_survives_refreshes_killed_at_random_points(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    rng = np.random.default_rng(5)
    partial = 0
    for round_ in range(4):
        process = subprocess.Popen(
            [sys.executable, "-c", _REFRESHER, str(registry.root), str(ROOT), str(1000 * round_)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert process.stdout is not None
        process.stdout.readline()  # one complete refresh, then kill somewhere in the next ones
        time.sleep(float(rng.uniform(0.0, 0.3)))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL, process.stderr.read()
        _check(registry)
        listed = set(registry.list_versions())
        partial += sum(1 for d in registry.models_dir.iterdir() if d.is_dir() and d.name not in listed)
    # a model folder claimed but not finished is never listed; the next refresh completes anyway
    version = register_model(registry, seed=99_999)
    registry.deploy(version, reason="after the kills")
    assert registry.deployed() == version
    _check(registry)
    print(f"{len(registry.list_versions())} versions, {partial} partial folders left by kills")


def test_serving_killed_during_a_hot_swap_serves_the_deployed_pointer_on_restart(
    config, registry: ModelRegistry, tmp_path: Path
) -> None:
    first, second = register_model(registry, seed=71), register_model(registry, seed=72)
    registry.deploy(first, reason="first")
    served = config.model_copy(update={"port": free_port(), "poll_interval_s": 0.05})
    url = f"http://127.0.0.1:{served.port}"

    def version() -> str | None:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).json().get("model_version")
        except httpx.TransportError:
            return None

    def wait_for(wanted: str, process: subprocess.Popen) -> None:
        deadline = time.monotonic() + 120
        while version() != wanted:
            assert process.poll() is None, (tmp_path / "serving.log").read_text()
            assert time.monotonic() < deadline, f"serving never served {wanted}"
            time.sleep(0.05)

    process = start_serving(served, tmp_path / "serving.log")
    try:
        wait_for(first, process)
        registry.deploy(second, reason="swap")
        time.sleep(0.06)  # about one poll: the kill lands while the worker loads and probes the model
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    restarted = start_serving(served, tmp_path / "serving.log")
    try:
        wait_for(second, restarted)
        decided = httpx.post(
            f"{url}/v1/act",
            json={"entity_id": "u", "context_features": {"f_age": 0.3}, "possible_actions": ["email"]},
            timeout=10,
        )
        assert decided.status_code == 200 and decided.json()["model_version"] == second
    finally:
        restarted.terminate()
        restarted.wait(timeout=60)
