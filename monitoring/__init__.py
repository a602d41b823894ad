"""monitoring stage: faust agents turning decisions + rewards into per model version, per window metrics."""

from monitoring.app import MonitorStats, create_app
from monitoring.config import MonitoringConfig
from monitoring.errors import MonitoringError
from monitoring.metrics import (
    AlertKind,
    ContinuousWindow,
    MetricsWindow,
    ParametricWindow,
    VersionWindows,
    digest_decision,
    window_alerts,
)
from monitoring.run import format_metrics_table, latest_revisions, load_config, run_monitor, tail_metrics

__all__ = [
    "AlertKind",
    "ContinuousWindow",
    "MetricsWindow",
    "MonitorStats",
    "MonitoringConfig",
    "MonitoringError",
    "ParametricWindow",
    "VersionWindows",
    "create_app",
    "digest_decision",
    "format_metrics_table",
    "latest_revisions",
    "load_config",
    "run_monitor",
    "tail_metrics",
    "window_alerts",
]
