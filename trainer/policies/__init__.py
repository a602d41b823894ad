"""One served-policy class per action kind; `trainer.onnx_policy.load_policy` picks it by `action_kind`.

- `discrete.DiscretePolicy`: named actions + possible mask (DQN, CQL, bandits; Thompson draws exact).
- `parametric.ParametricPolicy`: per-request candidates described by feature maps.
- `continuous.ContinuousPolicy`: a bounded vector from a tanh-squashed Gaussian.
- `thompson`: the quadrature behind Thompson-sampling propensities.
Serving samples with `decide` / `act`; evaluation scores `probabilities` / `log_density` of the
same object, so CPE weighs exactly the distribution serving draws from.
"""
