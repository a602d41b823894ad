"""Feature stage speed: identify 1,000,000 rows × 50 features (target ≤ 60 s on 2 cores), and
online reads for 1 entity (target p99 ≤ 2 ms) and 100 entities, Feast client vs the raw Redis reader.

Starts its own throw-away redis-server (no persistence) on a free port and stops it at the end.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features import NormalizationConfig, fit_normalization


def _frame(n: int, n_features: int) -> pd.DataFrame:
    """Every shape the identification tells apart, repeated across 50 columns, 5% missing."""
    rng = np.random.default_rng(0)
    makers = [
        lambda: rng.integers(0, 2, n).astype(float),  # binary
        lambda: rng.random(n),  # probability
        lambda: rng.integers(0, 7, n).astype(float),  # enum
        lambda: rng.normal(40.0, 12.0, n),  # continuous
        lambda: rng.lognormal(0.0, 1.0, n),  # boxcox
        lambda: rng.standard_cauchy(n),  # quantile
    ]
    columns = {}
    for j in range(n_features):
        values = makers[j % len(makers)]()
        values[rng.random(n) < 0.05] = np.nan
        columns[f"f{j:02d}"] = values
    return pd.DataFrame(columns)


def _identify(n: int = 1_000_000, n_features: int = 50) -> None:
    frame = _frame(n, n_features)
    started = time.perf_counter()
    spec = fit_normalization(frame, NormalizationConfig())
    elapsed = time.perf_counter() - started
    types = pd.Series([f.feature_type.value for f in spec.features]).value_counts().to_dict()
    print(f"   identify {n:,} rows × {n_features} features: {elapsed:.1f} s (target ≤ 60 s)  types {types}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))]


def _online(n_features: int = 22, n_entities: int = 1000) -> None:
    from features import (
        FeatureStoreConfig,
        OnlineFeatureReader,
        RedisOnlineFeatureReader,
        RedisReaderConfig,
        build_feature_store,
        push_context_features,
    )

    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="features-bench-"))
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        names = [f"f{j:02d}" for j in range(n_features)]
        config = FeatureStoreConfig(
            repo_dir=workdir / "repo", offline_dir=workdir / "offline", redis_connection=f"127.0.0.1:{port}",
            feature_names=names, project="bench",
        )  # fmt: skip
        store = build_feature_store(config)
        ids = [f"user-{i}" for i in range(n_entities)]
        rng = np.random.default_rng(0)
        rows = pd.DataFrame(rng.normal(size=(n_entities, n_features)), columns=names)
        rows.insert(0, "event_timestamp", pd.Timestamp.now(tz="UTC"))
        rows.insert(0, "entity_id", ids)
        push_context_features(store, rows, offline=False)
        readers = {
            "feast": OnlineFeatureReader(store, config),
            "redis": RedisOnlineFeatureReader(
                config.model_copy(update={"online_reader": RedisReaderConfig()})
            ),
        }
        assert readers["feast"].get(ids[:100]) == readers["redis"].get(ids[:100])
        results = {}
        for name, reader in readers.items():
            for batch, repeats in ((1, 2000), (100, 200)):
                for i in range(50):  # warm up
                    reader.get(ids[i : i + batch])
                samples = []
                for i in range(repeats):
                    start = i * batch % (n_entities - batch)
                    began = time.perf_counter()
                    reader.get(ids[start : start + batch])
                    samples.append(time.perf_counter() - began)
                results[name, batch] = _percentiles(samples)
                p50, p99 = results[name, batch]
                print(
                    f"   online read {name:<5} {batch:>3} entities × {n_features} features: p50 {p50:.2f} ms  p99 {p99:.2f} ms"
                )
        ratio = results["feast", 100][0] / results["redis", 100][0]
        print(
            f"   batched lookups: the Feast client is the bottleneck ({ratio:.1f}× slower at 100 entities); "
            "set feature_store online_reader: {type: redis} for the pipelined raw reader"
            if ratio > 2
            else f"   batched lookups: Feast client within {ratio:.1f}× of the raw reader"
        )
    finally:
        redis.terminate()
        redis.wait(timeout=10)


def main() -> None:
    _identify()
    _online()


if __name__ == "__main__":
    main()
