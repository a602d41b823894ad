"""A registered model as a served policy: one class per action kind, chosen by one table.

`load_policy(path, metadata)` opens the class `POLICY_TYPES[metadata.action_kind]` names. Serving
calls its `decide` / `act` and logs the propensity or log density it returns; evaluation calls
`probabilities` / `log_density` of the same class, so CPE scores exactly what serving samples.
Every class checks at load that the graph has its kind's inputs and outputs (`trainer.artifact`)
and has a `probe()` that serving runs before it swaps a model in. `OnnxPolicy` is the discrete
class under its older name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from contracts import ActionKind
from trainer.artifact import ModelMetadata
from trainer.policies._common import PROPENSITY_FLOOR, PolicyOutputError, PolicySignatureError
from trainer.policies.continuous import ContinuousPolicy, sample_tanh_gaussian, tanh_gaussian_log_density
from trainer.policies.discrete import SERVED_DISTRIBUTIONS, DiscretePolicy
from trainer.policies.parametric import ParametricPolicy
from trainer.policies.thompson import thompson_probabilities

if TYPE_CHECKING:
    from trainer.registry import ModelRegistry

ServedPolicy = DiscretePolicy | ParametricPolicy | ContinuousPolicy

#: The one table from action kind to served-policy class (adding a kind = one line here).
POLICY_TYPES: dict[ActionKind, type[DiscretePolicy] | type[ParametricPolicy] | type[ContinuousPolicy]] = {
    ActionKind.DISCRETE: DiscretePolicy,
    ActionKind.PARAMETRIC: ParametricPolicy,
    ActionKind.CONTINUOUS: ContinuousPolicy,
}

OnnxPolicy = DiscretePolicy


def load_policy(path: Path | str, metadata: ModelMetadata, intra_op_threads: int = 1) -> ServedPolicy:
    """The served policy of `metadata.action_kind` over the ONNX file at `path`.

    Raises `PolicySignatureError` when the graph lacks the kind's inputs or outputs (or, for
    continuous models, the metadata lacks valid action bounds; for parametric, action feature names).
    """
    return POLICY_TYPES[metadata.action_kind](path, metadata, intra_op_threads=intra_op_threads)


def load_registered_policy(registry: ModelRegistry, version: str, intra_op_threads: int = 1) -> ServedPolicy:
    """`load_policy` for a registered version, after the registry's sha256 and load checks."""
    path, metadata = registry.get(version)
    return load_policy(path, metadata, intra_op_threads=intra_op_threads)


__all__ = [
    "POLICY_TYPES",
    "PROPENSITY_FLOOR",
    "SERVED_DISTRIBUTIONS",
    "ContinuousPolicy",
    "DiscretePolicy",
    "OnnxPolicy",
    "ParametricPolicy",
    "PolicyOutputError",
    "PolicySignatureError",
    "ServedPolicy",
    "load_policy",
    "load_registered_policy",
    "sample_tanh_gaussian",
    "tanh_gaussian_log_density",
    "thompson_probabilities",
]
