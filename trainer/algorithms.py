"""The one table from an algorithm's `type` to its config model and its train function.

Adding an algorithm is one new module plus one line here (and its config in the union):
no registration by import side effect. Train functions are imported only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from trainer.config import DqnConfig
from trainer.errors import TrainerError

# `type` → "module:function". Every function takes (timelines, spec, actions, config, log_dir,
# *, checkpoint, distributed, on_step) and returns a result with `.network`, `.metrics`,
# `.data_range`, `.feature_names` and `.actions` (see trainer.dqn.train_dqn).
TRAIN_FUNCTIONS: dict[str, str] = {
    "dqn": "trainer.dqn:train_dqn",
}

# The `algorithm:` section of a run config. sac/td3 (trainer/sac.py, trainer/td3.py) join this
# union and the table above once they follow the same train-function signature.
AlgorithmConfig = Annotated[DqnConfig, Field(discriminator="type")]


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
