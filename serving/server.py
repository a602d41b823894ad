"""Run the serving app with uvicorn: one process, or `ServingConfig.workers` processes on one port.

With several workers uvicorn binds the socket once and spawns each worker, which builds its own
app from the config (passed in `STREAMRL_SERVING_CONFIG` as JSON: spawned processes cannot be
handed the app object). Each worker has its own model holder, decision log and inference
threads: it follows the deploy pointer and hot-swaps on its own, and a request is answered by
whichever worker accepted its connection. SIGTERM/SIGINT stop every worker gracefully (each
flushes its decision log). The workers publish their metrics to a directory made for the run
(`STREAMRL_SERVING_METRICS_DIR`), so `/metrics` sums every worker whichever answers the scrape.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from serving.app import create_app
from serving.config import ServingConfig

CONFIG_VARIABLE = "STREAMRL_SERVING_CONFIG"
METRICS_DIR_VARIABLE = "STREAMRL_SERVING_METRICS_DIR"


def run_server(config: ServingConfig, log_level: str = "warning") -> None:
    """Serve until SIGTERM/SIGINT on `config.host:config.port` with `config.workers` processes."""
    if config.workers == 1:
        uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=log_level)
        return
    os.environ[CONFIG_VARIABLE] = config.model_dump_json()
    metrics_dir = tempfile.mkdtemp(prefix="streamrl-serving-metrics-")
    os.environ[METRICS_DIR_VARIABLE] = metrics_dir
    try:
        uvicorn.run(
            "serving.server:app_from_environment",
            factory=True,
            workers=config.workers,
            host=config.host,
            port=config.port,
            log_level=log_level,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def app_from_environment() -> FastAPI:
    """A worker's app: `create_app` of the config `run_server` left in `STREAMRL_SERVING_CONFIG`."""
    text = os.environ.get(CONFIG_VARIABLE)
    if not text:
        raise RuntimeError(
            f"{CONFIG_VARIABLE} is not set: serving workers are started by serving.run_server "
            "(`streamrl serve`), which puts the serving config there"
        )
    shared = os.environ.get(METRICS_DIR_VARIABLE)
    return create_app(ServingConfig.model_validate_json(text), metrics_dir=Path(shared) if shared else None)
