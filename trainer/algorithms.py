"""The tables from an algorithm's `type` to its config model, train function, action kind and exporter.

Adding an algorithm is one new module plus one line in each table here (and its config in the
union): no registration by import side effect. Train and export functions are imported only when
used. The action kind decides the ONNX serving signature (`trainer.signatures.SERVING_SIGNATURES`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import Field

from contracts import ActionKind
from trainer.bandits import LinearThompsonConfig, LinUcbConfig, NeuralBanditConfig
from trainer.config import DqnConfig
from trainer.cql import CqlConfig
from trainer.errors import TrainerError
from trainer.parametric_dqn import ParametricDqnConfig
from trainer.sac import SacConfig
from trainer.td3 import Td3Config

# `type` → "module:function". Every function takes (timelines, spec, actions, config, log_dir,
# *, checkpoint, distributed, on_step) and returns a result with `.network`, `.metrics`,
# `.data_range`, `.feature_names` and `.actions` (see trainer.dqn.train_dqn).
TRAIN_FUNCTIONS: dict[str, str] = {
    "dqn": "trainer.dqn:train_dqn",
    "cql": "trainer.dqn:train_dqn",  # DQN's loop; a CqlConfig adds the conservative penalty
    "sac": "trainer.sac:train_sac",
    "td3": "trainer.td3:train_td3",
    "linucb": "trainer.bandits:train_bandit",  # one-step timelines only (contextual bandits)
    "linear_thompson": "trainer.bandits:train_bandit",
    "neural_bandit": "trainer.bandits:train_bandit",
    "parametric_dqn": "trainer.parametric_dqn:train_parametric_dqn",  # actions described by features
}

# `type` → the kind of action its models choose (the registry records it; deploy checks the graph
# against that kind's serving signature).
ALGORITHM_KINDS: dict[str, ActionKind] = {
    "dqn": ActionKind.DISCRETE,
    "cql": ActionKind.DISCRETE,
    "sac": ActionKind.CONTINUOUS,
    "td3": ActionKind.CONTINUOUS,
    "linucb": ActionKind.DISCRETE,
    "linear_thompson": ActionKind.DISCRETE,
    "neural_bandit": ActionKind.DISCRETE,
    "parametric_dqn": ActionKind.PARAMETRIC,
}

# `type` → "module:function". Every function takes (result of the train function, timelines, config)
# and returns a parity-checked `trainer.exporters.ExportedModel` following its kind's ONNX contract.
EXPORT_FUNCTIONS: dict[str, str] = {
    "dqn": "trainer.exporters:export_q_network",
    "cql": "trainer.exporters:export_q_network",
    "sac": "trainer.exporters:export_actor",
    "td3": "trainer.exporters:export_actor",
    "linucb": "trainer.exporters:export_bandit_model",
    "linear_thompson": "trainer.exporters:export_bandit_model",
    "neural_bandit": "trainer.exporters:export_bandit_model",
    "parametric_dqn": "trainer.exporters:export_parametric_q_network",
}

# The `algorithm:` section of a run config: one config model per entry of the table above.
AlgorithmConfig = Annotated[
    DqnConfig
    | CqlConfig
    | SacConfig
    | Td3Config
    | LinUcbConfig
    | LinearThompsonConfig
    | NeuralBanditConfig
    | ParametricDqnConfig,
    Field(discriminator="type"),
]


_V = TypeVar("_V")


class UnknownAlgorithmError(TrainerError):
    """An algorithm type with no entry in one of the tables above."""


def train_function(algorithm_type: str) -> Callable[..., Any]:
    """The train function for `algorithm_type`, imported on first use."""
    return _imported(_entry(TRAIN_FUNCTIONS, algorithm_type, "train function"))


def export_function(algorithm_type: str) -> Callable[..., Any]:
    """The exporter for `algorithm_type`'s training results, imported on first use."""
    return _imported(_entry(EXPORT_FUNCTIONS, algorithm_type, "exporter"))


def algorithm_kind(algorithm_type: str) -> ActionKind:
    """The action kind `algorithm_type`'s models choose."""
    return _entry(ALGORITHM_KINDS, algorithm_type, "action kind")


def _entry(table: dict[str, _V], algorithm_type: str, what: str) -> _V:
    try:
        return table[algorithm_type]
    except KeyError:
        raise UnknownAlgorithmError(
            f"algorithm type {algorithm_type!r} has no {what}; known: {sorted(table)}"
        ) from None


def _imported(target: str) -> Callable[..., Any]:
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)
