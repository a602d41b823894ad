"""Deploy holds every model to its kind's serving signature: hand-made graphs that fit are deployed,
graphs with a wrong name, type, width, rank, kind or metadata are refused with a message naming the
input or output and what was expected, and the deploy pointer does not move."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from trainer_timelines import BANDIT_ACTIONS, fit_spec, make_bandit_timelines

from contracts import ActionKind
from trainer import ModelRegistry, QNetwork, RegistryError, export_model
from trainer.algorithms import ALGORITHM_KINDS
from trainer.signatures import ALGORITHM_OUTPUTS, SERVING_SIGNATURES, SignatureMismatchError, check_signature

FLOAT, DOUBLE = TensorProto.FLOAT, TensorProto.DOUBLE
FEATURES = ["x1", "x2"]
CANDIDATE_FEATURES = ["price", "quality", "age"]
LOW, HIGH = [-2.0, 0.0], [2.0, 1.0]


def _f32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _model(nodes, inputs, outputs, initializers: dict[str, np.ndarray]) -> bytes:
    """A checked opset-17 graph; every output is declared float32."""
    graph = helper.make_graph(
        nodes,
        "hand_made",
        [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs],
        [helper.make_tensor_value_info(name, FLOAT, shape) for name, shape in outputs],
        [numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def discrete_onnx(
    n_features: int = 2,
    n_actions: int = 3,
    *,
    features: str = "features",
    features_type: int = FLOAT,
    batch: str | int = "batch",
    posterior: bool = False,
    softmax: bool = True,
) -> bytes:
    """q = features @ W masked to -inf, probabilities = softmax(q); `posterior` adds the linear bandits'
    `reward_mean` (= features @ W) and `exploration_width` (= 0). `softmax=False` serves q as the
    "probabilities" (not a distribution)."""
    width = ["batch", n_actions]
    weights = np.arange(n_features * n_actions, dtype=np.float32).reshape(n_features, n_actions) / 10
    nodes = [
        helper.make_node("Cast", [features], ["x"], to=FLOAT),
        helper.make_node("MatMul", ["x", "W"], ["q_all"]),
        helper.make_node("Greater", ["possible_actions_mask", "half"], ["possible"]),
        helper.make_node("Where", ["possible", "q_all", "neg_inf"], ["q_values"]),
        helper.make_node("Softmax", ["q_values"], ["action_probabilities"], axis=1)
        if softmax
        else helper.make_node("Identity", ["q_values"], ["action_probabilities"]),
    ]
    outputs = [("q_values", width), ("action_probabilities", width)]
    constants = {"W": weights, "half": _f32(0.5), "neg_inf": _f32(-np.inf)}
    if posterior:
        constants["zero"] = _f32(0.0)
        nodes += [
            helper.make_node("Identity", ["q_all"], ["reward_mean"]),
            helper.make_node("Mul", ["q_all", "zero"], ["exploration_width"]),
        ]
        outputs += [("reward_mean", width), ("exploration_width", width)]
    return _model(
        nodes,
        [
            (features, features_type, [batch, n_features]),
            ("possible_actions_mask", FLOAT, ["batch", n_actions]),
        ],
        outputs,
        constants,
    )


def continuous_onnx(
    n_features: int = 2,
    low: list[float] = LOW,
    high: list[float] = HIGH,
) -> bytes:
    """action_mean = low + (tanh(loc) + 1) / 2 · (high − low) with loc = features @ W, log_std = 0."""
    dim = len(low)
    shape = ["batch", dim]
    low_, high_ = np.asarray(low, np.float32), np.asarray(high, np.float32)
    return _model(
        [
            helper.make_node("MatMul", ["features", "W"], ["action_loc"]),
            helper.make_node("Tanh", ["action_loc"], ["t"]),
            helper.make_node("Add", ["t", "one"], ["t1"]),
            helper.make_node("Mul", ["t1", "scale"], ["scaled"]),
            helper.make_node("Add", ["scaled", "low"], ["action_mean"]),
            helper.make_node("Mul", ["action_loc", "zero"], ["action_log_std"]),
        ],
        [("features", FLOAT, ["batch", n_features])],
        [("action_mean", shape), ("action_loc", shape), ("action_log_std", shape)],
        {
            "W": np.ones((n_features, dim), np.float32),
            "one": _f32(1.0),
            "zero": _f32(0.0),
            "scale": (high_ - low_) / 2,
            "low": low_,
        },
    )


def any_width_continuous_onnx() -> bytes:
    """Declares symbolic widths: action_mean = tanh(features), one action dimension per feature."""
    return _model(
        [
            helper.make_node("Identity", ["features"], ["action_loc"]),
            helper.make_node("Tanh", ["features"], ["action_mean"]),
            helper.make_node("Mul", ["features", "zero"], ["action_log_std"]),
        ],
        [("features", FLOAT, ["batch", "width"])],
        [(name, ["batch", "width"]) for name in ("action_mean", "action_loc", "action_log_std")],
        {"zero": _f32(0.0)},
    )


def parametric_onnx(n_features: int = 2, n_action_features: int = 3, *, mask: bool = True) -> bytes:
    """scores = Σ candidate features + Σ state features, padding (mask 0) = -inf."""
    nodes = [
        helper.make_node("ReduceSum", ["action_features", "axis2"], ["per_candidate"], keepdims=0),
        helper.make_node("ReduceSum", ["features", "axis1"], ["per_state"], keepdims=1),
        helper.make_node("Add", ["per_candidate", "per_state"], ["raw" if mask else "scores"]),
    ]
    inputs = [
        ("features", FLOAT, ["batch", n_features]),
        ("action_features", FLOAT, ["batch", "n_candidates", n_action_features]),
    ]
    if mask:
        nodes += [
            helper.make_node("Greater", ["candidate_mask", "half"], ["real"]),
            helper.make_node("Where", ["real", "raw", "neg_inf"], ["scores"]),
        ]
        inputs.append(("candidate_mask", FLOAT, ["batch", "n_candidates"]))
    constants = {"axis2": np.array([2]), "axis1": np.array([1]), "half": _f32(0.5), "neg_inf": _f32(-np.inf)}
    if not mask:
        del constants["half"], constants["neg_inf"]
    return _model(nodes, inputs, [("scores", ["batch", "n_candidates"])], constants)


def _register(registry: ModelRegistry, onnx_bytes: bytes, **fields) -> str:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    kwargs = {"feature_names": FEATURES, "actions": BANDIT_ACTIONS, "algorithm": "hand_made", **fields}
    metadata = registry.register(
        onnx_bytes,
        input_names=[i.name for i in session.get_inputs()],
        output_names=[o.name for o in session.get_outputs()],
        **kwargs,
    )
    return metadata.version


CONTINUOUS = {
    "actions": ["steer", "throttle"],
    "action_kind": ActionKind.CONTINUOUS,
    "algorithm_config": {"action_low": LOW, "action_high": HIGH},
}
BOUNDS_1 = {"action_low": [-1.0], "action_high": [1.0]}
BOUNDS_3 = {"action_low": [-1.0] * 3, "action_high": [1.0] * 3}
PARAMETRIC = {
    "actions": [],
    "action_kind": ActionKind.PARAMETRIC,
    "action_feature_names": CANDIDATE_FEATURES,
}


def test_hand_made_graphs_of_every_kind_that_fit_are_deployed(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    versions = {
        ActionKind.DISCRETE: _register(registry, discrete_onnx()),
        ActionKind.CONTINUOUS: _register(registry, continuous_onnx(), **CONTINUOUS),
        ActionKind.PARAMETRIC: _register(registry, parametric_onnx(), **PARAMETRIC),
        "linear_thompson": _register(registry, discrete_onnx(posterior=True), algorithm="linear_thompson"),
    }
    assert set(SERVING_SIGNATURES) == set(ActionKind)  # every kind has its serving signature
    for version in versions.values():
        registry.deploy(version, reason="fits")
        assert registry.deployed() == version
        path, metadata = registry.get(version)
        check_signature(metadata, path)  # what serving calls: a path or the bytes
        check_signature(metadata, path.read_bytes())
    assert registry.metadata(versions[ActionKind.CONTINUOUS]).action_kind is ActionKind.CONTINUOUS


def _parametric_without_mask(registry: ModelRegistry) -> str:
    return _register(registry, parametric_onnx(mask=False), **PARAMETRIC)


# case → (registers a graph + metadata that do not fit, the message expected (regex), the tensor named)
BAD: dict[str, tuple[Callable[[ModelRegistry], str], str, str | None]] = {
    "input renamed": (
        lambda r: _register(r, discrete_onnx(features="state")),
        r"\(kind discrete\) lacks input 'features' \(float32 \[batch, n_features\]\); the discrete serving "
        r"contract needs inputs \['features', 'possible_actions_mask'\]",
        "features",
    ),
    "feature width": (
        lambda r: _register(r, discrete_onnx(n_features=3)),
        r"input 'features' has shape \['batch', 3\]; expected float32 \[batch, n_features=2\] "
        r"\(n_features = len\(feature_names\)\)",
        "features",
    ),
    "action width": (
        lambda r: _register(r, discrete_onnx(n_actions=4)),
        r"input 'possible_actions_mask' has shape \['batch', 4\]; expected float32 \[batch, n_actions=3\]",
        "possible_actions_mask",
    ),
    "float64 features": (
        lambda r: _register(r, discrete_onnx(features_type=DOUBLE)),
        r"input 'features' is tensor\(double\); expected float32 \[batch, n_features=2\]",
        "features",
    ),
    "fixed batch": (
        lambda r: _register(r, discrete_onnx(batch=1)),
        r"input 'features' has dimension 0 \(batch\) fixed to 1; expected float32 \[batch, n_features=2\] "
        r"with batch dynamic",
        "features",
    ),
    "probabilities not a distribution": (
        lambda r: _register(r, discrete_onnx(softmax=False)),
        # zero features, every action possible: q = 0 everywhere, so the "probabilities" sum to 0
        r"output 'action_probabilities' rows sum to \[0.0, 0.0\] on the probe batch with every action "
        r"possible; expected 1",
        None,
    ),
    "no actions": (
        lambda r: _register(r, discrete_onnx(), actions=[]),
        r"\(kind discrete\) metadata has no actions; expected at least one action name",
        None,
    ),
    "thompson without posterior": (
        lambda r: _register(r, discrete_onnx(), algorithm="linear_thompson"),
        r"lacks output\(s\) \['reward_mean', 'exploration_width'\] \(float32 \[batch, n_actions\]\); serving a "
        r"'linear_thompson' model of kind discrete needs outputs \['q_values', 'action_probabilities', "
        r"'reward_mean', 'exploration_width'\], the graph has \['q_values', 'action_probabilities'\]",
        "reward_mean",
    ),
    "discrete graph registered as continuous": (
        lambda r: _register(
            r,
            discrete_onnx(),
            **{**CONTINUOUS, "actions": ["steer", "throttle", "brake"], "algorithm_config": BOUNDS_3},
        ),
        r"\(kind continuous\) has input\(s\) \['possible_actions_mask'\] that serving does not feed",
        "possible_actions_mask",
    ),
    "dqn registered as parametric": (
        lambda r: _register(r, parametric_onnx(), **{**PARAMETRIC, "algorithm": "dqn"}),
        r"\(kind parametric\) is a 'dqn' model, whose models choose discrete actions; "
        r"re-register it with action_kind='discrete'",
        None,
    ),
    "continuous width only seen at the probe": (
        lambda r: _register(
            r,
            any_width_continuous_onnx(),
            **{**CONTINUOUS, "actions": ["steer"], "algorithm_config": BOUNDS_1},
        ),
        # nothing declared is wrong; fed 2 features the graph makes 2 action dimensions, the metadata has 1
        r"output 'action_mean' came out \[2, 2\] on a probe batch shaped \{'features': \[2, 2\]\}; "
        r"expected \[2, 1\]",
        "action_mean",
    ),
    "bounds the graph does not have": (
        lambda r: _register(r, continuous_onnx(low=[5.0, 5.0], high=[6.0, 6.0]), **CONTINUOUS),
        r"output 'action_mean' is \[\[5.5, 5.5\], \[5.5, 5.5\]\] on the probe batch, outside the metadata "
        r"bounds \[\[-2.0, 0.0\], \[2.0, 1.0\]\]",
        None,
    ),
    "continuous without bounds": (
        lambda r: _register(r, continuous_onnx(), **{**CONTINUOUS, "algorithm_config": {"action_low": LOW}}),
        r"metadata algorithm_config.action_high is None; expected 2 finite number\(s\), one per action "
        r"dimension \['steer', 'throttle'\]",
        None,
    ),
    "continuous low above high": (
        lambda r: _register(
            r,
            continuous_onnx(),
            **{**CONTINUOUS, "algorithm_config": {"action_low": HIGH, "action_high": LOW}},
        ),
        r"low >= high in dimension\(s\) \['steer', 'throttle'\]",
        None,
    ),
    "parametric without candidate feature names": (
        lambda r: _register(r, parametric_onnx(), **{**PARAMETRIC, "action_feature_names": None}),
        r"metadata has action_feature_names=None; expected the candidates' feature names",
        None,
    ),
    "candidate feature width": (
        lambda r: _register(r, parametric_onnx(n_action_features=2), **PARAMETRIC),
        r"input 'action_features' has shape \['batch', 'n_candidates', 2\]; expected float32 "
        r"\[batch, n_candidates, n_action_features=3\]",
        "action_features",
    ),
}


@pytest.fixture
def serving_registry(tmp_path: Path) -> tuple[ModelRegistry, str]:
    """A registry whose deployed model fits; refusals must leave it deployed."""
    registry = ModelRegistry(tmp_path)
    good = _register(registry, discrete_onnx())
    registry.deploy(good, reason="serving")
    return registry, good


@pytest.mark.parametrize("case", sorted(BAD))
def test_deploy_refuses_a_model_that_does_not_fit_and_the_previous_keeps_serving(
    case: str, serving_registry: tuple[ModelRegistry, str]
) -> None:
    registry, good = serving_registry
    pointer = registry.pointer_path.read_bytes()
    register, message, tensor = BAD[case]
    version = register(registry)

    with pytest.raises(SignatureMismatchError, match=message) as caught:
        registry.deploy(version, reason="should be refused")

    assert isinstance(caught.value, RegistryError)
    assert str(caught.value).startswith(f"model {version} (kind ")
    assert caught.value.version == version and caught.value.tensor == tensor
    assert registry.pointer_path.read_bytes() == pointer and registry.deployed() == good


def test_parametric_model_without_candidate_mask_names_the_missing_input(
    serving_registry: tuple[ModelRegistry, str],
) -> None:
    registry, good = serving_registry
    version = _parametric_without_mask(registry)
    with pytest.raises(SignatureMismatchError) as caught:
        registry.deploy(version, reason="should be refused")
    assert str(caught.value) == (
        f"model {version} (kind parametric) lacks input 'candidate_mask' (float32 [batch, n_candidates]); "
        "the parametric serving contract needs inputs ['features', 'action_features', 'candidate_mask']"
    )
    assert caught.value.action_kind is ActionKind.PARAMETRIC
    assert caught.value.expected == "float32 [batch, n_candidates]"
    assert registry.deployed() == good


def test_a_torch_export_of_the_wrong_width_is_refused(serving_registry: tuple[ModelRegistry, str]) -> None:
    """A real DQN export on 2 features registered as if it read 3: refused at deploy, not at serving."""
    registry, good = serving_registry
    spec = fit_spec(make_bandit_timelines(40, seed=3))
    onnx_bytes = export_model(QNetwork(spec, 3, [8], dueling=False).eval(), 1.0)
    fits = _register(registry, onnx_bytes, algorithm="dqn")
    wrong = _register(registry, onnx_bytes, algorithm="dqn", feature_names=["x1", "x2", "x3"])

    with pytest.raises(SignatureMismatchError, match=r"input 'features' has shape \['batch', 2\]; expected "):
        registry.deploy(wrong, reason="should be refused")
    assert registry.deployed() == good
    registry.deploy(fits, reason="the same graph with its own feature names")
    assert registry.deployed() == fits


def test_rollback_refuses_a_target_that_no_longer_fits(tmp_path: Path) -> None:
    """The metadata of the version a rollback would return to was edited: the pointer stays."""
    registry = ModelRegistry(tmp_path)
    first, second = _register(registry, discrete_onnx()), _register(registry, discrete_onnx())
    registry.deploy(first, reason="first")
    registry.deploy(second, reason="second")
    metadata_file = tmp_path / "models" / first / "metadata.json"
    edited = registry.metadata(first).model_copy(update={"actions": ["up", "down"]})
    metadata_file.write_text(edited.model_dump_json(), encoding="utf-8")
    pointer = registry.pointer_path.read_bytes()

    with pytest.raises(
        SignatureMismatchError, match=r"input 'possible_actions_mask' has shape \['batch', 3\]"
    ):
        registry.rollback("worse online")
    assert registry.pointer_path.read_bytes() == pointer and registry.deployed() == second


def test_every_output_an_algorithm_needs_is_an_optional_output_of_its_kind() -> None:
    for algorithm, outputs in ALGORITHM_OUTPUTS.items():
        optional = [t.name for t in SERVING_SIGNATURES[ALGORITHM_KINDS[algorithm]].optional_outputs]
        assert set(outputs) <= set(optional), (algorithm, outputs, optional)
    assert ALGORITHM_OUTPUTS["linear_thompson"] == ("reward_mean", "exploration_width")
