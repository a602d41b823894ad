"""The one table from an algorithm's `type` to its config model and its train function.

Adding an algorithm is one new module plus one line here (and its config in the union):
no registration by import side effect. Train functions are imported only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

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


class UnknownAlgorithmError(TrainerError):
    """An algorithm type with no entry in `TRAIN_FUNCTIONS`."""


def train_function(algorithm_type: str) -> Callable[..., Any]:
    """The train function for `algorithm_type`, imported on first use."""
    try:
        target = TRAIN_FUNCTIONS[algorithm_type]
    except KeyError:
        raise UnknownAlgorithmError(
            f"algorithm type {algorithm_type!r} has no train function; known: {sorted(TRAIN_FUNCTIONS)}"
        ) from None
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)
