"""A registered model as a served policy: one class per action kind, chosen by one table.

`load_policy(path, metadata)` opens the class `POLICY_TYPES[metadata.action_kind]` names. Serving
calls its `decide` / `act` and logs the propensity or log density it returns; evaluation calls
`probabilities` / `log_density` of the same class, so CPE scores exactly what serving samples.
Every class holds the graph at load to its kind's entry of `trainer.signatures.SERVING_SIGNATURES`
(`check_graph`: the table deploy and serving check, minus the probe batch) and raises
`SignatureMismatchError` when it does not fit; each has a `probe()` that serving runs before it
swaps a model in. `OnnxPolicy` is the discrete class under its older name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from contracts import ActionKind
from trainer.artifact import ModelMetadata
from trainer.errors import PolicyOutputError, SignatureMismatchError
from trainer.policies._common import PROPENSITY_FLOOR
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

    Raises `SignatureMismatchError` when the graph or the metadata does not fit the kind's serving
    signature (`trainer.signatures`): a missing or extra input, a missing output, a wrong type or
    width; continuous metadata without valid action bounds; parametric without action feature names.
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
    "ServedPolicy",
    "SignatureMismatchError",
    "load_policy",
    "load_registered_policy",
    "sample_tanh_gaussian",
    "tanh_gaussian_log_density",
    "thompson_probabilities",
]
