"""`streamrl init NAME`: write a commented app manifest to start from."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

HELP = "write a commented app manifest (NAME/manifest.yaml)"
DESCRIPTION = (
    "Write a commented manifest for a new app: its features, action space, reward, algorithm, gate and "
    "refresh schedule. Edit it, then `streamrl up NAME/manifest.yaml`."
)

_ACTIONS = {
    "discrete": """actions:                      # what the app chooses: one of a fixed set of named actions
  kind: discrete
  names: [option_a, option_b, option_c]
""",
    "parametric": """actions:                      # what the app chooses: one of the candidates each request carries
  kind: parametric
  candidate_features: [price, popularity]   # every candidate in a request has these features
""",
    "continuous": """actions:                      # what the app chooses: a bounded real vector, one entry per dimension
  kind: continuous
  dimensions:
    - {name: bid, low: 0.0, high: 5.0}
""",
}
_TRAINERS = {
    "discrete": "type: dqn                   # or cql, linucb, linear_thompson, neural_bandit",
    "parametric": "type: parametric_dqn",
    "continuous": "type: sac                   # or td3",
}

TEMPLATE = """# streamrl app manifest: everything streamrl needs to run the loop for one app.
# Start it with `streamrl up {path}`; `streamrl status --app {name}` shows how it runs.
# Every key below except app, features, actions and trainer has a default; unknown keys are refused.
schema_version: 1
app: {name}                     # lowercase: names its topics ({name}.decisions, {name}.rewards), folder and routes
entity_key: user_id             # what a decision's entity_id identifies (a user, a session, a device)

features:                       # the context features a request carries (or the feature store holds per entity)
  - name: visits_last_week
  - name: account_age_days
    type: continuous            # optional: force a normalization type (binary, probability, continuous, enum, boxcox, quantile, clip_log, do_not_preprocess)
  - name: is_subscriber
    type: binary

{actions}
reward:                         # the reward the loop maximizes: Σ weight × metric of the reward events
  metrics: {{engaged: 1.0, cost: -0.1}}   # send {{"request_id": …, "timestamp": …, "metrics": {{"engaged": 1}}}} to {name}.rewards
  attribution_window_s: 3600    # a reward counts for a decision if it arrives within this window
  mdp_idle_timeout_s: 1800      # an entity's episode closes this long after its last window

trainer:                        # the learner: see examples/*.yaml for every type's knobs
  {trainer}
  num_epochs: 20

# candidates:                   # optional grid: each entry overrides trainer keys; the best by CPE lower bound deploys
#   - {{learning_rate: 0.001}}
#   - {{learning_rate: 0.0003}}

exploration: {{type: epsilon_greedy, epsilon: 0.05}}   # how a served model explores (discrete, parametric)

gate:                           # when a candidate may replace the served model
  problem: auto                 # one_step (decisions do not change later states) / multi_step / auto
  headline: auto                # the estimator judged: auto = sequential for multi-step, dr for one-step
  threshold: 1.0                # lower bound of the normalized estimate must reach this (1.0 = as good as now)
  min_effective_sample_size: 100
  max_swing: 0.5                # hold a candidate whose estimate moves > 50 % from the last deployed one's
  # canary: {{share: 0.1, min_episodes: 10, confidence: 0.95}}  # a candidate the logged data cannot judge
  #                             # serves 10 % of episodes until realized returns decide (else it is rejected)

health:                         # logged data must pass these before a candidate may deploy
  max_missing_feature_share: 0.5
  min_reward_join_rate: 0.0

refresh:                        # when a candidate is trained
  daily_at_utc: "03:00"
  every_new_rows: 50000         # …or as soon as this many new timeline rows arrived
  train_days: 7

serving:
  day0: {{type: uniform}}         # before the first model: serve uniformly at random (explores)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the app's name: lowercase letters, digits and _")
    parser.add_argument("--kind", choices=sorted(_ACTIONS), default="discrete", help="the action kind")
    parser.add_argument(
        "--output", type=Path, default=None, help="where to write (default NAME/manifest.yaml)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def render(name: str, kind: str, path: Path) -> str:
    return TEMPLATE.format(name=name, path=path, actions=_ACTIONS[kind], trainer=_TRAINERS[kind])


def run(args: argparse.Namespace) -> int:
    from infra.manifest import NAME_PATTERN

    if not re.match(NAME_PATTERN, args.name):
        print(
            f"streamrl init: error: app name {args.name!r} must match {NAME_PATTERN} (e.g. 'checkout_offers')"
        )
        return 2
    path = args.output or Path(args.name) / "manifest.yaml"
    if path.exists() and not args.force:
        print(f"streamrl init: error: {path} exists; pass --force to overwrite it")
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(args.name, args.kind, path))
    print(f"wrote {path}: edit its features, actions and reward, then `streamrl up {path}`")
    return 0
