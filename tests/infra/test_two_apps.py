"""Two example apps at once on one stack, through `streamrl up`, for two refresh cycles each.

Run as a user would: `streamrl up` with both example manifests, each app's own simulator (which
talks HTTP and Kafka only) for a day of uniform exploration, the schedulers' row-triggered
refreshes, a day served by the deployed models, a second refresh, `streamrl status` and
`streamrl down`. The changes to the examples' manifests are for time only: a 4 s attribution
window and 2 s idle timeout instead of 30 s and 5 s (an episode's timeline row is there seconds
after its chunk or click), 50 bootstrap resamples and 15 epochs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from infra.scheduler import read_scheduler_state
from stream import load_timelines
from tests.helpers import free_port
from trainer import ModelRegistry

ROOT = Path(__file__).resolve().parents[2]
APPS = {"video_bitrate": ROOT / "apps" / "video_bitrate", "recommender": ROOT / "apps" / "recommender"}
DECISIONS = 1500  # one day per app: the manifests refresh every 1,500 new timeline rows


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "STREAMRL_BROKER_PORT": str(free_port()),
        "STREAMRL_REDIS_PORT": str(free_port()),
        "STREAMRL_STATE_DIR": str(tmp_path / "stack"),
    }


def run(args: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 300) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def simulate(
    app: str, manifest: Path, env: dict[str, str], cwd: Path, seed: int, decisions: int = DECISIONS
) -> dict:
    spec = yaml.safe_load(manifest.read_text())
    out = run(
        [
            sys.executable,
            str(APPS[app] / "simulator.py"),
            "--url",
            f"http://127.0.0.1:{spec['serving']['port']}",
            "--bootstrap",
            f"127.0.0.1:{env['STREAMRL_BROKER_PORT']}",
            "--decisions",
            str(decisions),
            "--seed",
            str(seed),
            "--manifest",
            str(manifest),
        ],
        env,
        cwd,
    )
    return json.loads(out.strip().splitlines()[-1])


def wait_for_refreshes(run_dir: Path, count: int, timeout_s: float) -> None:
    """Until the app's scheduler has finished `count` refreshes that trained a candidate."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(ModelRegistry(run_dir / "registry").list_versions()) >= count:
            state = read_scheduler_state(run_dir)
            if state is not None and state.phase.value == "waiting" and state.last_refresh is not None:
                return
        time.sleep(2)
    state = read_scheduler_state(run_dir)
    log = (run_dir / "logs" / "scheduler.log").read_text()[-3000:]
    raise AssertionError(
        f"{run_dir.name}: {count} refreshes did not finish in {timeout_s}s; state {state}\n{log}"
    )


def test_two_apps_share_a_stack_and_each_learns_its_own_loop(
    tmp_path: Path, stack_env: dict[str, str]
) -> None:
    config_path = tmp_path / "environment.yaml"
    config_path.write_text(yaml.safe_dump({"schema_version": 1, "apps_dir": str(tmp_path / "apps")}))
    manifests = {}
    for app, folder in APPS.items():
        spec = yaml.safe_load((folder / "manifest.yaml").read_text())
        spec["reward"].update(attribution_window_s=4, mdp_idle_timeout_s=2)
        spec["gate"]["bootstrap_samples"] = 50  # and a lighter refresh: 2 cores run both apps' loops
        spec["trainer"]["num_epochs"] = 15
        manifests[app] = tmp_path / f"{app}.yaml"
        manifests[app].write_text(yaml.safe_dump(spec))
    run_dirs = {app: tmp_path / "apps" / app for app in APPS}
    try:
        up = run(
            ["streamrl", "up", *map(str, manifests.values()), "--config", str(config_path)],
            stack_env,
            tmp_path,
        )
        assert all(f"/v1/apps/{app}/act" in up for app in APPS), up

        days: dict[str, list[dict]] = {app: [] for app in APPS}
        for cycle in (1, 2):
            for app in APPS:  # the apps' days overlap in time: one stack, both loops at once
                days[app].append(simulate(app, manifests[app], stack_env, tmp_path, seed=cycle))
            for app in APPS:
                wait_for_refreshes(run_dirs[app], cycle, timeout_s=300)
        for app in APPS:  # a short third day (no refresh), served by what the second refresh left deployed
            days[app].append(simulate(app, manifests[app], stack_env, tmp_path, seed=3, decisions=500))

        status = run(["streamrl", "status", "--config", str(config_path)], stack_env, tmp_path)
    finally:
        subprocess.run(
            ["streamrl", "down", "--config", str(config_path)],
            cwd=tmp_path,
            env=stack_env,
            capture_output=True,
        )

    for app in APPS:
        day0, *served_days = days[app]
        assert set(day0["model_versions"]) == {"day0-uniform"}, day0
        for day in served_days:
            assert "day0-uniform" not in day["model_versions"], f"{app}: no model served: {day}"
            # Each deployed model beats the day-0 policy on the same day's contexts; exact values from
            # the simulator's world (expected reward of what was served vs uniform random on them).
            gap = day["oracle_reward"] - day["uniform_reward"]
            assert day["expected_reward"] > day["uniform_reward"] + 0.3 * gap, (app, day)
            # Realized reward too, against what uniform realized on day 0.
            assert day["realized_reward"] > day0["realized_reward"], (app, day0, day)

    # Each app's timelines, models and reports stay its own.
    video = load_timelines(run_dirs["video_bitrate"] / "timelines")
    recommender = load_timelines(run_dirs["recommender"] / "timelines")
    assert len(video) == len(recommender) == 2 * DECISIONS + 500
    assert set(video["action_kind"]) == {"discrete"} and set(recommender["action_kind"]) == {"parametric"}
    assert not set(video["request_id"]) & set(recommender["request_id"])
    assert {a for actions in video["possible_actions"] for a in actions} == {
        "360p",
        "480p",
        "720p",
        "1080p",
        "2160p",
    }
    for app, run_dir in run_dirs.items():
        versions = ModelRegistry(run_dir / "registry").list_versions()
        assert len(versions) == 2, (app, versions)  # two refresh cycles, one candidate each
        assert {p.name for p in (run_dir / "reports").iterdir() if p.is_dir()} == set(versions)
        assert f"app {app}:" in status
