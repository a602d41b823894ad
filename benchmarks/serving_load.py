"""Serving at volume: `/v1/act` and `/v1/act/batch` under wrk, with a hot swap during the run.

Starts a real local stack (Tansu broker + redis-server on free ports, under a temporary folder),
registers and deploys a small linear discrete ONNX model, pushes online features for `--entities`
entities through Feast into Redis, then runs the real `streamrl serve --config FILE` (the launch
`streamrl up` uses) with the raw Redis reader, decision logging on and `serving.workers` worker
processes. wrk (installed with apt-get when missing) drives it over `--connections` keep-alive
connections with a Lua script that POSTs a random entity's body per request:

1. reference: `/healthz` (the HTTP stack alone, no features, model or log) and `/v1/act` over
   one connection (latency without queueing);
2. `/v1/act` for `--duration-s`; halfway, a second model is deployed and every worker swaps to it;
3. `/v1/act/batch` with `--batch` requests per call.

"failed" counts non-2xx answers and socket errors (connect, read, write, timeout) of runs 2 and 3;
a 503 `DecisionQueueFullError` (the decision log cannot keep up, see docs/serving.md) is one.
batch_decisions_per_s counts decisions answered 2xx only.
The last line printed is one JSON object: rps, p50_ms, p99_ms (of `/v1/act` with the swap), failed
(runs 2 and 3) and batch_decisions_per_s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

FEATURES = ["f_age", "f_clicks", "f_hour"]
ACTIONS = ["email", "push", "none"]

# wrk: one body per entity, picked at random per request; `done` prints the figures as JSON.
_LUA = """
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
wrk.headers["Content-Type"] = "application/json"
request = function()
  if "%(method)s" == "GET" then return wrk.format("GET", "%(path)s") end
  return wrk.format("POST", "%(path)s", nil, bodies[math.random(#bodies)])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d, '
    .. '"connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("   wrk not found: apt-get install -y wrk", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is still missing after apt-get install -y wrk")
    return found


def _linear_q_onnx(seed: int) -> bytes:
    """Q = nan→0(features) @ W + b, impossible actions -inf, plus softmax probabilities."""
    from onnx import TensorProto, helper, numpy_helper

    from trainer.artifact import FEATURES_INPUT, MASK_INPUT, PROBS_OUTPUT, Q_OUTPUT

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(len(FEATURES), len(ACTIONS))).astype(np.float32)
    bias = rng.normal(size=len(ACTIONS)).astype(np.float32)
    nodes = [
        helper.make_node("IsNaN", [FEATURES_INPUT], ["is_nan"]),
        helper.make_node("Where", ["is_nan", "zero", FEATURES_INPUT], ["filled"]),
        helper.make_node("MatMul", ["filled", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["q_all"]),
        helper.make_node("Greater", [MASK_INPUT, "half"], ["possible"]),
        helper.make_node("Where", ["possible", "q_all", "neg_inf"], [Q_OUTPUT]),
        helper.make_node("Softmax", [Q_OUTPUT], [PROBS_OUTPUT], axis=1),
    ]
    initializers = [
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(bias, "b"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
        numpy_helper.from_array(np.array(-np.inf, dtype=np.float32), "neg_inf"),
    ]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "linear_q",
        [
            value(FEATURES_INPUT, TensorProto.FLOAT, ["batch", len(FEATURES)]),
            value(MASK_INPUT, TensorProto.FLOAT, ["batch", len(ACTIONS)]),
        ],
        [
            value(Q_OUTPUT, TensorProto.FLOAT, ["batch", len(ACTIONS)]),
            value(PROBS_OUTPUT, TensorProto.FLOAT, ["batch", len(ACTIONS)]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _register(registry, seed: int) -> str:  # registry: trainer.ModelRegistry
    from trainer.policy import SoftmaxExploration

    metadata = registry.register(
        _linear_q_onnx(seed),
        feature_names=FEATURES,
        actions=ACTIONS,
        algorithm="linear_test",
        exploration=SoftmaxExploration(temperature=1.0, epsilon=0.1),
    )
    return metadata.version


def _environment_yaml(root: Path, broker_port: int, redis_port: int, serving_port: int, workers: int) -> Path:
    import yaml

    config = {
        "schema_version": 1,
        "run_dir": str(root / "run"),
        "stack": {
            "host": "127.0.0.1",
            "broker_port": broker_port,
            "redis_port": redis_port,
            "state_dir": str(root / "stack"),
        },
        "feature_store": {
            "project": "serving_load",
            "feature_names": FEATURES,
            "online_reader": {"type": "redis"},
        },
        "serving": {"port": serving_port, "poll_interval_s": 0.2, "seed": 1},
    }
    if workers != 1:
        config["serving"]["workers"] = workers
    path = root / "environment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _push_features(feature_config, entities: int) -> None:
    import pandas as pd

    from features.store import build_feature_store, push_context_features

    store = build_feature_store(feature_config)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "entity_id": [f"user-{i}" for i in range(entities)],
            "event_timestamp": [pd.Timestamp.now(tz="UTC")] * entities,
            "f_age": rng.uniform(18, 80, entities),
            "f_clicks": rng.poisson(3, entities).astype(float),
            "f_hour": rng.integers(0, 24, entities).astype(float),
        }
    )
    push_context_features(store, frame, offline=False)


def _get_json(url: str, timeout_s: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (a local URL)
        return json.loads(response.read())


def _healthz_version(url: str) -> str | None:
    try:
        return _get_json(f"{url}/healthz").get("model_version")
    except OSError:
        return None


def _wait(what: str, check, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"serving exited with {process.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s:.0f} s")
        time.sleep(0.1)


def _all_workers_serve(url: str, version: str, probes: int = 40) -> bool:
    """Every answer of `probes` /healthz calls (new connections: spread over the workers) says `version`."""
    return all(_healthz_version(url) == version for _ in range(probes))


def _wrk(
    wrk: str,
    url: str,
    path: str,
    bodies: Path,
    scratch: Path,
    connections: int,
    threads: int,
    duration_s: float,
) -> dict:
    script = scratch / f"wrk_{path.strip('/').replace('/', '_')}_{connections}.lua"
    method = "GET" if path == "/healthz" else "POST"
    script.write_text(_LUA % {"bodies": bodies, "path": path, "method": method})
    command = [
        wrk,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no figures:\n{done.stdout}\n{done.stderr}")
    figures = json.loads(line[len("WRK_JSON ") :])
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["failed"] = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
    figures["ok_rps"] = (figures["requests"] - figures["failed"]) / (figures["duration_us"] / 1e6)
    return figures


def _show(label: str, figures: dict, per_request: int = 1) -> None:
    extra = f" = {figures['ok_rps'] * per_request:,.0f} decisions/s answered 2xx" if per_request > 1 else ""
    print(
        f"   {label:<44} {figures['rps']:>8,.0f} req/s{extra}  p50 {figures['p50_us'] / 1000:6.2f} ms  "
        f"p99 {figures['p99_us'] / 1000:6.2f} ms  max {figures['max_us'] / 1000:7.1f} ms  "
        f"failed {figures['failed']}",
        flush=True,
    )


def _bodies(scratch: Path, entities: int, batch: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)

    def one(i: int) -> dict:
        return {
            "entity_id": f"user-{i}",
            "context_features": {"f_hour": float(rng.integers(0, 24))},
            "possible_actions": ACTIONS,
        }

    single, batched = scratch / "act.jsonl", scratch / "act_batch.jsonl"
    single.write_text("".join(json.dumps(one(i)) + "\n" for i in range(entities)))
    lines = [
        json.dumps({"requests": [one(int(j)) for j in rng.integers(0, entities, batch)]}) for _ in range(50)
    ]
    batched.write_text("\n".join(lines) + "\n")
    return single, batched


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="serving_load", description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=20.0, help="length of the /v1/act run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="serving.workers")
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100, help="requests per /v1/act/batch call")
    args = parser.parse_args([] if argv is None else argv)

    from infra.config import load_config
    from infra.environment import Environment
    from infra.stack import LocalStack
    from infra.stack_config import StackConfig
    from stream.topics import ensure_topics
    from trainer import ModelRegistry

    wrk = _ensure_wrk()
    print(f"   {os.cpu_count()} CPUs shared by serving, wrk, the broker and Redis", flush=True)
    with tempfile.TemporaryDirectory(prefix="serving_load_") as tmp:
        root = Path(tmp)
        broker_port, redis_port, serving_port = _free_port(), _free_port(), _free_port()
        stack = LocalStack(
            StackConfig(broker_port=broker_port, redis_port=redis_port, state_dir=root / "stack")
        )
        serving: subprocess.Popen | None = None
        try:
            stack.up()
            yaml_path = _environment_yaml(root, broker_port, redis_port, serving_port, args.workers)
            env = Environment.from_config(load_config(yaml_path))
            ensure_topics(env.bootstrap_servers, env.config.topics)
            registry = ModelRegistry(env.registry_dir)
            first, second = _register(registry, seed=1), _register(registry, seed=2)
            registry.deploy(first, reason="serving_load")
            started = time.perf_counter()
            _push_features(env.feature_store_config(), args.entities)
            print(f"   {args.entities} entities' features in Redis ({time.perf_counter() - started:.1f} s)")
            log = (root / "serving.log").open("w")
            serving = subprocess.Popen(
                [sys.executable, "-m", "infra.cli", "serve", "--config", str(yaml_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            url = f"http://127.0.0.1:{serving_port}"
            _wait("serving on the first model", lambda: _all_workers_serve(url, first), 120, serving)
            single, batched = _bodies(root, args.entities, args.batch)

            print(f"== reference (same run, {args.workers} worker(s))", flush=True)
            ceiling = _wrk(wrk, url, "/healthz", single, root, args.connections, args.wrk_threads, 5)
            _show(f"GET /healthz, {args.connections} connections", ceiling)
            one = _wrk(wrk, url, "/v1/act", single, root, 1, 1, 5)
            _show("POST /v1/act, 1 connection", one)

            print(f"== POST /v1/act, {args.connections} connections, hot swap halfway", flush=True)

            def swap() -> None:
                time.sleep(args.duration_s / 2)
                registry.deploy(second, reason="serving_load hot swap")

            swapper = threading.Thread(target=swap)
            swapper.start()
            act = _wrk(wrk, url, "/v1/act", single, root, args.connections, args.wrk_threads, args.duration_s)
            swapper.join()
            _show(f"POST /v1/act (swap {first} → {second})", act)
            _wait("every worker serving the second model", lambda: _all_workers_serve(url, second), 30)
            print(f"   every worker serves {second} after the swap", flush=True)

            print(f"== POST /v1/act/batch, {args.batch} requests per call", flush=True)
            batch = _wrk(
                wrk, url, "/v1/act/batch", batched, root, min(4, args.connections), args.wrk_threads, 10
            )
            _show(f"POST /v1/act/batch × {args.batch}", batch, per_request=args.batch)
            print(
                "   target: ≥ 2,000 req/s, p99 ≤ 10 ms, 0 failed (including the swap)",
                flush=True,
            )
            result = {
                "rps": round(act["rps"], 1),
                "p50_ms": round(act["p50_us"] / 1000, 2),
                "p99_ms": round(act["p99_us"] / 1000, 2),
                "failed": act["failed"] + batch["failed"],
                "batch_decisions_per_s": round(batch["ok_rps"] * args.batch, 1),
            }
        finally:
            if serving is not None and serving.poll() is None:
                serving.terminate()  # uvicorn stops its workers, each flushing its decision log
                try:
                    serving.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(serving.pid, signal.SIGKILL)
            stack.down()
    print(json.dumps(result))
