"""The notification app beside a canary: no model deployed, a canary serving a share of the
user-days. Serving (real uvicorn, real broker) answers the other user-days `not_served`; the app
decides those by its rule and logs them through `/decisions/batch`. Every user-day stays with one
policy all day, and the day's tallies add up."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import yaml

from apps.notifications import NotificationSimConfig, mdp_id_for
from apps.notifications.simulator import MANIFEST_PATH, run_day
from contracts import Topics
from serving import ServingConfig, create_app
from stream import ensure_topics
from tests.helpers import serve_in_thread
from tests.infra.onnx_rule import register_rule_policy
from tests.serving._kafka import read_decisions
from trainer import ModelRegistry

USERS = 60
SHARE = 0.4


def _canary_takes(mdp_id: str, share: float) -> bool:
    """Serving's routing rule, written out again: the first 8 bytes of BLAKE2b as a fraction of 2⁶⁴."""
    digest = hashlib.blake2b(mdp_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * 2**64


def test_a_day_beside_a_canary_splits_user_days_between_it_and_the_rule(local_stack, tmp_path: Path) -> None:
    app = f"notif{uuid.uuid4().hex[:8]}"
    manifest = yaml.safe_load(MANIFEST_PATH.read_text())
    manifest_path = tmp_path / "manifest.yaml"
    manifest_path.write_text(yaml.safe_dump({**manifest, "app": app}))
    topics = Topics(
        decisions=f"{app}.decisions",
        rewards=f"{app}.rewards",
        dead_letters=f"{app}.dead_letters",
        metrics=f"{app}.metrics",
    )
    ensure_topics(local_stack.bootstrap_servers, topics, partitions=2)
    world = NotificationSimConfig(n_users=USERS)
    registry = ModelRegistry(tmp_path / "registry")
    canary = register_rule_policy(registry, world).version
    registry.start_canary(canary, SHARE, reason="tried beside the app's rule")
    config = ServingConfig(
        registry_root=registry.root,
        bootstrap_servers=local_stack.bootstrap_servers,
        topics=topics,
        app=app,
        poll_interval_s=0.1,
        seed=7,
    )
    with serve_in_thread(create_app(config)) as url:
        day = run_day(url, local_stack.bootstrap_servers, 0, world, batch=25, manifest=manifest_path)

    users = [f"user-{i:06d}" for i in range(USERS)]
    taken = [u for u in users if _canary_takes(mdp_id_for(u, 0), SHARE)]
    assert 0 < len(taken) < USERS  # both sides served: 60 draws at 0.4
    assert day.decisions == 4 * USERS == len(set(day.request_ids))
    assert day.model_versions == {canary: 4 * len(taken), "hand-written-rule": 4 * (USERS - len(taken))}
    mean = day.total_reward / day.decisions
    by_version = day.summary(None)["realized_by_version"]
    weighted = sum(by_version[v] * n for v, n in day.model_versions.items()) / day.decisions
    assert abs(weighted - mean) < 1e-12
    # Each decision was logged once, under the policy that made it, and each user-day by one policy.
    logged = read_decisions(local_stack.bootstrap_servers, topics.decisions, set(day.request_ids))
    assert len(logged) == day.decisions
    versions_per_day: dict[str, set[str]] = {}
    for event in logged.values():
        versions_per_day.setdefault(event.mdp_id, set()).add(event.model_version)
    assert versions_per_day == {
        mdp_id_for(u, 0): {canary if u in taken else "hand-written-rule"} for u in users
    }
