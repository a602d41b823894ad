"""Small Gymnasium environments with known answers, for fast continuous-control checks.

Not registered with `gymnasium.register` (no registration by import side effect): pass the
class itself as the env factory, e.g. `run_online(config, loop, log_dir, make_env=TargetReachEnv)`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class TargetReachEnv(gym.Env):
    """Drive a point on [−1, 1] to 0: position += step_size · action, reward = −|position|.

    Starts uniformly in [−1, 1]; episodes last `horizon` steps (truncated, never terminated).
    The best policy steps onto 0 (action = −position / step_size, clipped). With the defaults a
    uniform random policy scores about −10.6 per episode and the best one about −0.46.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, horizon: int = 20, step_size: float = 0.25) -> None:
        self.horizon = horizon
        self.step_size = step_size
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._position = 0.0
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._position = float(self.np_random.uniform(-1.0, 1.0))
        self._steps = 0
        return np.array([self._position], np.float32), {}

    def step(self, action: np.ndarray):
        move = float(np.clip(np.asarray(action, np.float64).ravel()[0], -1.0, 1.0)) * self.step_size
        self._position = float(np.clip(self._position + move, -1.0, 1.0))
        self._steps += 1
        reward = -abs(self._position)
        return np.array([self._position], np.float32), reward, False, self._steps >= self.horizon, {}
