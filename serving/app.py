"""The serving HTTP app: features → the deployed policy → sampled action and its propensity → logged.

`POST /v1/act` and `/v1/act/batch` decide with the models the holder has at the moment the
request starts, for every action kind (`serving._kinds.KINDS`): each request's episode (`mdp_id`)
goes to the canary for its share, else to the deployed model; with no model loaded they answer
503 or, with `fallback: uniform`, choose uniformly at random (day 0).
`POST /v1/decisions` (and `/v1/decisions/batch`) is log-only (apprentice) mode: the app sends
the decision it took itself, serving checks and logs it and answers what the deployed model
would have done.
`/healthz` says which model serves, the canary beside it and why the server is degraded; `/metrics` is Prometheus
text. All errors go through one handler that maps error types to status codes and always
returns an `ErrorBody` with a request id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts import ActionKind, DecisionEvent
from serving._auth import AuthMiddleware, Tokens
from serving._breaker import FeatureBreaker
from serving._decision_log import DecisionLog
from serving._kinds import KINDS, Choice, ContinuousSpace
from serving._limits import BodyLimitMiddleware, check_limits
from serving._metrics import ServingMetrics
from serving.config import ServingConfig, UniformFallbackConfig
from serving.errors import (
    AdminError,
    BatchTooLargeError,
    DecisionQueueFullError,
    NoModelError,
    ServingError,
    ServingStartupError,
    UnknownAppError,
    WrongKindError,
)
from serving.model_holder import LoadedModel, ModelHolder, Served
from serving.schemas import (
    ActRequest,
    ActResponse,
    BatchActRequest,
    BatchActResponse,
    BatchLoggedDecisionRequest,
    BatchLoggedDecisionResponse,
    CanaryHealth,
    DeploymentResponse,
    DeployRequest,
    ErrorBody,
    HealthStatus,
    LoggedDecision,
    LoggedDecisionResponse,
    NotServedResponse,
    RollbackRequest,
)
from stream import EventLogError, EventLogger
from trainer import ModelRegistry
from trainer.errors import RegistryError

logger = logging.getLogger(__name__)

_ROUTES = ("/act", "/act/batch", "/decisions", "/decisions/batch")
_ENDPOINTS = frozenset({*(f"/v1{route}" for route in _ROUTES), "/healthz", "/metrics"})
_APP_PREFIX = re.compile(r"^/v1/apps/[^/]+/")
_KIND_TAGS = frozenset(kind.value for kind in ActionKind)
# The `error` of an ErrorBody for the HTTP errors Starlette raises itself.
_HTTP_ERRORS = {404: "NotFound", 405: "MethodNotAllowed"}

_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No valid bearer token (authentication on)."},
    403: {"model": ErrorBody, "description": "The token lacks the admin scope."},
    409: {
        "model": ErrorBody,
        "description": "The registry refused: unknown or broken version, no previous one.",
    },
    422: {"model": ErrorBody, "description": "The body does not fit its schema."},
}

# Declared error bodies of the decision endpoints (every error is an `ErrorBody`).
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body is not valid JSON."},
    401: {"model": ErrorBody, "description": "No valid bearer token (serving.auth on)."},
    403: {"model": ErrorBody, "description": "The token lacks the act scope."},
    422: {
        "model": ErrorBody,
        "description": "The request does not fit its schema or the served model: wrong action_kind, "
        "unknown actions, a candidate without the model's features, a vector of the wrong length or "
        "out of bounds, too large a batch. The message names the field.",
    },
    413: {"model": ErrorBody, "description": "The body is over serving.limits.max_body_bytes."},
    500: {"model": ErrorBody, "description": "Internal error (quote the request id)."},
    503: {
        "model": ErrorBody,
        "description": "No model is loaded and no fallback serves; or the decision log's queue is full "
        "(DecisionQueueFullError, with Retry-After): nothing was decided or logged, retry later.",
    },
}
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
    inference: ThreadPoolExecutor  # feature reads, ONNX calls and the decision hand-off: off the event loop
    breaker: FeatureBreaker  # skips the online store while it is failing


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
            path = _APP_PREFIX.sub("/v1/", scope.get("path", ""), count=1)  # counted with /v1/…
            self.metrics.observe_request(
                path if path in _ENDPOINTS else "other", status, time.perf_counter() - started
            )


def create_app(config: ServingConfig, *, metrics_dir: Path | None = None) -> FastAPI:
    """Build the app; its lifespan loads the deployed model and opens the broker and feature store.

    `metrics_dir`: the directory the workers of one server share their metrics in (`serving.server`)."""
    metrics = ServingMetrics(metrics_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await run_in_threadpool(_start_runtime, config, metrics)
        app.state.runtime = runtime
        metrics.start_publishing()
        try:
            yield
        finally:
            await run_in_threadpool(_stop_runtime, runtime)
            metrics.stop_publishing()

    # FastAPI's own OpenTelemetry hooks look up the global providers on every request (~8 % of a
    # `/v1/act` in the profile); serving has its own metrics, so they are off.
    app = FastAPI(
        title="streamrl serving",
        version="1",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.limits.max_body_bytes)
    if config.auth.enabled:  # tokens read now: a bad token source stops the server before it listens
        app.add_middleware(AuthMiddleware, tokens=Tokens(config.auth))
    app.add_middleware(_MetricsMiddleware, metrics=metrics)  # outermost: it counts the 413s too
    # One handler; registered per type because Starlette re-raises whatever only the
    # catch-all `Exception` entry handles (that one is for the 500s).
    for error_type in (RequestValidationError, ServingError, StarletteHTTPException, Exception):
        app.add_exception_handler(error_type, _handle_error)

    # The decision routes: at /v1/… and, for a named app, also at /v1/apps/{app}/… (one serving
    # process per app: a slow model load or a crash in one app never touches another's latency).
    api = APIRouter()

    @api.post("/act", response_model=ActResponse, responses=_ERRORS)
    async def act(body: ActRequest, request: Request) -> Any:
        """One decision, of the request's `action_kind` (discrete when absent)."""
        request.state.request_id = body.request_id
        return (await _decide(request.app.state.runtime, [body], batch=False))[0]

    @api.post("/act/batch", response_model=BatchActResponse, responses=_ERRORS)
    async def act_batch(body: BatchActRequest, request: Request) -> BatchActResponse:
        """Up to `max_batch` decisions scored in one ONNX call."""
        runtime: _Runtime = request.app.state.runtime
        if len(body.requests) > runtime.config.max_batch:
            raise BatchTooLargeError(len(body.requests), runtime.config.max_batch)
        return BatchActResponse(responses=await _decide(runtime, body.requests, batch=True))

    @api.post("/decisions", response_model=LoggedDecisionResponse, responses=_ERRORS)
    async def log_decision(body: LoggedDecision, request: Request) -> LoggedDecisionResponse:
        """Log-only mode: log a decision the app took itself; answer what the deployed model would do."""
        request.state.request_id = body.request_id
        return (await _log_app_decisions(request.app.state.runtime, [body], batch=False))[0]

    @api.post("/decisions/batch", response_model=BatchLoggedDecisionResponse, responses=_ERRORS)
    async def log_decisions(
        body: BatchLoggedDecisionRequest, request: Request
    ) -> BatchLoggedDecisionResponse:
        """Log-only mode for up to `max_batch` decisions: all are checked before any is logged."""
        runtime: _Runtime = request.app.state.runtime
        if len(body.decisions) > runtime.config.max_batch:
            raise BatchTooLargeError(len(body.decisions), runtime.config.max_batch, field="decisions")
        return BatchLoggedDecisionResponse(
            responses=await _log_app_decisions(runtime, body.decisions, batch=True)
        )

    @api.post("/admin/deploy", response_model=DeploymentResponse, responses=_ADMIN_ERRORS)
    async def admin_deploy(body: DeployRequest, request: Request) -> DeploymentResponse:
        """Deploy a registered version (scope `admin` when authentication is on)."""
        reason = _by(body.reason, request)
        return await _admin(request.app.state.runtime, "deploy", lambda r: r.deploy(body.version, reason))

    @api.post("/admin/rollback", response_model=DeploymentResponse, responses=_ADMIN_ERRORS)
    async def admin_rollback(body: RollbackRequest, request: Request) -> DeploymentResponse:
        """Roll back to the version deployed before the current one (scope `admin`)."""
        reason = _by(body.reason, request)
        return await _admin(request.app.state.runtime, "rollback", lambda r: r.rollback(reason))

    @api.get("/healthz", response_model=HealthStatus, include_in_schema=False)
    async def app_healthz(request: Request) -> JSONResponse:
        return await healthz(request)

    app.include_router(api, prefix="/v1")
    if config.app is not None:
        app.include_router(api, prefix=f"/v1/apps/{config.app}")

    @app.api_route("/v1/apps/{other}/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    async def other_app(other: str, rest: str) -> Any:
        if other == config.app:  # this app, but no such route or method
            raise HTTPException(404, f"no route {rest!r} for app {other!r}; see /docs")
        raise UnknownAppError(other, config.app)

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


def _by(reason: str, request: Request) -> str:
    """The reason recorded in the registry, with who asked when authentication names them."""
    principal = request.scope.get("state", {}).get("principal")
    return f"{reason} (by {principal})" if principal else reason


async def _admin(
    runtime: _Runtime, action: str, change: Callable[[ModelRegistry], Any]
) -> DeploymentResponse:
    """Change the deploy pointer, then have this worker follow it at once (the others poll)."""
    registry = ModelRegistry(runtime.config.registry_root)

    def run() -> DeploymentResponse:
        previous = registry.deployed()
        try:
            change(registry)
        except RegistryError as exc:
            raise AdminError(action, str(exc)) from exc
        runtime.holder.reload()
        current = runtime.holder.current()
        return DeploymentResponse(
            deployed=registry.deployed(),
            previous=previous,
            served_here=current.version if current is not None else None,
        )

    return await run_in_threadpool(run)


def _start_runtime(config: ServingConfig, metrics: ServingMetrics) -> _Runtime:
    holder = ModelHolder(
        config.registry_root,
        config.poll_interval_s,
        metrics,
        action_kind=config.action_kind,
        continuous_actions=config.continuous_actions,
    )
    try:
        event_logger = EventLogger(
            config.bootstrap_servers,
            config.topics,
            security=config.kafka_security,
            idempotent=config.decision_log_idempotent,
        )
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
        retry_after_s=config.decision_retry_after_s,
    )
    decision_log.start()
    if isinstance(config.fallback, UniformFallbackConfig):
        metrics.model_version = config.fallback.model_version  # until the first model swaps in
    holder.start()
    return _Runtime(
        config=config,
        metrics=metrics,
        holder=holder,
        decision_log=decision_log,
        event_logger=event_logger,
        feature_reader=feature_reader,
        rng=np.random.default_rng(_process_seed(config)),
        rng_lock=threading.Lock(),
        inference=ThreadPoolExecutor(config.inference_threads, thread_name_prefix="streamrl-inference"),
        breaker=FeatureBreaker(config.feature_retry_s),
    )


def _process_seed(config: ServingConfig) -> int | list[int] | None:
    """The seed of this process's generator: `seed`, mixed with the pid when several workers share it
    (the same stream in every worker would correlate their draws)."""
    if config.seed is None or config.workers == 1:
        return config.seed
    return [config.seed, os.getpid()]


def _stop_runtime(runtime: _Runtime) -> None:
    """Stop following the registry and finish the calls in flight, then send and flush every queued
    decision before closing."""
    runtime.holder.stop()
    runtime.inference.shutdown(wait=True)
    runtime.decision_log.stop()
    try:
        runtime.event_logger.close(runtime.config.log_flush_timeout_s)
    except EventLogError as exc:  # decision_log.stop() already flushed; anything left is reported here
        runtime.metrics.add("decisions_failed", len(exc.undelivered))
        logger.error("decisions not delivered at shutdown: %s", exc)


def _health(runtime: _Runtime) -> HealthStatus:
    served = runtime.holder.snapshot()
    canary = served.canary
    reasons = [
        reason
        for reason in (
            runtime.holder.last_error,
            runtime.decision_log.degraded_reason(),
            runtime.breaker.degraded_reason(),
        )
        if reason is not None
    ]
    version = served.current.version if served.current else _fallback_version(runtime.config)
    # A canary beside no model serves its share: the app's own policy decides the other episodes.
    status = "unavailable" if version is None and canary is None else "degraded" if reasons else "ok"
    return HealthStatus(
        status=status,
        model_version=version,
        canary=CanaryHealth(model_version=canary.model.version, share=canary.share) if canary else None,
        degraded_reasons=reasons,
    )


def _fallback_version(config: ServingConfig) -> str | None:
    """The `model_version` the day-0 fallback serves under; None when there is no fallback."""
    return config.fallback.model_version if isinstance(config.fallback, UniformFallbackConfig) else None


def _online_features(runtime: _Runtime, entity_ids: list[str]) -> list[dict[str, Any]]:
    """Latest online features per entity; with the store failing (or its breaker open, `serving._breaker`),
    none: the decision is taken on the request's features, the model treating the others as missing."""
    if runtime.feature_reader is None:
        return [{} for _ in entity_ids]
    if not runtime.breaker.allow():
        runtime.metrics.add("feature_fallbacks", len(entity_ids))
        return [{} for _ in entity_ids]
    try:
        found = runtime.feature_reader.get(entity_ids)
    except Exception as exc:
        runtime.breaker.failed(f"{type(exc).__name__}: {exc}")
        runtime.metrics.add("feature_lookup_failures")
        runtime.metrics.add("feature_fallbacks", len(entity_ids))
        logger.warning(
            "online feature lookup failed for %d entities, serving on request features for %g s: %s",
            len(entity_ids),
            runtime.breaker.open_s,
            exc,
        )
        return [{} for _ in entity_ids]
    runtime.breaker.succeeded()
    return found


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


def _child_rng(runtime: _Runtime) -> np.random.Generator:
    """A generator for one call, seeded from the server's (reproducible for a seed, never shared)."""
    with runtime.rng_lock:
        return np.random.default_rng(runtime.rng.integers(2**63))


def _check_kind(runtime: _Runtime, model: LoadedModel | None, sent: str, prefix: str) -> None:
    """Refuse a request of another kind than the served one (the model's, else serving.action_kind)."""
    served = model.action_kind if model is not None else runtime.config.action_kind
    if served is not None and sent != served.value:
        served_by = (
            f"the deployed model {model.version}"
            if model is not None
            else "this server (serving.action_kind)"
        )
        runtime.metrics.add("wrong_kind_requests")
        raise WrongKindError(f"{prefix}action_kind", sent, served.value, served_by, KINDS[served].expected)


def _continuous_space(runtime: _Runtime, model: LoadedModel | None) -> ContinuousSpace | None:
    if model is not None and model.action_kind is ActionKind.CONTINUOUS:
        return ContinuousSpace.of_model(model)
    dimensions = runtime.config.continuous_actions
    return ContinuousSpace.of_config(dimensions) if dimensions is not None else None


def _features(runtime: _Runtime, requests: list[Any]) -> list[dict[str, float | None]]:
    online = _online_features(runtime, [r.entity_id for r in requests])
    return [_merge(o, r.context_features) for o, r in zip(online, requests, strict=True)]


def _event(
    request: Any, kind: ActionKind, context: dict, choice: Choice, version: str, now: datetime
) -> DecisionEvent:
    return DecisionEvent(
        action_kind=kind,
        request_id=request.request_id,
        entity_id=request.entity_id,
        mdp_id=request.mdp_id,
        sequence_number=request.sequence_number,
        timestamp=now,
        context_features=context,
        model_version=version,
        **choice.event,
    )


def _response(request: Any, kind: ActionKind, choice: Choice, version: str) -> Any:
    return KINDS[kind].response(
        request_id=request.request_id,
        model_version=version,
        mdp_id=request.mdp_id,
        sequence_number=request.sequence_number,
        **choice.response,
    )


def _choose(
    runtime: _Runtime,
    model: LoadedModel | None,
    requests: list[Any],
    contexts: list[dict[str, float | None]],
    prefixes: list[str],
) -> list[tuple[ActionKind, Choice]]:
    """Each request's kind and choice, in request order: by the model, else by the uniform fallback.

    With a model every request has the model's kind (checked before); the fallback serves each
    kind's requests on their own.
    """
    rng = _child_rng(runtime)
    by_kind: dict[ActionKind, list[int]] = {}
    for i, request in enumerate(requests):
        by_kind.setdefault(ActionKind(request.action_kind), []).append(i)
    chosen: dict[int, tuple[ActionKind, Choice]] = {}
    for kind, rows in by_kind.items():
        group = [requests[i] for i in rows]
        if model is not None:
            choices = KINDS[kind].decide(
                model, group, [contexts[i] for i in rows], rng, [prefixes[i] for i in rows]
            )
        else:
            choices = KINDS[kind].uniform(group, rng, _continuous_space(runtime, None))
        chosen.update((i, (kind, choice)) for i, choice in zip(rows, choices, strict=True))
    return [chosen[i] for i in range(len(requests))]


async def _decide(runtime: _Runtime, requests: list[Any], batch: bool) -> list[Any]:
    served = runtime.holder.snapshot()  # held to the end of the request, across any swap
    models = [served.model_for(request.mdp_id) for request in requests]
    prefixes = [f"requests.{i}." if batch else "" for i in range(len(requests))]
    for request, model, prefix in zip(requests, models, prefixes, strict=True):
        check_limits(request, runtime.config.limits, prefix)
        _check_kind(runtime, model, request.action_kind, prefix)
    fallback = _fallback_version(runtime.config)
    versions = [model.version if model is not None else fallback for model in models]
    why_not = runtime.holder.last_error or "nothing is deployed"
    if None in versions and served.canary is None:
        raise NoModelError(str(runtime.config.registry_root), why_not)
    # Beside a canary with no model (nor fallback) for the other episodes: those are the app's own.
    rows = [i for i, version in enumerate(versions) if version is not None]
    responses: list[Any] = [
        None if version is not None else _not_served(request, served, why_not)
        for request, version in zip(requests, versions, strict=True)
    ]
    if len(rows) < len(requests):
        runtime.metrics.add("not_served", len(requests) - len(rows))
    if not rows:
        return responses
    runtime.decision_log.refuse_if_full(len(rows))  # refused before any work when there is no room
    answered = await _in_thread(
        runtime,
        _decide_rows,
        runtime,
        served,
        [models[i] for i in rows],
        [requests[i] for i in rows],
        [versions[i] for i in rows],
        [prefixes[i] for i in rows],
    )
    for i, response in zip(rows, answered, strict=True):
        responses[i] = response
    return responses


async def _in_thread(runtime: _Runtime, work: Callable[..., Any], *args: Any) -> Any:
    """Run `work(*args)` on the inference threads; the event loop keeps answering meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(runtime.inference, functools.partial(work, *args))


def _decide_rows(
    runtime: _Runtime,
    served: Served,
    models: list[LoadedModel | None],
    requests: list[Any],
    versions: list[str | None],
    prefixes: list[str],
) -> list[Any]:
    """On an inference thread: online features, each model's choices, then every decision offered to
    the log at once (`DecisionQueueFullError` when they do not fit: none is answered or logged)."""
    contexts = _features(runtime, requests)
    chosen = _choose_per_model(runtime, models, requests, contexts, prefixes)
    now = datetime.now(UTC)
    events, responses = [], []
    for request, context, (kind, choice), version in zip(requests, contexts, chosen, versions, strict=True):
        assert version is not None
        events.append(_event(request, kind, context, choice, version, now))
        responses.append(_response(request, kind, choice, version))
    runtime.decision_log.offer(events)
    _count_canary(runtime, served, models)
    return responses


def _not_served(request: Any, served: Served, why_not: str) -> NotServedResponse:
    canary = served.canary
    assert canary is not None
    return NotServedResponse(
        request_id=request.request_id,
        mdp_id=request.mdp_id,
        sequence_number=request.sequence_number,
        reason=(
            f"canary {canary.model.version} serves {canary.share:.0%} of the episodes and not this one, and no "
            f"model serves the others ({why_not}): decide by your own policy and log it (POST /v1/decisions)"
        ),
    )


def _choose_per_model(
    runtime: _Runtime,
    models: list[LoadedModel | None],
    requests: list[Any],
    contexts: list[dict[str, float | None]],
    prefixes: list[str],
) -> list[tuple[ActionKind, Choice]]:
    """`_choose` once per distinct model (the deployed one, the canary) on its requests; request order."""
    chosen: dict[int, tuple[ActionKind, Choice]] = {}
    for model in {id(m): m for m in models}.values():
        rows = [i for i, m in enumerate(models) if m is model]
        choices = _choose(
            runtime,
            model,
            [requests[i] for i in rows],
            [contexts[i] for i in rows],
            [prefixes[i] for i in rows],
        )
        chosen.update(zip(rows, choices, strict=True))
    return [chosen[i] for i in range(len(requests))]


def _count_canary(runtime: _Runtime, served: Served, models: list[LoadedModel | None]) -> None:
    if served.canary is not None and (n := sum(m is served.canary.model for m in models)):
        runtime.metrics.add("canary_decisions", n)


async def _log_app_decisions(
    runtime: _Runtime, decisions: list[Any], batch: bool
) -> list[LoggedDecisionResponse]:
    """Check and log the app's own decisions; then, off the log, what the deployed model would do.

    All or nothing: every decision is checked against the served kind and action space before
    any is logged, so a refused batch logs nothing and can be resent whole. Then one online
    feature lookup, every decision logged, and one scoring call for them all (with a model
    loaded they all have its kind).
    """
    model = runtime.holder.current()
    space = _continuous_space(runtime, model)
    prefixes = [f"decisions.{i}." if batch else "" for i in range(len(decisions))]
    kinds = [ActionKind(decision.action_kind) for decision in decisions]
    logged = []
    for decision, kind, prefix in zip(decisions, kinds, prefixes, strict=True):
        check_limits(decision, runtime.config.limits, prefix)
        _check_kind(runtime, model, decision.action_kind, prefix)
        logged.append(Choice(event=KINDS[kind].logged(decision, space, prefix), response={}))
    runtime.decision_log.refuse_if_full(len(decisions))
    return await _in_thread(runtime, _log_and_score, runtime, model, decisions, kinds, logged, prefixes)


def _log_and_score(
    runtime: _Runtime,
    model: LoadedModel | None,
    decisions: list[Any],
    kinds: list[ActionKind],
    logged: list[Choice],
    prefixes: list[str],
) -> list[LoggedDecisionResponse]:
    """On an inference thread: online features, every decision offered to the log at once, then the
    model's would-be decisions."""
    contexts = _features(runtime, decisions)
    now = datetime.now(UTC)
    runtime.decision_log.offer(
        [
            _event(decision, kind, context, choice, decision.policy, now)
            for decision, kind, context, choice in zip(decisions, kinds, contexts, logged, strict=True)
        ]
    )
    if model is None:
        error = f"no model is loaded ({runtime.holder.last_error or 'nothing is deployed'})"
        return [
            LoggedDecisionResponse(request_id=d.request_id, model_decision=None, model_decision_error=error)
            for d in decisions
        ]
    return _model_decisions(runtime, model, decisions, contexts, prefixes)


def _model_decisions(
    runtime: _Runtime,
    model: LoadedModel,
    decisions: list[Any],
    contexts: list[dict[str, float | None]],
    prefixes: list[str],
) -> list[LoggedDecisionResponse]:
    """What the model would have done for each logged decision, in one scoring call.

    A decision the model cannot score (an action it does not know, non-finite outputs) fails
    the call; then each decision is scored alone, so only that one answers with its error.
    """
    kind = model.action_kind
    try:
        choices = KINDS[kind].decide(model, decisions, contexts, _child_rng(runtime), prefixes)
    except Exception as exc:  # the app's decisions are logged either way; say why the model has no answer
        if len(decisions) > 1:
            return [
                response
                for i in range(len(decisions))
                for response in _model_decisions(
                    runtime, model, decisions[i : i + 1], contexts[i : i + 1], prefixes[i : i + 1]
                )
            ]
        (decision,) = decisions
        if isinstance(exc, ServingError) and exc.status_code != 500:
            error = f"{type(exc).__name__}: {exc}"
        else:
            error = f"internal error while scoring with model {model.version}; quote request id {decision.request_id}"
            logger.error(
                "model %s could not score logged decision %s",
                model.version,
                decision.request_id,
                exc_info=exc,
            )
        return [
            LoggedDecisionResponse(
                request_id=decision.request_id, model_decision=None, model_decision_error=error
            )
        ]
    return [
        LoggedDecisionResponse(
            request_id=decision.request_id,
            model_decision=_response(decision, kind, choice, model.version),
        )
        for decision, choice in zip(decisions, choices, strict=True)
    ]


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    parts = []
    status, kind = 422, "invalid_request"
    for error in exc.errors():
        loc = _field_path(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            status, kind = 400, "invalid_json"
            parts.append(
                f"request body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})"
            )
            continue
        if error.get("type") == "action_kind":  # the request union's tag: name the field it comes from
            loc = [*loc, "action_kind"]
        field = ".".join(loc) or "body"
        parts.append(f"{field}: {error['msg']}")
    return status, kind, "; ".join(parts) or "invalid request"


def _field_path(loc: tuple[Any, ...]) -> list[str]:
    """The request field an error is about: without "body" and the kind tag of the request union."""
    path: list[str] = []
    previous: Any = "body"
    for part in loc:
        union_tag = part in _KIND_TAGS and (previous == "body" or isinstance(previous, int))
        if part != "body" and not union_tag:
            path.append(str(part))
        previous = part
    return path


async def _handle_error(request: Request, exc: Exception) -> JSONResponse:
    """The one place error types become status codes; every error body carries a request id."""
    request_id = getattr(request.state, "request_id", None) or str(uuid.uuid4())
    if isinstance(exc, RequestValidationError):
        status, kind, message = _validation_message(exc)
    elif isinstance(exc, StarletteHTTPException):  # routing: 404, 405
        status, kind, message = (
            exc.status_code,
            _HTTP_ERRORS.get(exc.status_code, "HTTPError"),
            str(exc.detail),
        )
    elif isinstance(exc, ServingError) and exc.status_code != 500:
        status, kind, message = exc.status_code, type(exc).__name__, str(exc)
    else:
        status, kind = 500, "internal_error"
        message = (
            f"internal error while serving {request.url.path}; quote request id {request_id} when reporting"
        )
        logger.error("internal error, request id %s", request_id, exc_info=exc)
    body = ErrorBody(error=kind, message=message, request_id=request_id)
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, DecisionQueueFullError) else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)
