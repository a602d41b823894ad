"""`streamrl deploy VERSION`: point the registry's deploy pointer at a registered model.

`streamrl deploy --list` shows the registered versions, which one is deployed and which is a
canary. The pointer moves only after the version's ONNX file passes its sha256 check and loads in
onnxruntime; serving follows it within its poll interval, and `streamrl rollback` moves it back.
`streamrl deploy VERSION --canary SHARE` serves VERSION to SHARE of the episodes beside the
deployed model instead (the next refresh judges it on realized returns, docs/evaluation.md);
`streamrl deploy --end-canary` ends a canary without deploying it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from tabulate import tabulate

from contracts import ActionKind
from infra.commands._common import add_environment_arguments, environment_from

if TYPE_CHECKING:
    from trainer import ModelRegistry  # imports torch: only inside `run` at run time
    from trainer.artifact import ModelMetadata

HELP = "deploy a registered model version (--list shows them)"
DESCRIPTION = (
    "Move the deploy pointer to a registered model version after checking its file hash; "
    "serving follows within its poll interval. --list shows the registered versions."
)
_SHOWN_IN_ERRORS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_environment_arguments(parser)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("version", nargs="?", help="registered version, e.g. m0003-92a08b40")
    target.add_argument(
        "--list", action="store_true", help="list registered versions and which one is deployed"
    )
    target.add_argument(
        "--end-canary", action="store_true", help="end the running canary; the deployed model serves alone"
    )
    parser.add_argument(
        "--canary",
        type=float,
        metavar="SHARE",
        help="serve VERSION to this share (0..1) of episodes beside the deployed model instead of deploying it",
    )
    parser.add_argument("--reason", default="manual deploy", help="recorded in the deployment history")


def run(args: argparse.Namespace) -> int:
    from trainer import ModelRegistry, RegistryError

    registry = ModelRegistry(environment_from(args).registry_dir)
    if args.list:
        print(format_versions(registry))
        return 0
    if args.end_canary:
        canary = registry.canary()
        if canary is None:
            raise RegistryError(f"no canary is running in {registry.root}")
        registry.end_canary(promote=False, reason=args.reason)
        print(f"canary {canary.version} ended; {registry.deployed() or 'the day-0 fallback'} serves alone")
        return 0
    known = registry.list_versions()
    if args.version not in known:
        shown = ", ".join(known[-_SHOWN_IN_ERRORS:]) or "none"
        more = f" (newest {_SHOWN_IN_ERRORS} of {len(known)})" if len(known) > _SHOWN_IN_ERRORS else ""
        raise RegistryError(
            f"model version {args.version!r} is not registered in {registry.root}; "
            f"registered versions{more}: {shown}. Pick one of them (`streamrl deploy --list`)",
            version=args.version,
        )
    before = registry.deployed()
    if args.canary is not None:
        if not 0.0 < args.canary < 1.0:
            raise RegistryError(
                f"--canary takes the share of episodes, between 0 and 1 exclusive; got {args.canary}"
            )
        registry.start_canary(args.version, args.canary, args.reason)
        print(
            f"canary: {args.version} serves {args.canary:.0%} of episodes beside {before or 'the day-0 fallback'}"
        )
        return 0
    registry.deploy(args.version, args.reason)
    print(f"deployed: {before} -> {args.version} (serving picks it up within its poll interval)")
    return 0


# What the ACTIONS column shows per action kind: the names, the candidates' features, or the box.
_ACTION_SPACE: dict[ActionKind, Callable[[ModelMetadata], str]] = {
    ActionKind.DISCRETE: lambda m: ",".join(m.actions),
    ActionKind.PARAMETRIC: lambda m: f"candidates({','.join(m.action_feature_names or [])})",
    ActionKind.CONTINUOUS: lambda m: ",".join(
        f"{name}[{low:g},{high:g}]"
        for name, low, high in zip(
            m.actions,
            m.algorithm_config.get("action_low", []),
            m.algorithm_config.get("action_high", []),
            strict=False,
        )
    ),
}


def format_versions(registry: ModelRegistry) -> str:
    """One row per registered version, oldest first, marking the deployed one and the rollback target."""
    versions = registry.list_versions()
    if not versions:
        return f"no models registered in {registry.root}"
    state = registry.deployment_state()
    stack = state.deploy_stack()
    marks = {stack[-2]: "rollback target"} if len(stack) >= 2 else {}
    if state.current is not None:
        marks[state.current] = "deployed"
    if state.canary is not None:
        marks[state.canary.version] = f"canary {state.canary.share:.0%}"
    rows = []
    for version in versions:
        metadata = registry.metadata(version)
        rows.append(
            (
                version,
                marks.get(version, ""),
                metadata.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                metadata.algorithm,
                _ACTION_SPACE[metadata.action_kind](metadata),
                metadata.normalization_spec_version or "-",
            )
        )
    headers = ("VERSION", "STATE", "CREATED (UTC)", "ALGORITHM", "ACTIONS", "SPEC")
    return tabulate(rows, headers=headers, tablefmt="plain", disable_numparse=True)
