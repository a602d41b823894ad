"""The faust app: decisions + rewards → per model version, per window metrics on the `metrics` topic.

Flow (every internal name is prefixed with the app id, since faust does not prefix topics):

    decisions ─┐ validate, re-key by request_id          ┌─ request_id → model_version table
               ├──────────► {app}-by-request ──attribute─┤  (rewards before their decision are held
    rewards ───┘                                         └─  `reward_hold_s`, then counted unattributed)
                                  │ re-key by model_version
                                  ▼
                           {app}-by-version ──aggregate──► model_version → VersionWindows table
                                                                   │ on tick, closed windows
                                                                   ▼
                                                           `metrics` topic (MetricsWindow JSON)

Table writes must happen inside stream iteration (faust sends the changelog to the event's
partition), so the timer never writes: it sends small "tick"/"expire" records keyed like the
data they concern, which land on the right partition and are handled by the agents.
Processing is at-least-once (faust's exactly_once needs transactions aiokafka cannot do on
Tansu): after a crash a window may be published twice with the same revision.
Invalid decisions are counted and skipped here; the stream job dead-letters them. A valid
decision travels between agents as the digest of its action kind (`monitoring.metrics`), so the
agents never branch on the kind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import faust
from pydantic import ValidationError

from contracts import DecisionEvent, KafkaSecurity, RewardEvent, reward_value
from monitoring.config import MonitoringConfig
from monitoring.metrics import DECISION_DIGEST, DecisionDigest, VersionWindows, digest_decision

logger = logging.getLogger(__name__)

_REQUEST_SCAN_INTERVAL_S = 60.0


@dataclass
class MonitorStats:
    """Counters of one worker process, served as JSON at `/stats/` (reset on restart)."""

    decisions: int = 0
    invalid_decisions: int = 0
    rewards: int = 0
    invalid_rewards: int = 0
    held_rewards: int = 0
    unattributed_rewards: int = 0
    late_events: int = 0
    windows_emitted: int = 0


def _broker_urls(bootstrap_servers: str) -> list[str]:
    return [f"kafka://{server.strip()}" for server in bootstrap_servers.split(",") if server.strip()]


def _credentials(security: KafkaSecurity) -> faust.types.auth.CredentialsT | None:
    """Faust's credentials object for the same settings every other client reads."""
    if security.sasl:
        return faust.SASLCredentials(
            username=security.username,
            password=security.password(),
            mechanism=security.sasl_mechanism.value,
            ssl_context=security.ssl_context(),
        )
    context = security.ssl_context()
    return None if context is None else faust.SSLCredentials(context)


def _decision_digest(item: dict[str, Any]) -> DecisionDigest:
    """The digest an ingest agent sent; items queued by an older worker carry a discrete choice."""
    if "decision" not in item:
        return DECISION_DIGEST.validate_python(
            {"kind": "discrete", "action": item["action"], "propensity": item["propensity"]}
        )
    return DECISION_DIGEST.validate_python(item["decision"])


def create_app(config: MonitoringConfig) -> faust.App:
    """Build the monitoring app; run it with `monitoring.run_monitor(config)`."""
    app_id = config.app_id
    app = faust.App(
        app_id,
        broker=_broker_urls(config.bootstrap_servers),
        broker_credentials=_credentials(config.kafka_security),
        store="memory://",
        autodiscover=False,
        processing_guarantee="at_least_once",
        topic_partitions=config.partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        broker_session_timeout=6,
        broker_heartbeat_interval=2,
        broker_max_poll_interval=10,
        consumer_auto_offset_reset="earliest",
        producer_linger=0.005,
        web_enabled=True,
        web_bind="127.0.0.1",
        web_port=config.web_port,
        datadir=str(config.data_dir),
    )
    stats = MonitorStats()

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(name, key_serializer="raw", value_serializer="raw")

    def internal_topic(name: str) -> faust.TopicT:
        return app.topic(
            f"{app_id}-{name}",
            partitions=config.partitions,
            internal=True,
            key_serializer="raw",
            value_serializer="json",
        )

    decisions_topic = raw_topic(config.topics.decisions)
    rewards_topic = raw_topic(config.topics.rewards)
    metrics_topic = raw_topic(config.topics.metrics)
    by_request = internal_topic("by-request")
    by_version = internal_topic("by-version")

    # request_id -> {"model_version", "seen_at_s"}
    request_versions = app.Table(f"{app_id}-request-version", partitions=config.partitions)
    # request_id -> {"first_seen_s", "rewards": [{"timestamp", "reward"}]}
    pending_rewards = app.Table(f"{app_id}-pending-rewards", partitions=config.partitions)
    # model_version -> VersionWindows as JSON
    version_windows = app.Table(f"{app_id}-windows", partitions=config.partitions)

    @app.agent(decisions_topic, name=f"{app_id}-ingest-decisions")
    async def ingest_decisions(stream: faust.StreamT) -> None:
        async for payload in stream:
            try:
                event = DecisionEvent.model_validate_json(payload or b"")
            except ValidationError:
                stats.invalid_decisions += 1
                continue
            stats.decisions += 1
            await by_request.send(
                key=event.request_id,
                value={
                    "kind": "decision",
                    "request_id": event.request_id,
                    "model_version": event.model_version,
                    "timestamp": event.timestamp.isoformat(),
                    "decision": digest_decision(event).model_dump(mode="json"),
                },
            )

    @app.agent(rewards_topic, name=f"{app_id}-ingest-rewards")
    async def ingest_rewards(stream: faust.StreamT) -> None:
        async for payload in stream:
            try:
                event = RewardEvent.model_validate_json(payload or b"")
            except ValidationError:
                stats.invalid_rewards += 1
                continue
            value = reward_value(event, config.reward_metrics)
            if value is None:  # no reward and no metrics to compute it from (the stream dead-letters it)
                stats.invalid_rewards += 1
                continue
            stats.rewards += 1
            await by_request.send(
                key=event.request_id,
                value={
                    "kind": "reward",
                    "request_id": event.request_id,
                    "timestamp": event.timestamp.isoformat(),
                    "reward": value,
                },
            )

    async def forward_reward(model_version: str, reward: dict[str, Any]) -> None:
        await by_version.send(
            key=model_version,
            value={
                "kind": "reward",
                "model_version": model_version,
                "timestamp": reward["timestamp"],
                "reward": reward["reward"],
            },
        )

    @app.agent(by_request, name=f"{app_id}-attribute")
    async def attribute(stream: faust.StreamT) -> None:
        async for item in stream:
            kind, request_id, now_s = item["kind"], item["request_id"], time.time()
            if kind == "decision":
                model_version = item["model_version"]
                request_versions[request_id] = {"model_version": model_version, "seen_at_s": now_s}
                await by_version.send(key=model_version, value={**item, "kind": "decision"})
                held = pending_rewards.get(request_id)
                if held is not None:
                    del pending_rewards[request_id]
                    for reward in held["rewards"]:
                        await forward_reward(model_version, reward)
            elif kind == "reward":
                known = request_versions.get(request_id)
                if known is not None:
                    await forward_reward(known["model_version"], item)
                    continue
                held = pending_rewards.get(request_id) or {"first_seen_s": now_s, "rewards": []}
                held["rewards"].append({"timestamp": item["timestamp"], "reward": item["reward"]})
                pending_rewards[request_id] = held
                stats.held_rewards += 1
            elif kind == "expire_pending":
                held = pending_rewards.get(request_id)
                if held is not None and now_s - held["first_seen_s"] >= config.reward_hold_s:
                    del pending_rewards[request_id]
                    stats.unattributed_rewards += len(held["rewards"])
                    logger.info(
                        "%d reward(s) for unknown request %r unattributed", len(held["rewards"]), request_id
                    )
            elif kind == "expire_request":
                known = request_versions.get(request_id)
                if known is not None and now_s - known["seen_at_s"] >= config.request_ttl_s:
                    del request_versions[request_id]

    # Parsing the stored JSON on every event dominates the cost; keep the parsed state while the
    # table still holds the very object we stored (recovery or another writer replaces it).
    parsed: dict[str, tuple[Any, VersionWindows]] = {}

    def load_state(model_version: str) -> VersionWindows | None:
        stored = version_windows.get(model_version)
        if stored is None:
            return None
        cached = parsed.get(model_version)
        if cached is not None and cached[0] is stored:
            return cached[1]
        return VersionWindows.model_validate(stored)

    @app.agent(by_version, name=f"{app_id}-aggregate")
    async def aggregate(stream: faust.StreamT) -> None:
        async for item in stream:
            model_version, now = item["model_version"], datetime.now(UTC)
            state = load_state(model_version)
            if state is None or state.window_s != config.window_s:
                state = VersionWindows(model_version=model_version, window_s=config.window_s)
            kind = item["kind"]
            if kind == "decision":
                accepted = state.add_decision(
                    datetime.fromisoformat(item["timestamp"]), _decision_digest(item), now
                )
                stats.late_events += not accepted
            elif kind == "reward":
                accepted = state.add_reward(datetime.fromisoformat(item["timestamp"]), item["reward"], now)
                stats.late_events += not accepted
            elif kind == "tick":
                for window in state.close_due(now, config):
                    await metrics_topic.send(key=model_version.encode(), value=window.to_json_bytes())
                    stats.windows_emitted += 1
            stored = state.model_dump(mode="json")
            version_windows[model_version] = stored
            parsed[model_version] = (stored, state)

    last_request_scan_s = 0.0

    @app.timer(config.emit_interval_s, name=f"{app_id}-tick")
    async def tick() -> None:
        nonlocal last_request_scan_s
        now_s = time.time()
        now = datetime.fromtimestamp(now_s, UTC)
        for model_version in list(version_windows.keys()):
            state = load_state(model_version)
            if state is not None and (
                state.has_due(now, config.allowed_lateness_s) or state.has_expired(now, config.retention_s)
            ):
                await by_version.send(
                    key=model_version, value={"kind": "tick", "model_version": model_version}
                )
        for request_id, held in list(pending_rewards.items()):
            if now_s - held["first_seen_s"] >= config.reward_hold_s:
                await by_request.send(
                    key=request_id, value={"kind": "expire_pending", "request_id": request_id}
                )
        if now_s - last_request_scan_s >= min(_REQUEST_SCAN_INTERVAL_S, config.request_ttl_s):
            last_request_scan_s = now_s
            for request_id, known in list(request_versions.items()):
                if now_s - known["seen_at_s"] >= config.request_ttl_s:
                    await by_request.send(
                        key=request_id, value={"kind": "expire_request", "request_id": request_id}
                    )

    @app.page("/stats/")
    async def stats_page(web: Any, request: Any) -> Any:
        return web.json(
            {
                **asdict(stats),
                "pending_requests": len(pending_rewards),
                "tracked_requests": len(request_versions),
                "model_versions": sorted(version_windows.keys()),
            }
        )

    return app
