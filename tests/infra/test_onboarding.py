"""docs/onboarding.md, executed literally: every ```bash block, in order, from an empty folder.

The tutorial's app (a coupon shop) is one the other tests never see: a manifest and a client
written from the document alone. Only the addresses differ from a reader's machine: the stack
runs on free ports (STREAMRL_* variables, which the document's commands honour) so it never
meets the test session's stack.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "onboarding.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_the_onboarding_tutorial_runs_as_written(tmp_path: Path) -> None:
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 8, "the tutorial lost its steps"
    broker_port, redis_port = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "STREAMRL_BROKER_PORT": str(broker_port),
        "STREAMRL_REDIS_PORT": str(redis_port),
        "STREAMRL_STATE_DIR": str(tmp_path / "stack"),
        "BROKER": f"127.0.0.1:{broker_port}",
    }
    outputs: list[str] = []
    try:
        for number, block in enumerate(blocks, 1):
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=420,
            )
            assert done.returncode == 0, (
                f"block {number} failed:\n{block}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            )
            outputs.append(done.stdout)
    finally:
        subprocess.run(
            ["bash", "-c", "streamrl down"], cwd=tmp_path, env=env, capture_output=True, timeout=120
        )

    days = [
        json.loads(line) for out in outputs for line in out.splitlines() if line.startswith('{"shoppers"')
    ]
    assert len(days) == 2
    day0, day1 = days
    assert set(day0["served_by"]) == {"day0-uniform"}
    deployed = [v for v in day1["served_by"] if v != "day0-uniform"]
    assert deployed, f"day 1 was not served by a model: {day1}"
    # The shop's exact values (docs): uniform coupons earn 0.352 per shopper, the best policy 0.409.
    # 4,000 shoppers put a standard error of about 0.008 on each day's mean.
    assert day1["mean_reward"] > day0["mean_reward"] + 0.02, days
    statuses = [out for out in outputs if out.startswith("app coupons")]
    assert statuses and f"model      {deployed[0]}" in statuses[-1]
    assert "scheduler  running" in statuses[-1] and "serving    running" in statuses[-1]
    assert (tmp_path / "runs" / "apps" / "coupons" / "reports" / deployed[0] / "cpe_report.json").is_file()
    stopped = subprocess.run(
        ["bash", "-c", "streamrl status"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert "STOPPED" not in stopped.stdout and "running" not in stopped.stdout  # down stopped everything
    # With the broker down, what needs it is unknown, not "none" (and asked in 1 s, not a minute).
    assert "dead letters (last hour): unknown (broker unreachable)" in stopped.stdout, stopped.stdout
