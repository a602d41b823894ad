"""Fixtures for tests/evaluation: synthetic bandit timelines with known truth and a real registry."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from evaluation_data import fit_spec, make_bandit_timelines

from features import NormalizationSpec
from trainer import ModelRegistry


@pytest.fixture(scope="session")
def bandit_timelines() -> pd.DataFrame:
    return make_bandit_timelines(20_000, seed=1)


@pytest.fixture(scope="session")
def bandit_spec(bandit_timelines: pd.DataFrame) -> NormalizationSpec:
    return fit_spec(bandit_timelines)


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")
