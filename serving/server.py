"""Run the serving app with uvicorn: one process, or `ServingConfig.workers` processes on one port.

With several workers uvicorn binds the socket once and spawns each worker, which builds its own
app from the config (passed in `STREAMRL_SERVING_CONFIG` as JSON: spawned processes cannot be
handed the app object). Each worker has its own model holder, decision log and inference
threads: it follows the deploy pointer and hot-swaps on its own, and a request is answered by
whichever worker accepted its connection. SIGTERM/SIGINT stop every worker gracefully (each
flushes its decision log).
"""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI

from serving.app import create_app
from serving.config import ServingConfig

CONFIG_VARIABLE = "STREAMRL_SERVING_CONFIG"


def run_server(config: ServingConfig, log_level: str = "warning") -> None:
    """Serve until SIGTERM/SIGINT on `config.host:config.port` with `config.workers` processes."""
    if config.workers == 1:
        uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=log_level)
        return
    os.environ[CONFIG_VARIABLE] = config.model_dump_json()
    uvicorn.run(
        "serving.server:app_from_environment",
        factory=True,
        workers=config.workers,
        host=config.host,
        port=config.port,
        log_level=log_level,
    )


def app_from_environment() -> FastAPI:
    """A worker's app: `create_app` of the config `run_server` left in `STREAMRL_SERVING_CONFIG`."""
    text = os.environ.get(CONFIG_VARIABLE)
    if not text:
        raise RuntimeError(
            f"{CONFIG_VARIABLE} is not set: serving workers are started by serving.run_server "
            "(`streamrl serve`), which puts the serving config there"
        )
    return create_app(ServingConfig.model_validate_json(text))
