"""Serving errors. The app's one exception handler maps each type to an HTTP status."""

from __future__ import annotations

from contracts import StreamrlError


class ServingError(StreamrlError):
    """Base of serving errors."""

    status_code = 500


class NoModelError(ServingError):
    """No model is loaded yet: nothing is deployed, or the deployed one failed to load."""

    status_code = 503

    def __init__(self, registry_root: str, reason: str) -> None:
        self.registry_root = registry_root
        self.reason = reason
        super().__init__(
            f"no model is loaded from registry {registry_root!r} ({reason}); "
            "deploy one with `streamrl deploy VERSION` (`streamrl deploy --list` shows the registered "
            "versions) and retry"
        )


class UnknownActionError(ServingError):
    """The request names actions the loaded model cannot score."""

    status_code = 422

    def __init__(self, unknown: list[str], known: list[str], model_version: str, where: str) -> None:
        self.unknown = unknown
        self.known = known
        self.model_version = model_version
        self.where = where
        super().__init__(
            f"{where}: possible_actions {unknown} are unknown to model {model_version!r}; "
            f"it knows {known}. Send only known actions (or deploy a model trained on them)"
        )


class BatchTooLargeError(ServingError):
    """A batch holds more requests than `ServingConfig.max_batch`."""

    status_code = 422

    def __init__(self, size: int, max_batch: int, field: str = "requests") -> None:
        self.size = size
        self.max_batch = max_batch
        super().__init__(f"{field} has {size} items; at most max_batch={max_batch} per call. Split the batch")


class RequestLimitError(ServingError):
    """A request holds more features or list items, or a longer string, than `ServingConfig.limits` allows."""

    status_code = 422

    def __init__(self, field: str, size: int, unit: str, limit_name: str, limit: int) -> None:
        self.field = field
        self.size = size
        self.limit = limit
        super().__init__(
            f"{field} has {size} {unit}; at most {limit} allowed (serving.limits.{limit_name}). "
            "Send fewer, or raise the limit in the environment file"
        )


class UnknownAppError(ServingError):
    """A request under /v1/apps/{app}/ names an app this process does not serve."""

    status_code = 404

    def __init__(self, app: str, served: str | None) -> None:
        self.app = app
        where = f"only app {served!r}" if served else "no named app (use /v1/act)"
        super().__init__(
            f"app {app!r} is not served here: this process serves {where}. Each app has its own serving "
            "process and port; `streamrl status` lists them"
        )


class ModelLoadError(ServingError):
    """A deployed model could not be loaded or failed its probe inference (serving keeps the old one)."""

    def __init__(self, version: str, reason: str) -> None:
        self.version = version
        self.reason = reason
        super().__init__(f"model {version!r} could not be loaded: {reason}")


class WrongKindError(ServingError):
    """A request of another action kind than the one served (see `contracts.ActionKind`)."""

    status_code = 422

    def __init__(self, field: str, sent: str, served: str, served_by: str, expected: str) -> None:
        self.field = field
        self.sent = sent
        self.served = served
        self.served_by = served_by
        super().__init__(
            f"{field}: {served_by} serves {served} actions, but this request's action_kind is {sent!r} "
            f"('discrete' when absent); send action_kind={served!r} with {expected}"
        )


class InvalidDecisionError(ServingError):
    """A request that fits its schema but not the served action space (unknown features, bounds, length)."""

    status_code = 422

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class ActionSpaceUnknownError(ServingError):
    """A continuous request before any model is loaded, with no `continuous_actions` configured."""

    status_code = 503

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"{what} needs the continuous action space, but no model is loaded and the serving config "
            "has no continuous_actions; set serving.continuous_actions: [{name, low, high}, ...] or deploy "
            "a continuous model"
        )


class ModelOutputError(ServingError):
    """The model answered non-finite numbers (e.g. features overflowing float32): no decision."""

    def __init__(self, version: str, request_ids: list[str], what: str = "action probabilities") -> None:
        self.version = version
        self.request_ids = request_ids
        super().__init__(
            f"model {version!r} produced non-finite {what} for requests {request_ids[:10]}; "
            "check those requests' feature values (out-of-range numbers?) and the model's normalization"
        )


class ServingStartupError(ServingError):
    """A dependency the server needs (broker, feature store) could not be set up at startup."""


class DecisionQueueFullError(ServingError):
    """The decision log's queue has no room for this call's decisions: they are neither answered nor
    logged; the client retries after `retry_after_s` (the `Retry-After` header)."""

    status_code = 503

    def __init__(self, decisions: int, depth: int, capacity: int, retry_after_s: int) -> None:
        self.decisions = decisions
        self.depth = depth
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        super().__init__(
            f"decision log queue full ({depth}/{capacity} queued, {decisions} more offered): the broker is "
            f"not keeping up, so these decisions were not taken and nothing was logged; retry after "
            f"{retry_after_s} s (Retry-After), and check the broker (`streamrl status`)"
        )


class AdminError(ServingError):
    """An admin call the registry refused: an unknown or broken version, nothing to roll back to."""

    status_code = 409

    def __init__(self, action: str, reason: str) -> None:
        self.action = action
        self.reason = reason
        super().__init__(f"{action} refused: {reason}")
