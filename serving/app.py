"""The serving HTTP app: features → ONNX Q-values → served distribution → sampled action → logged.

`POST /v1/act` and `/v1/act/batch` score with the model the holder has at the moment the
request starts; `/healthz` says which model serves and why the server is degraded;
`/metrics` is Prometheus text. All errors go through one handler that maps error types to
status codes and always returns an `ErrorBody` with a request id.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from contracts import DecisionEvent
from serving._decision_log import DecisionLog
from serving._metrics import ServingMetrics
from serving.config import ServingConfig
from serving.errors import (
    BatchTooLargeError,
    ModelOutputError,
    ServingError,
    ServingStartupError,
    UnknownActionError,
)
from serving.model_holder import LoadedModel, ModelHolder
from serving.schemas import (
    ActRequest,
    ActResponse,
    BatchActRequest,
    BatchActResponse,
    ErrorBody,
    HealthStatus,
)
from stream import EventLogError, EventLogger

logger = logging.getLogger(__name__)

_ENDPOINTS = frozenset({"/v1/act", "/v1/act/batch", "/healthz", "/metrics"})
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class _Runtime:
    """Everything the lifespan starts; endpoints reach it through `app.state.runtime`."""

    config: ServingConfig
    metrics: ServingMetrics
    holder: ModelHolder
    decision_log: DecisionLog
    event_logger: EventLogger
    feature_reader: Any | None  # features.OnlineReader, imported only when configured
    rng: np.random.Generator
    rng_lock: threading.Lock


class _MetricsMiddleware:
    """Counts every response by endpoint and status and times it (pure ASGI: cheap on the hot path)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            path = scope.get("path", "")
            self.metrics.observe_request(
                path if path in _ENDPOINTS else "other", status, time.perf_counter() - started
            )


def create_app(config: ServingConfig) -> FastAPI:
    """Build the app; its lifespan loads the deployed model and opens the broker and feature store."""
    metrics = ServingMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await run_in_threadpool(_start_runtime, config, metrics)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await run_in_threadpool(_stop_runtime, runtime)

    app = FastAPI(title="streamrl serving", version="1", lifespan=lifespan)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    # One handler; registered per type because Starlette re-raises whatever only the
    # catch-all `Exception` entry handles (that one is for the 500s).
    for error_type in (RequestValidationError, ServingError, Exception):
        app.add_exception_handler(error_type, _handle_error)

    @app.post("/v1/act", response_model=ActResponse)
    async def act(body: ActRequest, request: Request) -> ActResponse:
        """One decision."""
        request.state.request_id = body.request_id
        return (await _decide(request.app.state.runtime, [body]))[0]

    @app.post("/v1/act/batch", response_model=BatchActResponse)
    async def act_batch(body: BatchActRequest, request: Request) -> BatchActResponse:
        """Up to `max_batch` decisions scored in one ONNX call."""
        runtime: _Runtime = request.app.state.runtime
        if len(body.requests) > runtime.config.max_batch:
            raise BatchTooLargeError(len(body.requests), runtime.config.max_batch)
        return BatchActResponse(responses=await _decide(runtime, body.requests))

    @app.get("/healthz", response_model=HealthStatus)
    async def healthz(request: Request) -> JSONResponse:
        """200 ok/degraded while a model serves; 503 while none is loaded."""
        health = _health(request.app.state.runtime)
        return JSONResponse(health.model_dump(), status_code=503 if health.status == "unavailable" else 200)

    @app.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this app's own registry."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _start_runtime(config: ServingConfig, metrics: ServingMetrics) -> _Runtime:
    holder = ModelHolder(config.registry_root, config.poll_interval_s, metrics)
    try:
        event_logger = EventLogger(config.bootstrap_servers, config.topics)
    except Exception as exc:
        raise ServingStartupError(
            f"cannot open the decision log on brokers {config.bootstrap_servers!r} "
            f"(topic {config.topics.decisions!r}): {exc}. Is the broker up? run `streamrl stack up`"
        ) from exc
    feature_reader = None
    if config.feature_store is not None:
        from features import open_online_reader

        try:  # Feast client or the raw Redis reader, by feature_store.online_reader.type
            feature_reader = open_online_reader(config.feature_store)
        except Exception as exc:
            event_logger.close(1.0)
            raise ServingStartupError(f"cannot open the online feature store: {exc}") from exc
    decision_log = DecisionLog(
        event_logger,
        metrics,
        queue_size=config.decision_queue_size,
        flush_interval_s=config.log_flush_interval_s,
        flush_timeout_s=config.log_flush_timeout_s,
        enqueue_timeout_s=config.decision_enqueue_timeout_s,
    )
    decision_log.start()
    holder.start()
    return _Runtime(
        config=config,
        metrics=metrics,
        holder=holder,
        decision_log=decision_log,
        event_logger=event_logger,
        feature_reader=feature_reader,
        rng=np.random.default_rng(config.seed),
        rng_lock=threading.Lock(),
    )


def _stop_runtime(runtime: _Runtime) -> None:
    """Stop following the registry, then send and flush every queued decision before closing."""
    runtime.holder.stop()
    runtime.decision_log.stop()
    try:
        runtime.event_logger.close(runtime.config.log_flush_timeout_s)
    except EventLogError as exc:  # decision_log.stop() already flushed; anything left is reported here
        runtime.metrics.add("decisions_failed", len(exc.undelivered))
        logger.error("decisions not delivered at shutdown: %s", exc)


def _health(runtime: _Runtime) -> HealthStatus:
    model = runtime.holder.current()
    reasons = [
        reason
        for reason in (runtime.holder.last_error, runtime.decision_log.degraded_reason())
        if reason is not None
    ]
    status = "unavailable" if model is None else "degraded" if reasons else "ok"
    return HealthStatus(
        status=status, model_version=model.version if model else None, degraded_reasons=reasons
    )


async def _online_features(runtime: _Runtime, entity_ids: list[str]) -> list[dict[str, Any]]:
    """Latest online features per entity; on a store failure, none (the model treats them as missing)."""
    if runtime.feature_reader is None:
        return [{} for _ in entity_ids]
    try:
        return await run_in_threadpool(runtime.feature_reader.get, entity_ids)
    except Exception as exc:
        runtime.metrics.add("feature_lookup_failures")
        logger.warning(
            "online feature lookup failed for %d entities, serving on request features: %s",
            len(entity_ids),
            exc,
        )
        return [{} for _ in entity_ids]


def _merge(online: dict[str, Any], request: dict[str, float | None]) -> dict[str, float | None]:
    """Online features overlaid with the request's (request wins); NaN and non-numbers become None."""
    merged: dict[str, float | None] = {}
    for name, value in online.items():
        try:
            number = None if value is None else float(value)
        except (TypeError, ValueError):
            number = None
        merged[name] = number if number is not None and math.isfinite(number) else None
    merged.update(request)
    return merged


def _check_actions(model: LoadedModel, requests: list[ActRequest], batch: bool) -> None:
    for i, req in enumerate(requests):
        unknown = [a for a in req.possible_actions if a not in model.action_index]
        if unknown:
            where = f"requests[{i}]" if batch else "request"
            raise UnknownActionError(unknown, list(model.metadata.actions), model.version, where)


def _sample(runtime: _Runtime, probabilities: np.ndarray) -> np.ndarray:
    """One action index per row, drawn from that row's distribution (never a 0-probability action)."""
    with runtime.rng_lock:
        u = runtime.rng.random(probabilities.shape[0])
    cdf = np.cumsum(probabilities, axis=1)
    chosen = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=1)
    chosen = np.minimum(chosen, probabilities.shape[1] - 1)
    rows = np.arange(probabilities.shape[0])
    zero = probabilities[rows, chosen] <= 0.0  # float edge at the top of the cdf
    chosen[zero] = probabilities[zero].argmax(axis=1)
    return chosen


async def _decide(runtime: _Runtime, requests: list[ActRequest]) -> list[ActResponse]:
    model = runtime.holder.require()  # held to the end of the request, across any swap
    batch = len(requests) > 1
    _check_actions(model, requests, batch)
    online = await _online_features(runtime, [r.entity_id for r in requests])
    merged = [_merge(o, r.context_features) for o, r in zip(online, requests, strict=True)]
    features = model.policy.features(merged)
    mask = model.policy.possible_mask([r.possible_actions for r in requests])
    probabilities = np.asarray(model.policy.probabilities(features, mask), dtype=np.float64)
    bad_rows = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
    if bad_rows.size:
        raise ModelOutputError(model.version, [requests[i].request_id for i in bad_rows])
    chosen = _sample(runtime, probabilities)
    now = datetime.now(UTC)
    responses = []
    for i, req in enumerate(requests):
        action = model.metadata.actions[int(chosen[i])]
        propensity = float(probabilities[i, chosen[i]])
        runtime.decision_log.submit(
            DecisionEvent(
                request_id=req.request_id,
                entity_id=req.entity_id,
                mdp_id=req.mdp_id,
                sequence_number=req.sequence_number,
                timestamp=now,
                context_features=merged[i],
                possible_actions=req.possible_actions,
                action=action,
                action_probability=propensity,
                model_version=model.version,
            )
        )
        responses.append(
            ActResponse(
                request_id=req.request_id,
                action=action,
                action_probability=propensity,
                model_version=model.version,
                mdp_id=req.mdp_id,
                sequence_number=req.sequence_number,
            )
        )
    return responses


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    parts = []
    status, kind = 422, "invalid_request"
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        if error.get("type") == "json_invalid":
            status, kind = 400, "invalid_json"
            parts.append(
                f"request body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})"
            )
            continue
        field = ".".join(loc) or "body"
        parts.append(f"{field}: {error['msg']}")
    return status, kind, "; ".join(parts) or "invalid request"


async def _handle_error(request: Request, exc: Exception) -> JSONResponse:
    """The one place error types become status codes; every error body carries a request id."""
    request_id = getattr(request.state, "request_id", None) or str(uuid.uuid4())
    if isinstance(exc, RequestValidationError):
        status, kind, message = _validation_message(exc)
    elif isinstance(exc, ServingError) and exc.status_code != 500:
        status, kind, message = exc.status_code, type(exc).__name__, str(exc)
    else:
        status, kind = 500, "internal_error"
        message = (
            f"internal error while serving {request.url.path}; quote request id {request_id} when reporting"
        )
        logger.error("internal error, request id %s", request_id, exc_info=exc)
    body = ErrorBody(error=kind, message=message, request_id=request_id)
    return JSONResponse(body.model_dump(), status_code=status)
