"""The ONNX serving signature of each action kind, and `check_signature`, which holds a model to it.

`SERVING_SIGNATURES` is the one table from `ActionKind` to what serving feeds and reads (names,
float32, ranks and what each dimension means; the contracts are documented in `trainer.artifact`):

| kind | inputs | outputs |
| --- | --- | --- |
| discrete | `features` [batch, n_features], `possible_actions_mask` [batch, n_actions] | `q_values`, `action_probabilities` [batch, n_actions]; linear bandits add `reward_mean`, `exploration_width` [batch, n_actions] |
| parametric | `features` [batch, n_features], `action_features` [batch, n_candidates, n_action_features], `candidate_mask` [batch, n_candidates] | `scores` [batch, n_candidates] |
| continuous | `features` [batch, n_features] | `action_mean`, `action_loc`, `action_log_std` [batch, action_dim] |

`batch` and `n_candidates` must be dynamic; every other dimension is fixed by the metadata:
n_features = len(feature_names), n_actions = action_dim = len(actions), n_action_features =
len(action_feature_names). `ALGORITHM_OUTPUTS` adds what one algorithm's served method reads
(Thompson sampling draws from `reward_mean` and `exploration_width`, so linear_thompson needs them).

The registry runs `check_signature` before it moves the deploy pointer; serving runs it before it
swaps a model in. Besides the declared types and shapes it runs one probe batch (2 rows, 3
candidates) and checks the shapes that come out, so a graph that declares symbolic widths but
computes other ones is refused too. Every served policy (`trainer.policies`) runs `check_graph` (the
same checks without the probe batch) when it opens a model, so one table is the contract at deploy,
at serving and at load, and one error type (`SignatureMismatchError`, in `trainer.errors`) reports
a model that does not fit it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contracts import ActionKind
from trainer.algorithms import ALGORITHM_KINDS
from trainer.artifact import (
    ACTION_FEATURES_INPUT,
    ACTION_LOC_OUTPUT,
    ACTION_LOG_STD_OUTPUT,
    ACTION_MEAN_OUTPUT,
    CANDIDATE_MASK_INPUT,
    EXPLORATION_WIDTH_OUTPUT,
    FEATURES_INPUT,
    MASK_INPUT,
    PROBS_OUTPUT,
    Q_OUTPUT,
    REWARD_MEAN_OUTPUT,
    SCORES_OUTPUT,
    ModelMetadata,
)
from trainer.errors import SignatureMismatchError

# Dimension names. The dynamic ones are chosen per call (the probe batch uses the sizes given here);
# the others come from the metadata.
BATCH = "batch"
N_CANDIDATES = "n_candidates"
N_FEATURES = "n_features"
N_ACTIONS = "n_actions"
ACTION_DIM = "action_dim"
N_ACTION_FEATURES = "n_action_features"
PROBE_SIZES: dict[str, int] = {BATCH: 2, N_CANDIDATES: 3}
SIZE_SOURCES: dict[str, str] = {
    N_FEATURES: "n_features = len(feature_names)",
    N_ACTIONS: "n_actions = len(actions)",
    ACTION_DIM: "action_dim = len(actions)",
    N_ACTION_FEATURES: "n_action_features = len(action_feature_names)",
}

_FLOAT32 = "tensor(float)"  # onnxruntime's name for float32 tensors
_PROBE_ATOL = 1e-4

__all__ = [
    "ALGORITHM_OUTPUTS",
    "SERVING_SIGNATURES",
    "ServingSignature",
    "SignatureMismatchError",
    "TensorSignature",
    "check_graph",
    "check_signature",
    "required_outputs",
]


@dataclass(frozen=True, slots=True)
class TensorSignature:
    """One float32 input or output: its name and the meaning of each dimension."""

    name: str
    dims: tuple[str, ...]

    def describe(self, sizes: Mapping[str, int] | None = None) -> str:
        """`float32 [batch, n_features]`, or with sizes `float32 [batch, n_features=2]`."""
        shown = [f"{d}={sizes[d]}" if sizes and d in sizes and d not in PROBE_SIZES else d for d in self.dims]
        return f"float32 [{', '.join(shown)}]"


@dataclass(frozen=True, slots=True)
class ServingSignature:
    """What serving feeds a model of one kind and what it reads back.

    `sizes` reads the fixed dimensions from the metadata (`ValueError` naming what the metadata
    lacks); `check_probe` looks at the outputs of the probe batch (a problem, or None).
    """

    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    sizes: Callable[[ModelMetadata], dict[str, int]]
    optional_outputs: tuple[TensorSignature, ...] = ()
    check_probe: Callable[[ModelMetadata, Mapping[str, np.ndarray]], str | None] | None = None


def _discrete_sizes(metadata: ModelMetadata) -> dict[str, int]:
    _check_action_names(metadata.actions)
    return {N_FEATURES: len(metadata.feature_names), N_ACTIONS: len(metadata.actions)}


def _parametric_sizes(metadata: ModelMetadata) -> dict[str, int]:
    names = metadata.action_feature_names
    if not names:
        raise ValueError(
            f"metadata has action_feature_names={names!r}; expected the candidates' feature names "
            "in `action_features` input order (register it with action_feature_names=...)"
        )
    return {N_FEATURES: len(metadata.feature_names), N_ACTION_FEATURES: len(names)}


def _continuous_sizes(metadata: ModelMetadata) -> dict[str, int]:
    _check_action_names(metadata.actions)
    dim = len(metadata.actions)
    bounds = {key: metadata.algorithm_config.get(key) for key in ("action_low", "action_high")}
    for key, values in bounds.items():
        if (
            not isinstance(values, list)
            or len(values) != dim
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in values)
        ):
            raise ValueError(
                f"metadata algorithm_config.{key} is {values!r}; expected {dim} finite number(s), "
                f"one per action dimension {metadata.actions}"
            )
    bad = [
        i
        for i, (lo, hi) in enumerate(zip(bounds["action_low"], bounds["action_high"], strict=True))
        if lo >= hi
    ]
    if bad:
        raise ValueError(
            f"metadata action bounds have low >= high in dimension(s) {[metadata.actions[i] for i in bad]} "
            f"(action_low={bounds['action_low']}, action_high={bounds['action_high']}); expected low < high"
        )
    return {N_FEATURES: len(metadata.feature_names), ACTION_DIM: dim}


def _check_action_names(actions: list[str]) -> None:
    if not actions:
        raise ValueError("metadata has no actions; expected at least one action name")
    duplicates = sorted({a for a in actions if actions.count(a) > 1})
    if duplicates:
        raise ValueError(f"metadata actions {actions} repeat {duplicates}; expected unique names")


def _probabilities_problem(metadata: ModelMetadata, outputs: Mapping[str, np.ndarray]) -> str | None:
    """With every action possible, `action_probabilities` rows are distributions."""
    probabilities = outputs[PROBS_OUTPUT]
    if not np.isfinite(probabilities).all() or (probabilities < -_PROBE_ATOL).any():
        return f"output '{PROBS_OUTPUT}' has negative or non-finite values on the probe batch"
    sums = probabilities.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=_PROBE_ATOL):
        return (
            f"output '{PROBS_OUTPUT}' rows sum to {sums.round(4).tolist()} on the probe batch with every "
            "action possible; expected 1 (softmax over possible actions)"
        )
    return None


def _bounds_problem(metadata: ModelMetadata, outputs: Mapping[str, np.ndarray]) -> str | None:
    """`action_mean` lies within the bounds the metadata gives (the graph has its own copy of them)."""
    low = np.asarray(metadata.algorithm_config["action_low"], np.float64)
    high = np.asarray(metadata.algorithm_config["action_high"], np.float64)
    mean = outputs[ACTION_MEAN_OUTPUT].astype(np.float64)
    slack = _PROBE_ATOL * np.maximum(1.0, high - low)
    outside = ~np.isfinite(mean) | (mean < low - slack) | (mean > high + slack)
    if outside.any():
        return (
            f"output '{ACTION_MEAN_OUTPUT}' is {mean.round(4).tolist()} on the probe batch, outside the "
            f"metadata bounds [{low.tolist()}, {high.tolist()}]; the graph and its metadata disagree"
        )
    return None


_FEATURES = TensorSignature(FEATURES_INPUT, (BATCH, N_FEATURES))

SERVING_SIGNATURES: dict[ActionKind, ServingSignature] = {
    ActionKind.DISCRETE: ServingSignature(
        inputs=(_FEATURES, TensorSignature(MASK_INPUT, (BATCH, N_ACTIONS))),
        outputs=(
            TensorSignature(Q_OUTPUT, (BATCH, N_ACTIONS)),
            TensorSignature(PROBS_OUTPUT, (BATCH, N_ACTIONS)),
        ),
        sizes=_discrete_sizes,
        optional_outputs=(
            TensorSignature(REWARD_MEAN_OUTPUT, (BATCH, N_ACTIONS)),
            TensorSignature(EXPLORATION_WIDTH_OUTPUT, (BATCH, N_ACTIONS)),
        ),
        check_probe=_probabilities_problem,
    ),
    ActionKind.PARAMETRIC: ServingSignature(
        inputs=(
            _FEATURES,
            TensorSignature(ACTION_FEATURES_INPUT, (BATCH, N_CANDIDATES, N_ACTION_FEATURES)),
            TensorSignature(CANDIDATE_MASK_INPUT, (BATCH, N_CANDIDATES)),
        ),
        outputs=(TensorSignature(SCORES_OUTPUT, (BATCH, N_CANDIDATES)),),
        sizes=_parametric_sizes,
    ),
    ActionKind.CONTINUOUS: ServingSignature(
        inputs=(_FEATURES,),
        outputs=tuple(
            TensorSignature(name, (BATCH, ACTION_DIM))
            for name in (ACTION_MEAN_OUTPUT, ACTION_LOC_OUTPUT, ACTION_LOG_STD_OUTPUT)
        ),
        sizes=_continuous_sizes,
        check_probe=_bounds_problem,
    ),
}

# Outputs beyond its kind's that an algorithm's served method reads (each must be one of the kind's
# optional outputs). Thompson sampling draws mean + width·N(0, 1) per request.
ALGORITHM_OUTPUTS: dict[str, tuple[str, ...]] = {
    "linear_thompson": (REWARD_MEAN_OUTPUT, EXPLORATION_WIDTH_OUTPUT),
}


def required_outputs(metadata: ModelMetadata) -> tuple[TensorSignature, ...]:
    """The outputs serving reads from `metadata`'s model: its kind's plus its algorithm's."""
    signature = SERVING_SIGNATURES[metadata.action_kind]
    optional = {t.name: t for t in signature.optional_outputs}
    return signature.outputs + tuple(optional[name] for name in ALGORITHM_OUTPUTS.get(metadata.algorithm, ()))


def check_signature(metadata: ModelMetadata, onnx: Path | str | bytes) -> None:
    """Raise `SignatureMismatchError` unless the graph at `onnx` fits `metadata`'s serving contract.

    Checks, in order: the kind against the algorithm's (`trainer.algorithms.ALGORITHM_KINDS`), the
    metadata the kind needs, every input and output's name, element type (float32), rank and fixed
    sizes, that no input is left that serving would not feed (`check_graph`), and the output shapes
    (plus the kind's own check) of one probe batch.
    """
    refuse = _refuser(metadata)
    sizes = _sizes(metadata, refuse)
    try:
        session = ort.InferenceSession(
            onnx if isinstance(onnx, bytes) else str(onnx),
            _single_thread(),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad graph
        raise refuse(f"cannot be loaded by onnxruntime: {exc}") from exc
    checked = _check_declared(session, metadata, sizes, refuse)
    _check_probe(session, metadata, SERVING_SIGNATURES[metadata.action_kind], checked, sizes, refuse)


def check_graph(metadata: ModelMetadata, session: ort.InferenceSession) -> None:
    """`check_signature` without the probe batch, on a session the caller already opened.

    What a served policy (`trainer.policies`) checks when it opens a model: the same table, the same
    `SignatureMismatchError`; running the graph is left to the policy's own `probe()`.
    """
    refuse = _refuser(metadata)
    _check_declared(session, metadata, _sizes(metadata, refuse), refuse)


def _refuser(metadata: ModelMetadata) -> Callable[..., SignatureMismatchError]:
    kind = metadata.action_kind

    def refuse(
        problem: str, tensor: str | None = None, expected: str | None = None
    ) -> SignatureMismatchError:
        return SignatureMismatchError(
            f"model {metadata.version} (kind {kind.value}) {problem}",
            version=metadata.version,
            action_kind=kind,
            tensor=tensor,
            expected=expected,
        )

    return refuse


def _sizes(metadata: ModelMetadata, refuse: Callable[..., SignatureMismatchError]) -> dict[str, int]:
    """The kind must be the algorithm's; the fixed dimensions come from the metadata."""
    kind = metadata.action_kind
    algorithm_kind = ALGORITHM_KINDS.get(metadata.algorithm)
    if algorithm_kind is not None and algorithm_kind != kind:
        raise refuse(
            f"is a {metadata.algorithm!r} model, whose models choose {algorithm_kind.value} actions; "
            f"re-register it with action_kind={algorithm_kind.value!r}",
            expected=algorithm_kind.value,
        )
    try:
        return SERVING_SIGNATURES[kind].sizes(metadata)
    except ValueError as exc:
        raise refuse(str(exc)) from exc


def _check_declared(
    session: ort.InferenceSession,
    metadata: ModelMetadata,
    sizes: Mapping[str, int],
    refuse: Callable[..., SignatureMismatchError],
) -> tuple[TensorSignature, ...]:
    """Names, element types, ranks and fixed sizes the graph declares; returns the outputs checked."""
    kind = metadata.action_kind
    signature = SERVING_SIGNATURES[kind]
    graph_inputs = {i.name: i for i in session.get_inputs()}
    for spec in signature.inputs:
        if spec.name not in graph_inputs:
            raise refuse(
                f"lacks input '{spec.name}' ({spec.describe()}); the {kind.value} serving contract needs "
                f"inputs {[s.name for s in signature.inputs]}",
                spec.name,
                spec.describe(sizes),
            )
        problem = _declared_problem(graph_inputs[spec.name], spec, sizes)
        if problem:
            raise refuse(f"input '{spec.name}' {problem}", spec.name, spec.describe(sizes))
    extra = [name for name in graph_inputs if name not in {s.name for s in signature.inputs}]
    if extra:
        raise refuse(
            f"has input(s) {extra} that serving does not feed; the {kind.value} serving contract has "
            f"inputs {[s.name for s in signature.inputs]}",
            extra[0],
        )

    graph_outputs = {o.name: o for o in session.get_outputs()}
    needed = required_outputs(metadata)
    checked = needed + tuple(
        s for s in signature.optional_outputs if s.name in graph_outputs and s not in needed
    )
    missing = [spec for spec in needed if spec.name not in graph_outputs]
    if missing:
        raise refuse(
            f"lacks output(s) {[s.name for s in missing]} ({missing[0].describe()}); serving a "
            f"{metadata.algorithm!r} model of kind {kind.value} needs outputs {[s.name for s in needed]}, "
            f"the graph has {list(graph_outputs)}",
            missing[0].name,
            missing[0].describe(sizes),
        )
    for spec in checked:
        problem = _declared_problem(graph_outputs[spec.name], spec, sizes)
        if problem:
            raise refuse(f"output '{spec.name}' {problem}", spec.name, spec.describe(sizes))
    return checked


def _declared_problem(node: ort.NodeArg, spec: TensorSignature, sizes: Mapping[str, int]) -> str | None:
    """What is wrong with a graph input/output's declared type and shape, or None."""
    expected = spec.describe(sizes)
    if node.type != _FLOAT32:
        return f"is {node.type}; expected {expected}"
    shape = list(node.shape)
    if len(shape) != len(spec.dims):
        return f"has rank {len(shape)} (shape {shape}); expected rank {len(spec.dims)}: {expected}"
    for axis, (actual, dim) in enumerate(zip(shape, spec.dims, strict=True)):
        if dim in PROBE_SIZES:
            if isinstance(actual, int):
                return (
                    f"has dimension {axis} ({dim}) fixed to {actual}; expected {expected} with {dim} "
                    "dynamic (export it with dynamic_axes)"
                )
        elif isinstance(actual, int) and actual != sizes[dim]:
            return f"has shape {shape}; expected {expected} ({SIZE_SOURCES[dim]})"
    return None


def _check_probe(
    session: ort.InferenceSession,
    metadata: ModelMetadata,
    signature: ServingSignature,
    outputs: tuple[TensorSignature, ...],
    sizes: Mapping[str, int],
    refuse: Callable[..., SignatureMismatchError],
) -> None:
    """Run one batch of zeros (every action or candidate possible) and check what comes out."""
    all_sizes = {**sizes, **PROBE_SIZES}
    feed = {
        spec.name: (np.ones if spec.name in (MASK_INPUT, CANDIDATE_MASK_INPUT) else np.zeros)(
            [all_sizes[d] for d in spec.dims], dtype=np.float32
        )
        for spec in signature.inputs
    }
    described = {name: list(value.shape) for name, value in feed.items()}
    try:
        values = session.run([s.name for s in outputs], feed)
    except Exception as exc:  # onnxruntime raises several unrelated types for a failed run
        raise refuse(f"fails on a probe batch shaped {described}: {exc}") from exc
    results = dict(zip([s.name for s in outputs], values, strict=True))
    for spec in outputs:
        want = [all_sizes[d] for d in spec.dims]
        got = list(np.shape(results[spec.name]))
        if got != want:
            raise refuse(
                f"output '{spec.name}' came out {got} on a probe batch shaped {described}; expected "
                f"{want} ({spec.describe(sizes)}; {', '.join(SIZE_SOURCES[d] for d in spec.dims if d in sizes)})",
                spec.name,
                spec.describe(sizes),
            )
    if signature.check_probe is not None:
        problem = signature.check_probe(metadata, results)
        if problem:
            raise refuse(problem)


def _single_thread() -> ort.SessionOptions:
    """Verification sessions are short-lived: one thread avoids oversubscribing shared CPUs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options
