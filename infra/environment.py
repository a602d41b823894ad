"""Turns one environment config into each stage's own config: addresses and paths filled in.

Every long-running piece (stream job, serving, monitor, refresh) is built from the same
`Environment`, so they agree on topics, folders and the registry without sharing globals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contracts import KafkaSecurity, StreamrlError
from evaluation.config import GateConfig
from features import FeatureStoreConfig
from infra.config import StreamrlConfig
from infra.manifest import AppManifest, ContinuousActions, forced_types
from infra.stack_config import BrokerStorage
from monitoring.config import MonitoringConfig
from serving.config import ServingConfig
from stream.config import StreamConfig


@dataclass(frozen=True)
class Environment:
    """Where everything of one run lives, derived from the config; nothing is created here."""

    config: StreamrlConfig
    run_dir: Path
    manifest: AppManifest | None = None  # the app this environment runs (None: the environment file alone)

    @classmethod
    def from_config(cls, config: StreamrlConfig, run_dir: Path | None = None) -> Environment:
        return cls(config=config, run_dir=Path(run_dir or config.run_dir).resolve())

    @classmethod
    def for_app(cls, base: StreamrlConfig, manifest: AppManifest) -> Environment:
        """One app on the stack of `base`: its own topics, folder, Feast project and ports."""
        config = app_config(base, manifest)
        return cls(config=config, run_dir=Path(config.run_dir).resolve(), manifest=manifest)

    @property
    def app(self) -> str | None:
        return self.manifest.app if self.manifest is not None else None

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

    @property
    def kafka_security(self) -> KafkaSecurity:
        return self.config.kafka

    @property
    def decision_log_idempotent(self) -> bool:
        """Whether serving logs decisions idempotently: the setting, or (unset) everywhere except
        the local durable broker, which loses acknowledged idempotent writes when SIGKILLed."""
        chosen = self.config.serving.decision_log_idempotent
        if chosen is not None:
            return chosen
        return self.config.stack.broker_storage is not BrokerStorage.S3

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
            max_mdp_length=section.max_mdp_length,
            closed_mdp_retention_s=section.closed_mdp_retention_s,
            reward_metrics=section.reward_metrics,
        )

    def feature_store_config(self) -> FeatureStoreConfig:
        stack = self.config.stack
        section = self.config.feature_store
        if section.feature_names is None:
            raise MissingSettingError(
                "no context features are configured: pass --app MANIFEST (its `features`) or set "
                "feature_store.feature_names in the environment file"
            )
        return FeatureStoreConfig(
            repo_dir=self.run_dir / "feature_repo",
            project=section.project,
            redis_connection=f"{stack.host}:{stack.redis_port}",
            redis_password_env=stack.redis_password_env,
            offline_dir=self.run_dir / "offline_features",
            feature_view=section.feature_view,
            push_source=f"{section.feature_view}_push",
            feature_names=list(section.feature_names),
            ttl_s=self.config.feature_store.ttl_s,
            online_reader=self.config.feature_store.online_reader,
        )

    def serving_config(self) -> ServingConfig:
        section = self.config.serving
        return ServingConfig(
            app=self.app,
            host=self.config.stack.host,
            port=section.port,
            registry_root=self.registry_dir,
            poll_interval_s=section.poll_interval_s,
            bootstrap_servers=self.bootstrap_servers,
            kafka_security=self.kafka_security,
            decision_log_idempotent=self.decision_log_idempotent,
            topics=self.config.topics,
            feature_store=self.feature_store_config() if self.config.feature_store.feature_names else None,
            seed=section.seed,
            max_batch=section.max_batch,
            limits=section.limits,
            auth=section.auth,
            feature_retry_s=section.feature_retry_s,
            workers=section.workers,
            inference_threads=section.inference_threads,
            decision_queue_size=section.decision_queue_size,
            decision_retry_after_s=section.decision_retry_after_s,
            log_flush_interval_s=section.log_flush_interval_s,
            log_flush_timeout_s=section.log_flush_timeout_s,
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
            app_id="streamrl-monitor" if self.app is None else f"streamrl-monitor-{self.app}",
            bootstrap_servers=self.bootstrap_servers,
            kafka_security=self.kafka_security,
            topics=self.config.topics,
            window_s=section.window_s,
            web_port=section.web_port,
            min_propensity=section.min_propensity,
            min_log_density=section.min_log_density,
            max_reward_drop=section.max_reward_drop,
            reward_metrics=self.config.stream.reward_metrics,
            data_dir=self.run_dir / "monitor",
        )


class MissingSettingError(StreamrlError):
    """The environment lacks something a stage needs (e.g. the app's feature list)."""


def app_config(base: StreamrlConfig, manifest: AppManifest) -> StreamrlConfig:
    """The environment of one app: `base` (stack addresses, stage defaults) with the manifest's
    choices and the app's namespace — topics `<app>.*`, folder `<apps_dir>/<app>`, Feast project
    `<app>`. Ports the manifest leaves unset keep the environment's (`streamrl up` assigns them)."""
    reward = manifest.reward
    gate = manifest.gate
    actions = manifest.actions
    normalization = base.normalization.model_copy(
        update={"overrides": {**base.normalization.overrides, **forced_types(manifest)}}
    )
    serving = base.serving.model_copy(
        update={
            "port": manifest.serving.port or base.serving.port,
            "fallback": manifest.serving.day0,
            "action_kind": manifest.action_kind,
            "continuous_actions": list(actions.dimensions)
            if isinstance(actions, ContinuousActions)
            else None,
        }
    )
    monitoring = base.monitoring.model_copy(
        update={
            "enabled": manifest.monitoring.enabled,
            "web_port": manifest.monitoring.web_port or base.monitoring.web_port,
            "window_s": manifest.monitoring.window_s,
            "min_propensity": manifest.monitoring.min_propensity,
            "max_reward_drop": manifest.monitoring.max_reward_drop,
        }
    )
    evaluation = base.evaluation.model_copy(
        update={
            "problem": gate.problem,
            "headline": gate.headline,
            "confidence": gate.confidence,
            "bootstrap_samples": gate.bootstrap_samples,
            "gamma": gate.gamma,
            "min_rows": gate.min_rows,
            "health": manifest.health,
            "gate": GateConfig(
                threshold=gate.threshold,
                min_effective_sample_size=gate.min_effective_sample_size,
                max_swing=gate.max_swing,
                require_bound=gate.require_bound,
                canary=gate.canary,
            ),
        }
    )
    return base.model_copy(
        update={
            "run_dir": base.apps_dir / manifest.app,
            "topics": manifest.topics,
            "stream": base.stream.model_copy(
                update={
                    "attribution_window_s": reward.attribution_window_s,
                    "mdp_idle_timeout_s": reward.mdp_idle_timeout_s,
                    "max_mdp_length": reward.max_mdp_length,
                    "reward_metrics": dict(reward.metrics) or None,
                }
            ),
            "normalization": normalization,
            "feature_store": base.feature_store.model_copy(
                update={
                    "project": manifest.app,
                    "feature_names": manifest.feature_names,
                    "feature_view": manifest.feature_view or f"{manifest.app}_context",
                }
            ),
            "trainer": manifest.trainer,
            "evaluation": evaluation,
            "serving": serving,
            "monitoring": monitoring,
        }
    )
