"""Serving stage: the FastAPI app that decides with the deployed ONNX model (every action kind) and logs every decision."""

from serving.app import create_app
from serving.config import (
    ContinuousActionConfig,
    NoFallbackConfig,
    ServingConfig,
    UniformFallbackConfig,
)
from serving.server import run_server

__all__ = [
    "ContinuousActionConfig",
    "NoFallbackConfig",
    "ServingConfig",
    "UniformFallbackConfig",
    "create_app",
    "run_server",
]
