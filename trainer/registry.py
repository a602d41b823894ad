"""A local model registry: versioned ONNX + metadata folders and one atomically moved deploy pointer.

Layout under `root`:
  models/<version>/model.onnx      the graph (written first)
  models/<version>/metadata.json   `ModelMetadata` (written last: a version without it is incomplete)
  deployed.json                    `DeploymentState`: current version, an optional canary, and the
                                   history, replaced atomically
Serving watches `deployed.json`; evaluation moves it through `deploy` / `rollback`, and through
`start_canary` / `end_canary` when a candidate the logged data cannot judge serves a share of the
episodes until their realized returns can (`evaluation.canary`). Before the pointer moves, the
target's graph is held to its kind's serving signature (`trainer.signatures.check_signature`); a
refused model leaves the pointer where it was.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts import ActionKind
from trainer.artifact import DataRange, ModelMetadata
from trainer.errors import CorruptModelError, RegistryError
from trainer.policy import EpsilonGreedyExploration, ExplorationConfig
from trainer.signatures import check_signature

_VERSION_RE = re.compile(r"^m(\d{4,})-([0-9a-f]{8})$")
_METADATA_FILE = "metadata.json"
_POINTER_FILE = "deployed.json"


class DeploymentKind(StrEnum):
    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    CANARY_START = "canary_start"
    CANARY_STOP = "canary_stop"  # the canary ended without being deployed (a promotion is a DEPLOY)


class DeploymentEvent(BaseModel):
    """One move of the deploy pointer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: DeploymentKind
    version: str
    previous: str | None
    at: datetime
    reason: str


class CanaryState(BaseModel):
    """A candidate served to `share` of the episodes beside the current version, since `started_at`.

    Serving routes each episode (its `mdp_id`, else its entity) by a stable hash (`canary_takes`),
    so a whole episode stays on one model; `baseline` is what the other episodes get (the current
    version, or None: serving's day-0 fallback)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    share: float = Field(gt=0.0, lt=1.0)
    baseline: str | None
    started_at: datetime
    reason: str


class DeploymentState(BaseModel):
    """Contents of `deployed.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    current: str | None = None
    canary: CanaryState | None = None
    history: list[DeploymentEvent] = Field(default_factory=list)

    def deploy_stack(self) -> list[str]:
        """Versions in deploy order with rolled-back ones removed; the last one is current."""
        stack: list[str] = []
        for event in self.history:
            if event.kind is DeploymentKind.DEPLOY:
                stack.append(event.version)
            elif event.kind is DeploymentKind.ROLLBACK and stack:
                stack.pop()
        return stack


def canary_takes(key: str, share: float) -> bool:
    """Whether the episode or entity `key` goes to the canary: its first 8 bytes of BLAKE2b as a
    fraction of 2⁶⁴, below `share`. Stable across processes and restarts (unlike `hash`)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < share


class ModelRegistry:
    """Register, verify, deploy and roll back models stored under one directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.pointer_path = self.root / _POINTER_FILE

    def register(
        self,
        onnx: bytes | Path | str,
        *,
        feature_names: list[str],
        actions: list[str],
        algorithm: str,
        action_kind: ActionKind | None = None,
        algorithm_config: dict[str, Any] | None = None,
        exploration: ExplorationConfig | None = None,
        normalization_spec_version: str | None = None,
        normalization_spec_sha256: str | None = None,
        data_range: DataRange | None = None,
        training_metrics: dict[str, float] | None = None,
        code_version: str = "unknown",
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
        action_feature_names: list[str] | None = None,
        action_normalization_spec_sha256: str | None = None,
    ) -> ModelMetadata:
        """Store a model under a new version `mNNNN-<sha8>`; refuses a graph onnxruntime cannot load.

        `input_names`/`output_names` default to the discrete contract (`trainer.artifact`);
        `action_kind` defaults to the kind those names imply (`ModelMetadata`). Registering checks
        no serving signature: `deploy` does.
        """
        onnx_bytes = onnx if isinstance(onnx, bytes) else Path(onnx).read_bytes()
        sha256 = hashlib.sha256(onnx_bytes).hexdigest()
        _load_session(onnx_bytes, version="<unregistered>", path="<bytes>")
        self.models_dir.mkdir(parents=True, exist_ok=True)
        directory, version = self._claim_version_dir(sha256)
        metadata = ModelMetadata(
            version=version,
            created_at=datetime.now(UTC),
            algorithm=algorithm,
            algorithm_config=algorithm_config or {},
            **({} if action_kind is None else {"action_kind": action_kind}),
            onnx_sha256=sha256,
            feature_names=feature_names,
            actions=actions,
            exploration=exploration or EpsilonGreedyExploration(),
            normalization_spec_version=normalization_spec_version,
            normalization_spec_sha256=normalization_spec_sha256,
            data_range=data_range or DataRange(),
            training_metrics=training_metrics or {},
            code_version=code_version,
            action_feature_names=action_feature_names,
            action_normalization_spec_sha256=action_normalization_spec_sha256,
            **({} if input_names is None else {"input_names": input_names}),
            **({} if output_names is None else {"output_names": output_names}),
        )
        _atomic_write(directory / metadata.onnx_file, onnx_bytes)
        _atomic_write(directory / _METADATA_FILE, metadata.model_dump_json(indent=2).encode("utf-8"))
        return metadata

    def list_versions(self) -> list[str]:
        """Complete versions (metadata written), oldest first."""
        if not self.models_dir.is_dir():
            return []
        versions = [
            d.name
            for d in self.models_dir.iterdir()
            if _VERSION_RE.match(d.name) and (d / _METADATA_FILE).is_file()
        ]
        return sorted(versions, key=lambda v: int(_VERSION_RE.match(v).group(1)))

    def metadata(self, version: str) -> ModelMetadata:
        """Read a version's metadata without verifying its graph (cheap; for listings)."""
        path = self.models_dir / version / _METADATA_FILE
        if not path.is_file():
            raise RegistryError(
                f"model version {version!r} is not in the registry at {self.root} "
                f"(known: {self.list_versions()[-5:]})",
                version=version,
            )
        try:
            return ModelMetadata.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            raise CorruptModelError(
                f"metadata of model {version!r} at {path} is not valid ModelMetadata: {exc.errors()[:3]}; "
                "re-register the model",
                version=version,
                path=str(path),
            ) from exc

    def get(self, version: str) -> tuple[Path, ModelMetadata]:
        """Path and metadata of a version, after checking its sha256 and that onnxruntime loads it."""
        metadata = self.metadata(version)
        path = self.models_dir / version / metadata.onnx_file
        try:
            onnx_bytes = path.read_bytes()
        except OSError as exc:
            raise CorruptModelError(
                f"model {version!r}: cannot read {path} ({exc}); re-register the model",
                version=version,
                path=str(path),
            ) from exc
        actual = hashlib.sha256(onnx_bytes).hexdigest()
        if actual != metadata.onnx_sha256:
            raise CorruptModelError(
                f"model {version!r}: {path} has sha256 {actual[:16]}…, metadata says "
                f"{metadata.onnx_sha256[:16]}…; the file was modified or damaged — re-register it",
                version=version,
                path=str(path),
            )
        session = _load_session(onnx_bytes, version=version, path=str(path))
        names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if names != (metadata.input_names, metadata.output_names):
            raise CorruptModelError(
                f"model {version!r}: graph inputs/outputs {names} differ from metadata "
                f"{(metadata.input_names, metadata.output_names)}",
                version=version,
                path=str(path),
            )
        return path, metadata

    def verify_servable(self, version: str) -> tuple[Path, ModelMetadata]:
        """`get`, then `check_signature`: what the deploy pointer requires of a version."""
        path, metadata = self.get(version)
        check_signature(metadata, path)
        return path, metadata

    def deployed(self) -> str | None:
        """The currently deployed version, or None if nothing was ever deployed."""
        return self.deployment_state().current

    def deployment_state(self) -> DeploymentState:
        """Contents of `deployed.json` (an empty state if it does not exist yet)."""
        try:
            text = self.pointer_path.read_bytes()
        except FileNotFoundError:
            return DeploymentState()
        try:
            return DeploymentState.model_validate_json(text)
        except ValidationError as exc:
            raise RegistryError(
                f"deploy pointer {self.pointer_path} is not a valid DeploymentState: {exc.errors()[:3]}; "
                "restore it from backup or redeploy a version"
            ) from exc

    def deploy(self, version: str, reason: str) -> DeploymentState:
        """Point `deployed.json` at `version` after verifying it; a corrupt model (`CorruptModelError`)
        or one that does not fit its kind's serving signature (`SignatureMismatchError`) leaves it unchanged.
        A running canary ends with it (promoted when it is `version`): it was compared with the
        version that is no longer current.
        """
        self.verify_servable(version)
        with self._locked():
            state = self.deployment_state()
            event = DeploymentEvent(
                kind=DeploymentKind.DEPLOY,
                version=version,
                previous=state.current,
                at=datetime.now(UTC),
                reason=reason,
            )
            events = list(state.history)
            if state.canary is not None and state.canary.version != version:
                events.append(self._canary_stop(state, f"{version} deployed instead", event.at))
            return self._write_state(DeploymentState(current=version, history=[*events, event]))

    def canary(self) -> CanaryState | None:
        """The running canary, or None."""
        return self.deployment_state().canary

    def start_canary(self, version: str, share: float, reason: str) -> DeploymentState:
        """Serve `version` to `share` of the episodes beside the current version (replacing any
        running canary), after the same verification as `deploy`; its kind must be the current one's."""
        _, metadata = self.verify_servable(version)
        with self._locked():
            state = self.deployment_state()
            if state.current is not None and version == state.current:
                raise RegistryError(f"model {version} is already deployed; a canary must be another version")
            if state.current is not None:
                current_kind = self.metadata(state.current).action_kind
                if current_kind != metadata.action_kind:
                    raise RegistryError(
                        f"canary {version} is a {metadata.action_kind.value} model but the deployed "
                        f"{state.current} is {current_kind.value}; serving answers one kind"
                    )
            now = datetime.now(UTC)
            events = list(state.history)
            if state.canary is not None:
                events.append(self._canary_stop(state, f"replaced by canary {version}", now))
            events.append(
                DeploymentEvent(
                    kind=DeploymentKind.CANARY_START,
                    version=version,
                    previous=state.current,
                    at=now,
                    reason=reason,
                )
            )
            canary = CanaryState(
                version=version, share=share, baseline=state.current, started_at=now, reason=reason
            )
            return self._write_state(state.model_copy(update={"canary": canary, "history": events}))

    def end_canary(self, *, promote: bool, reason: str) -> DeploymentState:
        """End the running canary: deploy it (`promote`) or go back to the current version alone."""
        state = self.deployment_state()
        if state.canary is None:
            raise RegistryError(f"no canary is running in {self.root}")
        if promote:
            return self.deploy(state.canary.version, reason)
        with self._locked():
            state = self.deployment_state()
            if state.canary is None:
                return state
            event = self._canary_stop(state, reason, datetime.now(UTC))
            return self._write_state(
                state.model_copy(update={"canary": None, "history": [*state.history, event]})
            )

    @staticmethod
    def _canary_stop(state: DeploymentState, reason: str, at: datetime) -> DeploymentEvent:
        assert state.canary is not None
        return DeploymentEvent(
            kind=DeploymentKind.CANARY_STOP,
            version=state.canary.version,
            previous=state.current,
            at=at,
            reason=reason,
        )

    def rollback(self, reason: str) -> str:
        """Return to the version deployed before the current one; returns that version.

        That version is verified like a deploy; if it no longer passes, nothing moves.
        """
        with self._locked():
            state = self.deployment_state()
            stack = state.deploy_stack()
            if len(stack) < 2:
                raise RegistryError(
                    f"nothing to roll back to in {self.root}: deployed history is {stack or 'empty'}; "
                    "deploy a known-good version explicitly instead"
                )
            target = stack[-2]
            self.verify_servable(target)
            event = DeploymentEvent(
                kind=DeploymentKind.ROLLBACK,
                version=target,
                previous=state.current,
                at=datetime.now(UTC),
                reason=reason,
            )
            # A running canary was compared with the version rolled back from: it ends here too.
            events = list(state.history)
            if state.canary is not None:
                events.append(self._canary_stop(state, f"rolled back to {target}", event.at))
            self._write_state(DeploymentState(current=target, history=[*events, event]))
            return target

    def _claim_version_dir(self, sha256: str) -> tuple[Path, str]:
        """Create the next numbered version folder; mkdir is atomic, so concurrent registers differ."""
        existing = [int(m.group(1)) for d in self.models_dir.iterdir() if (m := _VERSION_RE.match(d.name))]
        number = max(existing, default=0) + 1
        while True:
            version = f"m{number:04d}-{sha256[:8]}"
            directory = self.models_dir / version
            try:
                directory.mkdir()
                return directory, version
            except FileExistsError:
                number += 1

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".deploy.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write_state(self, state: DeploymentState) -> DeploymentState:
        _atomic_write(self.pointer_path, state.model_dump_json(indent=2).encode("utf-8"))
        return state


def _load_session(onnx_bytes: bytes, *, version: str, path: str) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(onnx_bytes, _single_thread(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad graph
        raise CorruptModelError(
            f"model {version!r}: onnxruntime cannot load {path}: {exc}; re-export and re-register it",
            version=version,
            path=path,
        ) from exc


def _atomic_write(target: Path, payload: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _single_thread() -> ort.SessionOptions:
    """Verification sessions are short-lived: one thread avoids oversubscribing shared CPUs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options
