"""The notification app, modeled on Horizon's notification use case, as an app brings itself.

- `world.py`: the simulated users and their exact policy and oracle values (numpy and pydantic),
  re-exported here, so `from apps.notifications import NotificationSim` works as it always has;
- `manifest.yaml`: the app's manifest (`streamrl up apps/notifications/manifest.yaml`);
- `simulator.py`: the app itself, one simulated day per run, talking to streamrl over HTTP and
  Kafka only (`streamrl demo` runs it day after day).

The app's day-0 rule is `apps.rule_policy` (numpy only).
"""

from apps.notifications.world import (
    ACTIONS,
    DONT_SEND,
    FEATURE_NAMES,
    SEND,
    SLOT_ACTIVITY,
    Day,
    NotificationSim,
    NotificationSimConfig,
    Population,
    SendProbability,
    mdp_id_for,
)

__all__ = [
    "ACTIONS",
    "DONT_SEND",
    "FEATURE_NAMES",
    "SEND",
    "SLOT_ACTIVITY",
    "Day",
    "NotificationSim",
    "NotificationSimConfig",
    "Population",
    "SendProbability",
    "mdp_id_for",
]
