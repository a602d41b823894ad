"""Turns one environment config into each stage's own config: addresses and paths filled in.

Every long-running piece (stream job, serving, monitor, refresh) is built from the same
`Environment`, so they agree on topics, folders and the registry without sharing globals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from features import FeatureStoreConfig
from infra.config import StreamrlConfig
from monitoring.config import MonitoringConfig
from serving.config import ServingConfig
from stream.config import StreamConfig


@dataclass(frozen=True)
class Environment:
    """Where everything of one run lives, derived from the config; nothing is created here."""

    config: StreamrlConfig
    run_dir: Path

    @classmethod
    def from_config(cls, config: StreamrlConfig, run_dir: Path | None = None) -> Environment:
        return cls(config=config, run_dir=Path(run_dir or config.run_dir).resolve())

    # --- folders ------------------------------------------------------------------------------
    @property
    def registry_dir(self) -> Path:
        return self.run_dir / "registry"

    @property
    def reports_dir(self) -> Path:
        return self.run_dir / "reports"

    @property
    def specs_dir(self) -> Path:
        return self.run_dir / "normalization"

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_dir / "tensorboard"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def bootstrap_servers(self) -> str:
        return self.config.stack.bootstrap_servers

    # --- stage configs ------------------------------------------------------------------------
    def stream_config(self) -> StreamConfig:
        section = self.config.stream
        return StreamConfig(
            output_dir=self.run_dir / "timelines",
            checkpoint_dir=self.run_dir / "checkpoints" / "stream",
            attribution_window_s=section.attribution_window_s,
            mdp_idle_timeout_s=section.mdp_idle_timeout_s,
            trigger_interval_s=section.trigger_interval_s,
            max_rows_per_batch=section.max_rows_per_batch,
        )

    def feature_store_config(self) -> FeatureStoreConfig:
        stack = self.config.stack
        return FeatureStoreConfig(
            repo_dir=self.run_dir / "feature_repo",
            project=self.config.feature_store.project,
            redis_connection=f"{stack.host}:{stack.redis_port}",
            offline_dir=self.run_dir / "offline_features",
            feature_names=list(self.config.feature_store.feature_names),
            ttl_s=self.config.feature_store.ttl_s,
            online_reader=self.config.feature_store.online_reader,
        )

    def serving_config(self) -> ServingConfig:
        section = self.config.serving
        return ServingConfig(
            host=self.config.stack.host,
            port=section.port,
            registry_root=self.registry_dir,
            poll_interval_s=section.poll_interval_s,
            bootstrap_servers=self.bootstrap_servers,
            topics=self.config.topics,
            feature_store=self.feature_store_config(),
            seed=section.seed,
            max_batch=section.max_batch,
            fallback=section.fallback,
            action_kind=section.action_kind,
            continuous_actions=section.continuous_actions,
        )

    @property
    def serving_url(self) -> str:
        return f"http://{self.config.stack.host}:{self.config.serving.port}"

    def monitoring_config(self) -> MonitoringConfig:
        section = self.config.monitoring
        return MonitoringConfig(
            bootstrap_servers=self.bootstrap_servers,
            topics=self.config.topics,
            window_s=section.window_s,
            web_port=section.web_port,
            min_propensity=section.min_propensity,
            min_log_density=section.min_log_density,
            max_reward_drop=section.max_reward_drop,
            data_dir=self.run_dir / "monitor",
        )
