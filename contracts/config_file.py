"""Reading a YAML config file into a typed model, with errors a person can act on.

Shared by every stage that reads its own config file (the environment file in infra, a
training run file in trainer) so all of them report the file, the key, the value and what
was expected in the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

# Builds the caller's own error type from (message, path, key).
ErrorFactory = Callable[[str, Path, str | None], Exception]


def read_yaml_mapping(path: Path, error: ErrorFactory) -> dict[str, Any]:
    """The file's top-level mapping; unreadable files, bad YAML and non-mappings raise `error`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read config file {path}: {exc.strerror}", path, None) from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}", path, None) from exc
    if not isinstance(data, dict):
        raise error(
            f"{path}: expected a mapping of sections at the top, got {type(data).__name__}", path, None
        )
    return data


def validation_error(
    path: Path, exc: ValidationError, error: ErrorFactory, *, union_tags: Collection[str] = ()
) -> Exception:
    """`error` naming the first problem: key (dotted), offending value, and pydantic's expectation.

    Discriminated unions put the tag in the location (`algorithm.dqn.gamma`); tags listed in
    `union_tags` are dropped so the key reads as it is written in the file.
    """
    first = exc.errors()[0]
    parts = [str(part) for part in first["loc"]]
    parts = [p for i, p in enumerate(parts) if not (i > 0 and p in union_tags)]
    key = ".".join(parts) or "<root>"
    value = first.get("input")
    shown = "{…}" if isinstance(value, dict) else repr(value)[:200]
    more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    return error(f"{path}: key '{key}' has value {shown}: {first['msg']}{more}", path, key)
