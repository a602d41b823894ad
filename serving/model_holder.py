"""The models being served, and the background thread that follows the registry's deploy pointer.

Requests take one `Served` snapshot (the deployed model and the canary, if any) and use it to
the end, so a swap never mixes two models inside one request. A model that fails to load or to
answer a probe inference is never swapped in: serving keeps the previous model, counts the
failure and says why in the log and in `/healthz`. Rollback is the pointer moving back, handled
the same way.

A canary (`DeploymentState.canary`) is followed in the same poll: its model is loaded and held
to the same checks, and `Served.model_for` sends it the episodes `canary_takes` gives it. A
canary that cannot be loaded is counted like a failed swap and serving answers with the
deployed model alone; when the canary ends it is dropped, and when it is promoted the loaded
canary becomes the deployed model.

A model must also fit what the server's clients send: its action kind must be the configured
one (`ServingConfig.action_kind`) or, without one, the served model's; a continuous model's
dimensions and bounds must be the configured `continuous_actions` when those are set.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from contracts import ActionKind
from serving._metrics import ServingMetrics
from serving.config import ContinuousActionConfig
from serving.errors import ModelLoadError
from trainer import CanaryState, ModelRegistry, canary_takes
from trainer.artifact import ModelMetadata
from trainer.onnx_policy import ContinuousPolicy, ServedPolicy, load_policy
from trainer.signatures import check_signature

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One loaded, probed model version; immutable so requests can hold it across a swap."""

    version: str
    policy: ServedPolicy  # the kind's policy (`trainer.onnx_policy.load_policy`)
    metadata: ModelMetadata
    action_index: dict[str, int]  # discrete action name -> column; empty for the other kinds

    @property
    def action_kind(self) -> ActionKind:
        return self.metadata.action_kind


@dataclass(frozen=True, slots=True)
class Canary:
    """A candidate model served to `share` of the episodes beside the deployed one."""

    model: LoadedModel
    share: float


@dataclass(frozen=True, slots=True)
class Served:
    """What one request decides with: the deployed model (None: the day-0 fallback) and the canary."""

    current: LoadedModel | None = None
    canary: Canary | None = None

    def model_for(self, key: str) -> LoadedModel | None:
        """The model that serves episode `key` (a request's `mdp_id`): the canary for its share."""
        if self.canary is not None and canary_takes(key, self.canary.share):
            return self.canary.model
        return self.current


def load_model(registry: ModelRegistry, version: str) -> LoadedModel:
    """Load `version` (sha256-checked), hold it to its kind's ONNX signature and probe it.

    Raises `ModelLoadError` naming the problem when the model is unfit to serve.
    """
    try:
        path, metadata = registry.get(version)
        check_signature(metadata, path)
        policy = load_policy(path, metadata)
        policy.probe()
    except Exception as exc:  # any failure means "do not serve this model"; the cause is chained
        raise ModelLoadError(version, f"{type(exc).__name__}: {exc}") from exc
    return LoadedModel(
        version=version,
        policy=policy,
        metadata=metadata,
        action_index=(
            {action: i for i, action in enumerate(metadata.actions)}
            if metadata.action_kind is ActionKind.DISCRETE
            else {}
        ),
    )


def misfit(
    model: LoadedModel,
    expected_kind: ActionKind | None,
    continuous_actions: list[ContinuousActionConfig] | None,
) -> str | None:
    """Why `model` does not fit what this server's clients send; None when it does."""
    if expected_kind is not None and model.action_kind is not expected_kind:
        return (
            f"it serves {model.action_kind.value} actions, but this server serves {expected_kind.value} "
            f"ones (serving.action_kind, or the kind of the model served so far); deploy a "
            f"{expected_kind.value} model, or change serving.action_kind and restart serving"
        )
    if model.action_kind is ActionKind.CONTINUOUS and continuous_actions is not None:
        policy: ContinuousPolicy = model.policy  # type: ignore[assignment]
        names = [d.name for d in continuous_actions]
        if list(model.metadata.actions) != names:
            return (
                f"its action dimensions are {model.metadata.actions}, serving.continuous_actions names "
                f"{names}; they must match in order"
            )
        low = np.array([d.low for d in continuous_actions])
        high = np.array([d.high for d in continuous_actions])
        if not (np.allclose(policy.action_low, low) and np.allclose(policy.action_high, high)):
            return (
                f"its action bounds are low={np.asarray(policy.action_low).tolist()}, "
                f"high={np.asarray(policy.action_high).tolist()}; serving.continuous_actions says "
                f"low={low.tolist()}, high={high.tolist()}"
            )
    return None


class ModelHolder:
    """Holds the served models and follows the registry's deploy pointer: the deployed version and the canary."""

    def __init__(
        self,
        registry_root: Path,
        poll_interval_s: float,
        metrics: ServingMetrics,
        *,
        action_kind: ActionKind | None = None,
        continuous_actions: list[ContinuousActionConfig] | None = None,
    ) -> None:
        self._registry_root = Path(registry_root)
        self._action_kind = action_kind
        self._continuous_actions = continuous_actions
        self._registry = ModelRegistry(self._registry_root)
        self._poll_interval_s = poll_interval_s
        self._metrics = metrics
        self._served = Served()  # replaced whole, never changed in place: requests hold a snapshot
        self._reload_lock = threading.Lock()
        self._failed_version: str | None = None
        self._last_error: str | None = None
        self._failed_canary: str | None = None
        self._canary_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def last_error(self) -> str | None:
        """Why the deploy pointer is not what is served (None when they agree): the deployed
        version's problem, the canary's, or both."""
        return "; ".join(e for e in (self._last_error, self._canary_error) if e is not None) or None

    def snapshot(self) -> Served:
        """The deployed model and the canary as one value: a request takes it once, at its start."""
        return self._served

    def current(self) -> LoadedModel | None:
        return self._served.current

    def canary(self) -> Canary | None:
        return self._served.canary

    def reload(self, force: bool = False) -> bool:
        """Read the deploy pointer once and follow it, the deployed version then the canary; True
        when what is served changed.

        A version that already failed is not retried until the pointer moves (or `force`), so a
        corrupt deploy or canary is counted once rather than on every poll.
        """
        with self._reload_lock:
            try:
                state = self._registry.deployment_state()
            except Exception as exc:
                self._record_failure(None, f"reading the deploy pointer failed: {type(exc).__name__}: {exc}")
                return False
            swapped = self._follow_current(state.current, force)
            return self._follow_canary(state.canary, force) or swapped

    def _follow_current(self, deployed: str | None, force: bool) -> bool:
        served = self._served
        current = served.current
        if deployed is None:
            if current is not None:
                logger.warning("deploy pointer is empty; keeping model %s", current.version)
            return False
        if current is not None and deployed == current.version:
            self._failed_version, self._last_error = None, None
            return False
        if deployed == self._failed_version and not force:
            return False
        if served.canary is not None and served.canary.model.version == deployed:
            model = served.canary.model  # the canary was promoted: loaded and checked already
        else:
            try:
                model = self._load_fitting(deployed)
            except ModelLoadError as exc:
                self._record_failure(deployed, str(exc))
                return False
        self._served = replace(served, current=model)  # one reference assignment
        self._failed_version, self._last_error = None, None
        self._metrics.add("model_swaps")
        self._metrics.model_version = model.version
        logger.info("serving model %s (was %s)", model.version, current.version if current else "nothing")
        return True

    def _follow_canary(self, wanted: CanaryState | None, force: bool) -> bool:
        served = self._served
        running = served.canary
        if wanted is None:
            self._failed_canary, self._canary_error = None, None
            if running is None:
                return False
            self._served = replace(served, canary=None)
            logger.info("canary %s ended", running.model.version)
            return True
        if running is not None and running.model.version == wanted.version:
            self._failed_canary, self._canary_error = None, None
            if running.share == wanted.share:
                return False
            self._served = replace(served, canary=Canary(running.model, wanted.share))
            return True
        if wanted.version == self._failed_canary and not force:
            return False
        try:
            model = self._load_fitting(wanted.version)
        except ModelLoadError as exc:
            self._served = replace(served, canary=None)  # a replaced canary has ended in the registry
            self._failed_canary = wanted.version
            alone = served.current.version if served.current else "the fallback"
            self._canary_error = f"canary {exc}; serving {alone} alone"
            self._metrics.add("model_swap_failures")
            logger.error("canary swap failed: %s", self._canary_error)
            return running is not None
        self._served = replace(served, canary=Canary(model, wanted.share))
        self._failed_canary, self._canary_error = None, None
        logger.info(
            "serving canary %s to %.1f%% of the episodes (was %s)",
            model.version,
            100 * wanted.share,
            running.model.version if running else "no canary",
        )
        return True

    def _load_fitting(self, version: str) -> LoadedModel:
        """`load_model`, then `misfit` against the configured kind or the served model's."""
        model = load_model(self._registry, version)
        current = self._served.current
        expected_kind = self._action_kind or (current.action_kind if current else None)
        problem = misfit(model, expected_kind, self._continuous_actions)
        if problem is not None:
            raise ModelLoadError(version, problem)
        return model

    def _record_failure(self, version: str | None, reason: str) -> None:
        self._failed_version = version
        served = self._served.current.version if self._served.current else "nothing"
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
