"""The model being served, and the background thread that follows the registry's deploy pointer.

Requests take a reference to the current `LoadedModel` once and use it to the end, so a swap
never mixes two models inside one request. A model that fails to load or to answer a probe
inference is never swapped in: serving keeps the previous model, counts the failure and says
why in the log and in `/healthz`. Rollback is the pointer moving back, handled the same way.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving._metrics import ServingMetrics
from serving.errors import ModelLoadError, NoModelError
from trainer import ModelRegistry, OnnxPolicy
from trainer.artifact import ModelMetadata

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One loaded, probed model version; immutable so requests can hold it across a swap."""

    version: str
    policy: OnnxPolicy
    metadata: ModelMetadata
    action_index: dict[str, int]


def _probe(policy: OnnxPolicy, metadata: ModelMetadata) -> None:
    """Run the model on an all-missing batch and check it answers a proper distribution."""
    n_features, n_actions = len(metadata.feature_names), len(metadata.actions)
    features = np.full((2, n_features), np.nan, dtype=np.float32)
    features[1] = 0.0
    mask = np.ones((2, n_actions), dtype=np.float32)
    probabilities = np.asarray(policy.probabilities(features, mask))
    if probabilities.shape != (2, n_actions):
        raise ValueError(f"probe returned shape {probabilities.shape}, expected {(2, n_actions)}")
    if not np.isfinite(probabilities).all() or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5):
        raise ValueError(f"probe returned an invalid distribution {probabilities.tolist()}")


def load_model(registry: ModelRegistry, version: str) -> LoadedModel:
    """Load `version` from the registry (sha256-checked) and probe it; raise `ModelLoadError` if unfit."""
    try:
        path, metadata = registry.get(version)
        policy = OnnxPolicy(path, metadata)
        _probe(policy, metadata)
    except Exception as exc:  # any failure means "do not serve this model"; the cause is chained
        raise ModelLoadError(version, f"{type(exc).__name__}: {exc}") from exc
    return LoadedModel(
        version=version,
        policy=policy,
        metadata=metadata,
        action_index={action: i for i, action in enumerate(metadata.actions)},
    )


class ModelHolder:
    """Holds the served model and swaps it when `registry.deployed()` changes."""

    def __init__(self, registry_root: Path, poll_interval_s: float, metrics: ServingMetrics) -> None:
        self._registry_root = Path(registry_root)
        self._registry = ModelRegistry(self._registry_root)
        self._poll_interval_s = poll_interval_s
        self._metrics = metrics
        self._current: LoadedModel | None = None
        self._reload_lock = threading.Lock()
        self._failed_version: str | None = None
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def last_error(self) -> str | None:
        """Why the deployed pointer is not what is served (None when they agree)."""
        return self._last_error

    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        """The model to score one request with; raises `NoModelError` (503) when there is none."""
        model = self._current
        if model is None:
            raise NoModelError(str(self._registry_root), self._last_error or "nothing is deployed")
        return model

    def reload(self, force: bool = False) -> bool:
        """Check the deploy pointer once and swap if it moved; True when a new model was swapped in.

        A version that already failed is not retried until the pointer moves (or `force`), so a
        corrupt deploy is counted once rather than on every poll.
        """
        with self._reload_lock:
            try:
                deployed = self._registry.deployed()
            except Exception as exc:
                self._record_failure(None, f"reading the deploy pointer failed: {type(exc).__name__}: {exc}")
                return False
            current = self._current
            if deployed is None:
                if current is not None:
                    logger.warning("deploy pointer is empty; keeping model %s", current.version)
                return False
            if current is not None and deployed == current.version:
                self._failed_version, self._last_error = None, None
                return False
            if deployed == self._failed_version and not force:
                return False
            try:
                model = load_model(self._registry, deployed)
            except ModelLoadError as exc:
                self._record_failure(deployed, str(exc))
                return False
            self._current = model  # one reference assignment: requests see the old or the new model
            self._failed_version, self._last_error = None, None
            self._metrics.add("model_swaps")
            self._metrics.model_version = model.version
            logger.info("serving model %s (was %s)", model.version, current.version if current else "nothing")
            return True

    def _record_failure(self, version: str | None, reason: str) -> None:
        self._failed_version = version
        served = self._current.version if self._current else "nothing"
        self._last_error = f"{reason}; still serving {served}"
        self._metrics.add("model_swap_failures")
        logger.error("model swap failed: %s", self._last_error)

    def start(self) -> None:
        """Load the deployed model now, then follow the pointer in a daemon thread."""
        self.reload()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="streamrl-model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._poll_interval_s + 5.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            try:
                self.reload()
            except Exception:  # the poller must survive anything; reload already records known failures
                logger.exception("model poller iteration failed")
