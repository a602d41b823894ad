"""The Feast feature store for context features: Redis online, parquet offline, defined in code.

One entity (`entity_id`), one feature view of float features fed by a push source. The repo is
written and applied programmatically (no CLI: a CLI call costs ~10 s of `import feast`).
Feast is imported inside functions only, so importing this module stays cheap.

Missing values are pushed as NaN and read back as `None` (never a sentinel).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts import StreamrlError

if TYPE_CHECKING:  # pragma: no cover
    import feast

__all__ = [
    "FeastReaderConfig",
    "FeatureStoreConfig",
    "FeatureStoreError",
    "OnlineFeatureReader",
    "RedisReaderConfig",
    "build_feature_store",
    "get_training_features",
    "open_feature_store",
    "push_context_features",
]

EVENT_TIMESTAMP = "event_timestamp"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class FeatureStoreError(StreamrlError):
    """The feature store could not be built, written or read."""

    def __init__(self, message: str, *, store: str = "") -> None:
        super().__init__(message)
        self.store = store


class FeastReaderConfig(BaseModel):
    """Serve online reads through Feast's `get_online_features` (the reference path)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["feast"] = "feast"


class RedisReaderConfig(BaseModel):
    """Serve online reads with one pipelined HMGET per batch straight from Feast's Redis layout.

    Same answers as the Feast reader (a test checks), without Feast's per-value Python conversion:
    ~10× faster for batches of 100 entities (see benchmarks/features_bench.py).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["redis"] = "redis"
    # Connect and read timeouts; no retries: a caller that cannot wait (serving) falls back at once.
    socket_timeout_s: float = Field(2.0, gt=0)


OnlineReaderConfig = Annotated[FeastReaderConfig | RedisReaderConfig, Field(discriminator="type")]


class FeatureStoreConfig(BaseModel):
    """Where the Feast repo lives and what it declares. `feature_names` is the feature view's schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 1
    repo_dir: Path
    project: str = "streamrl"
    redis_connection: str = Field(
        "127.0.0.1:6379", description="'host:port[,db=N]' (Feast's form) or a redis:// URL"
    )
    offline_dir: Path
    entity_name: str = "entity_id"
    feature_view: str = "context"
    push_source: str = "context_push"
    feature_names: list[str] = Field(min_length=1)
    ttl_s: int = Field(7 * 24 * 3600, gt=0, description="how far back the point-in-time join looks")
    online_key_ttl_s: int | None = Field(None, gt=0, description="Redis expiry of an entity's features")
    online_reader: OnlineReaderConfig = Field(default_factory=FeastReaderConfig)
    redis_username: str | None = Field(
        None, min_length=1, description="Redis ACL user (None: the default user)"
    )
    redis_password_env: str | None = Field(
        None,
        min_length=1,
        description="name of the environment variable holding the Redis password (never the password itself: "
        "Feast's repo file gets ${NAME}, expanded when Feast loads it)",
    )

    @field_validator("redis_connection")
    @classmethod
    def _feast_connection_string(cls, value: str) -> str:
        """Accept `redis://host:port/db` too (the local stack hands those out) and store Feast's form."""
        if value.startswith("redis://"):
            rest = value[len("redis://") :]
            address, _, db = rest.partition("/")
            if not address:
                raise ValueError(f"redis URL {value!r} has no host:port")
            return f"{address},db={int(db)}" if db else address
        if ":" not in value.split(",")[0]:
            raise ValueError(f"redis_connection {value!r} must be 'host:port' (e.g. 127.0.0.1:6379)")
        return value

    @field_validator("project", "entity_name", "feature_view", "push_source")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} must be letters, digits and underscores (a Feast object name)")
        return value

    @model_validator(mode="after")
    def _feature_names_usable(self) -> FeatureStoreConfig:
        reserved = {self.entity_name, EVENT_TIMESTAMP}
        clash = sorted(reserved.intersection(self.feature_names))
        duplicates = sorted({n for n in self.feature_names if self.feature_names.count(n) > 1})
        if clash or duplicates:
            raise ValueError(
                f"feature_names must be unique and not {sorted(reserved)}; clashes {clash}, duplicates {duplicates}"
            )
        return self

    @property
    def redis_address(self) -> tuple[str, int, int]:
        """(host, port, db) of the online store."""
        address, *options = self.redis_connection.split(",")
        host, _, port = address.rpartition(":")
        db = 0
        for option in options:
            key, _, value = option.partition("=")
            if key.strip() == "db":
                db = int(value)
        return host, int(port), db

    def redis_credentials(self) -> dict[str, str]:
        """`username`/`password` keyword arguments for redis.Redis: none without `redis_password_env`."""
        out = {} if self.redis_username is None else {"username": self.redis_username}
        if self.redis_password_env is not None:
            password = os.environ.get(self.redis_password_env)
            if not password:
                raise FeatureStoreError(
                    f"the online store's password is read from the environment variable {self.redis_password_env} "
                    "(feature_store.redis_password_env), which is not set",
                    store="redis",
                )
            out["password"] = password
        return out

    @property
    def offline_path(self) -> Path:
        """The parquet file behind the feature view's batch source."""
        return self.offline_dir.resolve() / f"{self.feature_view}.parquet"

    @property
    def feature_refs(self) -> list[str]:
        return [f"{self.feature_view}:{name}" for name in self.feature_names]


def _check_redis(config: FeatureStoreConfig) -> None:
    import redis

    host, port, db = config.redis_address
    client = redis.Redis(
        host=host,
        port=port,
        db=db,
        socket_connect_timeout=2.0,
        socket_timeout=2.0,
        **config.redis_credentials(),
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        raise FeatureStoreError(
            f"online store 'redis' unreachable at {host}:{port} (db {db}): {exc}; "
            "is the local stack up? run `streamrl stack up`",
            store="redis",
        ) from exc
    finally:
        client.close()


def _repo_yaml(config: FeatureStoreConfig) -> str:
    import yaml

    connection = config.redis_connection
    if config.redis_username is not None:
        connection += f",username={config.redis_username}"
    if config.redis_password_env is not None:  # Feast expands ${NAME} when it loads the file
        connection += f",password=${{{config.redis_password_env}}}"
    online: dict[str, Any] = {"type": "redis", "connection_string": connection}
    if config.online_key_ttl_s is not None:
        online["key_ttl_seconds"] = config.online_key_ttl_s
    document = {
        "project": config.project,
        "provider": "local",
        "registry": {"path": str(config.repo_dir.resolve() / "registry.db"), "cache_ttl_seconds": 60},
        "online_store": online,
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }
    return yaml.safe_dump(document, sort_keys=False)


def _ensure_offline_file(config: FeatureStoreConfig) -> None:
    """Feast's file offline store appends by rewriting an existing parquet file: create it empty once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = config.offline_path
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [(config.entity_name, pa.string()), (EVENT_TIMESTAMP, pa.timestamp("us", tz="UTC"))]
        + [(name, pa.float64()) for name in config.feature_names]
    )
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(schema.empty_table(), tmp)
    tmp.replace(path)


def _objects(config: FeatureStoreConfig) -> list[Any]:
    from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.types import Float64

    entity = Entity(name=config.entity_name, join_keys=[config.entity_name], value_type=ValueType.STRING)
    batch = FileSource(
        name=f"{config.feature_view}_offline", path=str(config.offline_path), timestamp_field=EVENT_TIMESTAMP
    )
    push = PushSource(name=config.push_source, batch_source=batch)
    view = FeatureView(
        name=config.feature_view,
        entities=[entity],
        ttl=timedelta(seconds=config.ttl_s),
        schema=[Field(name=name, dtype=Float64) for name in config.feature_names],
        source=push,
        online=True,
    )
    return [entity, push, view]


def open_feature_store(config: FeatureStoreConfig) -> feast.FeatureStore:
    """Open an already built repo (no registry writes): for readers such as serving."""
    from feast import FeatureStore

    if not (config.repo_dir / "feature_store.yaml").exists():
        raise FeatureStoreError(
            f"no feature_store.yaml in {config.repo_dir}; build the repo first with build_feature_store(config)",
            store="feast",
        )
    _check_redis(config)
    return FeatureStore(repo_path=str(config.repo_dir.resolve()))


def build_feature_store(config: FeatureStoreConfig) -> feast.FeatureStore:
    """Write feature_store.yaml, create the offline parquet and apply entity/sources/view (idempotent)."""
    from feast import FeatureStore

    _check_redis(config)
    config.repo_dir.mkdir(parents=True, exist_ok=True)
    yaml_path = config.repo_dir / "feature_store.yaml"
    text = _repo_yaml(config)
    if not yaml_path.exists() or yaml_path.read_text() != text:
        tmp = yaml_path.with_suffix(".yaml.tmp")
        tmp.write_text(text)
        tmp.replace(yaml_path)
    _ensure_offline_file(config)
    store = FeatureStore(repo_path=str(config.repo_dir.resolve()))
    try:
        store.apply(_objects(config))
    except Exception as exc:  # Feast raises many unrelated types; keep the cause chained
        raise FeatureStoreError(
            f"applying feature view {config.feature_view!r} to the Feast repo in {config.repo_dir} failed: {exc}",
            store="feast",
        ) from exc
    return store


def _store_error(action: str, store: feast.FeatureStore, exc: Exception) -> FeatureStoreError:
    import redis

    if isinstance(exc, redis.RedisError):
        connection = getattr(store.config.online_store, "connection_string", "?")
        return FeatureStoreError(
            f"{action}: online store 'redis' at {connection} failed: {exc}; "
            "is the local stack up? run `streamrl stack up`",
            store="redis",
        )
    return FeatureStoreError(f"{action} failed: {exc}", store="feast")


def _feature_columns(store: feast.FeatureStore, feature_view: str) -> tuple[str, list[str]]:
    view = store.get_feature_view(feature_view)
    return view.entity_columns[0].name, [f.name for f in view.features]


def push_context_features(
    store: feast.FeatureStore,
    rows: pd.DataFrame,
    *,
    offline: bool = True,
    feature_view: str = "context",
) -> int:
    """Push rows (entity_id, event_timestamp, one float column per feature; NaN = missing).

    Online, Feast keeps per entity the row with the newest event_timestamp. With `offline=True`
    the rows are also appended to the parquet history the point-in-time join reads (Feast's file
    store rewrites the whole file per call: push batches, not single rows). Returns rows pushed.
    """
    from feast.data_source import PushMode

    if rows.empty:
        return 0
    entity, features = _feature_columns(store, feature_view)
    push_source = store.get_feature_view(feature_view).stream_source.name
    missing = [c for c in [entity, EVENT_TIMESTAMP] if c not in rows.columns]
    if missing:
        raise FeatureStoreError(
            f"rows to push lack columns {missing}; have {list(rows.columns)}", store="feast"
        )
    frame = pd.DataFrame(
        {
            entity: rows[entity].astype(str).reset_index(drop=True),
            EVENT_TIMESTAMP: pd.to_datetime(rows[EVENT_TIMESTAMP], utc=True)
            .dt.as_unit("us")
            .reset_index(drop=True),
        }
    )
    for name in features:  # absent columns are missing features; column order is the batch source's
        frame[name] = (
            rows[name].astype("float64").reset_index(drop=True) if name in rows.columns else math.nan
        )
    try:
        store.push(push_source, frame, to=PushMode.ONLINE_AND_OFFLINE if offline else PushMode.ONLINE)
    except Exception as exc:
        raise _store_error(f"pushing {len(frame)} rows to {push_source!r}", store, exc) from exc
    return len(frame)


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


class OnlineFeatureReader:
    """Latest context features per entity, in the order requested (Feast's dicts are not)."""

    def __init__(self, store: feast.FeatureStore, config: FeatureStoreConfig) -> None:
        self.store = store
        self.config = config
        self._refs = config.feature_refs

    def get(self, entity_ids: Sequence[str]) -> list[dict[str, float | None]]:
        """One dict per requested id with every configured feature; unknown entities get all None."""
        if not entity_ids:
            return []
        key = self.config.entity_name
        try:
            response = self.store.get_online_features(
                features=self._refs, entity_rows=[{key: str(e)} for e in entity_ids]
            ).to_dict()
        except Exception as exc:
            raise _store_error(
                f"reading online features for {len(entity_ids)} entities", self.store, exc
            ) from exc
        returned = response[key]
        columns = [(name, response[name]) for name in self.config.feature_names]
        by_entity = {
            entity: {name: _as_float(values[i]) for name, values in columns}
            for i, entity in enumerate(returned)
        }
        return [dict(by_entity[str(e)]) for e in entity_ids]


def get_training_features(
    store: feast.FeatureStore, entity_df: pd.DataFrame, *, feature_view: str = "context"
) -> pd.DataFrame:
    """Point-in-time join: for each (entity_id, event_timestamp) row, the latest features at or before it.

    Returns `entity_df`'s rows in their original order with one column per feature (NaN when none
    is known within the feature view's ttl). Values from after a row's timestamp never leak in.
    """
    entity, features = _feature_columns(store, feature_view)
    missing = [c for c in [entity, EVENT_TIMESTAMP] if c not in entity_df.columns]
    if missing:
        raise FeatureStoreError(
            f"entity_df lacks columns {missing}; it needs {entity!r} and {EVENT_TIMESTAMP!r} (UTC)",
            store="feast",
        )
    order = "__streamrl_row"
    query = entity_df.copy()
    query[order] = range(len(query))
    query[EVENT_TIMESTAMP] = pd.to_datetime(query[EVENT_TIMESTAMP], utc=True)
    try:
        joined = store.get_historical_features(
            entity_df=query, features=[f"{feature_view}:{name}" for name in features]
        ).to_df()
    except Exception as exc:
        raise _store_error(f"point-in-time join of {len(query)} rows", store, exc) from exc
    # Feast drops entity rows that match no feature row; put them back (all NaN) in the caller's order.
    matched = joined.set_index(order)[features].reindex(range(len(query)))
    result = entity_df.reset_index(drop=True).copy()
    for name in features:
        result[name] = matched[name].astype("float64").to_numpy()
    return result
