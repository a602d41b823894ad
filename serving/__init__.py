"""Serving stage: the FastAPI app that scores with the deployed ONNX model and logs every decision."""

from serving.app import create_app
from serving.config import ServingConfig

__all__ = ["ServingConfig", "create_app"]
