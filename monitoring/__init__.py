"""monitoring stage: faust agents turning decisions + rewards into per model version, per window metrics."""

from monitoring.app import MonitorStats, create_app
from monitoring.config import MonitoringConfig
from monitoring.errors import MonitoringError
from monitoring.metrics import AlertKind, MetricsWindow, VersionWindows, window_alerts
from monitoring.run import format_metrics_table, latest_revisions, load_config, run_monitor, tail_metrics

__all__ = [
    "AlertKind",
    "MetricsWindow",
    "MonitorStats",
    "MonitoringConfig",
    "MonitoringError",
    "VersionWindows",
    "create_app",
    "format_metrics_table",
    "latest_revisions",
    "load_config",
    "run_monitor",
    "tail_metrics",
    "window_alerts",
]
