"""One Feast repo per test session on the shared local stack's Redis (building it imports Feast: slow)."""

from __future__ import annotations

import uuid

import pytest

FEATURE_NAMES = ["f_age", "f_clicks", "f_hour"]


@pytest.fixture(scope="session")
def feast_config(local_stack, tmp_path_factory: pytest.TempPathFactory):
    """A FeatureStoreConfig with a unique project, so keys never collide with other tests in the same Redis."""
    from features import FeatureStoreConfig

    root = tmp_path_factory.mktemp("feast")
    return FeatureStoreConfig(
        repo_dir=root / "repo",
        offline_dir=root / "offline",
        project=f"features_test_{uuid.uuid4().hex[:8]}",
        redis_connection=local_stack.redis_url,
        feature_names=FEATURE_NAMES,
        ttl_s=3600,
    )


@pytest.fixture(scope="session")
def feast_store(feast_config):
    from features import build_feature_store

    return build_feature_store(feast_config)
