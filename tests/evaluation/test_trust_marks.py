"""What the report says about how far to trust each estimate: the headline chosen for the problem and
why, one-step estimates of a multi-step problem, a reward model the data do not confirm, heavy
weights, and the high-confidence bounds (checked against scipy on the same terms)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evaluation import BoundMethod, EvaluationConfig, GateConfig, evaluate_probabilities, gate_model
from features import fit_normalization, frame_from_feature_maps


def _timelines(n_episodes: int, steps: int, seed: int, reward_of=None) -> tuple[pd.DataFrame, np.ndarray]:
    """Episodes of `steps` decisions, x ~ N(0, 1), uniform logging over two actions; reward
    `reward_of(x, a, rng)` (default x + a + noise). Returns the frame and the logged x."""
    rng = np.random.default_rng(seed)
    n = n_episodes * steps
    x = rng.normal(size=n)
    a = rng.integers(0, 2, n)
    r = reward_of(x, a, rng) if reward_of else x + a + rng.normal(scale=0.5, size=n)
    frame = pd.DataFrame(
        {
            "mdp_id": [f"e{i // steps:05d}" for i in range(n)],
            "sequence_number_ordinal": [i % steps + 1 for i in range(n)],
            "state_features": [
                {"x": float(v), "steps_left": float(steps - 1 - i % steps)} for i, v in enumerate(x)
            ],
            "action": np.where(a == 1, "b", "a"),
            "action_probability": 0.5,
            "possible_actions": [["a", "b"]] * n,
            "reward": r,
            "model_version": "uniform",
        }
    )
    return frame, x


def _sine_reward(x: np.ndarray, a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """3·sin(3x) when the action is b: outside the models' second-order span in x."""
    return 3.0 * np.sin(3.0 * x) * a + rng.normal(scale=0.3, size=x.size)


def _evaluate(frame: pd.DataFrame, target: np.ndarray, **config):
    spec = fit_normalization(frame_from_feature_maps(frame["state_features"].tolist()))
    settings = {"bootstrap_samples": 60, "min_rows": 1, **config}
    return evaluate_probabilities(frame, target, ["a", "b"], "target", EvaluationConfig(**settings), spec)


def test_one_step_problems_judge_dr_and_multi_step_ones_magic() -> None:
    frame, _ = _timelines(300, 1, 0)
    target = np.tile([0.3, 0.7], (len(frame), 1))
    one = _evaluate(frame, target)
    assert (one.problem, one.max_episode_length, one.headline) == ("one_step", 1, "dr")
    assert one.headline_reason.startswith("dr: every episode is one decision")
    assert one.estimates["dr"].reliable, one.estimates["dr"].warnings

    frame, _ = _timelines(200, 3, 1)
    # The target is the logging policy and states do not depend on actions: with the steps left in the
    # state, FQE's linear Q can represent the value (without them it cannot, and the check flags it).
    same = _evaluate(frame, np.tile([0.5, 0.5], (len(frame), 1)))
    assert same.estimates["fqe"].reliable, same.estimates["fqe"].warnings
    assert (same.problem, same.max_episode_length, same.headline) == ("multi_step", 3, "magic")
    assert "episodes have up to 3 decisions" in same.headline_reason
    assert "the data confirm FQE" in same.headline_reason

    target = np.tile([0.3, 0.7], (len(frame), 1))
    multi = _evaluate(frame, target)
    assert multi.problem == "multi_step"
    for name in ("dm", "ips", "snips", "dr", "sndr", "switch_dr"):
        e = multi.estimates[name]
        assert not e.reliable
        assert any(
            w.startswith(f"{name}: values one decision under the logged policy's states") for w in e.warnings
        )
    assert multi.estimates["wdr"].reliable, multi.estimates["wdr"].warnings
    fqe, magic = multi.estimates["fqe"], multi.estimates["magic"]
    assert multi.headline == ("magic" if fqe.reliable else "wdr")
    assert magic.reliable == fqe.reliable
    if not fqe.reliable:
        assert any(w.startswith("magic: blends in returns that lean on FQE") for w in magic.warnings)
        assert "the data do not confirm FQE" in multi.headline_reason

    declared = _evaluate(frame, target, problem="one_step")
    assert declared.problem == "one_step" and declared.headline == "dr"
    assert declared.estimates["dr"].reliable, declared.estimates["dr"].warnings

    chosen = _evaluate(frame, target, headline="wdr")
    assert chosen.headline == "wdr"
    assert chosen.headline_reason == "wdr: set by evaluation.headline in the configuration"


def test_a_reward_model_the_data_contradict_is_flagged_and_a_confirmed_one_is_not() -> None:
    """r = 3·sin(3x)·1{a = b}, x ~ N(0, 1): the heads are second order in x, and sin(3x) is odd with
    E[x·sin(3x)] = 3e^{-4.5}, so q̂_b ≈ 0.1·x and DM misses a target that sends b where sin(3x) > 0:
    truth 3·0.8·E[sin(3x)⁺] = 2.4/π ≈ 0.764 (numerically, E[sin(3x)⁺] = 0.31831), DM ≈ 0."""
    frame, x = _timelines(3000, 1, 2, reward_of=_sine_reward)
    p_b = np.where(np.sin(3.0 * x) > 0.0, 0.9, 0.1)
    report = _evaluate(frame, np.stack([1.0 - p_b, p_b], axis=1))
    dm, dr = report.estimates["dm"], report.estimates["dr"]
    assert dm.value < 0.3 and dr.ci_low < 0.764 < dr.ci_high  # the premise: DM is far off, DR is not
    assert not dm.reliable
    assert any(w.startswith("dm: the data do not confirm its model: dr − dm is") for w in dm.warnings), (
        dm.warnings
    )
    assert dr.reliable

    # The target is the logging policy: w = 1, so DR's correction is the model's mean held-out residual,
    # which the intercept keeps near 0 — DM's bias bound fits inside its interval.
    frame, _ = _timelines(3000, 1, 3)
    report = _evaluate(frame, np.tile([0.5, 0.5], (len(frame), 1)), bootstrap_samples=100)
    assert report.estimates["dm"].reliable, report.estimates["dm"].warnings


def test_a_reward_second_order_in_the_state_is_in_the_heads_span_and_dm_is_confirmed() -> None:
    """r = 3·x²·1{a = b}, target sends b where |x| > 1: the per-action heads regress on [1, x, x²], so
    DM is right. Truth 3·(0.9·E[x²; |x|>1] + 0.1·E[x²; |x|<1]) with E[x²; |x|>1] = 2(φ(1) + 1 − Φ(1))."""
    frame, x = _timelines(
        3000, 1, 2, reward_of=lambda x, a, rng: 3.0 * x**2 * a + rng.normal(scale=0.3, size=x.size)
    )
    tail = 2.0 * (stats.norm.pdf(1.0) + stats.norm.sf(1.0))
    truth = 3.0 * (0.9 * tail + 0.1 * (1.0 - tail))
    assert truth == pytest.approx(2.2230, abs=1e-4)
    p_b = np.where(np.abs(x) > 1.0, 0.9, 0.1)
    dm = _evaluate(frame, np.stack([1.0 - p_b, p_b], axis=1)).estimates["dm"]
    assert dm.ci_low < truth < dm.ci_high and abs(dm.value - truth) < 0.05 * truth
    assert dm.reliable, dm.warnings


def test_heavy_weights_make_plain_importance_sampling_unreliable() -> None:
    frame, _ = _timelines(400, 1, 4)
    target = np.tile([0.999, 0.001], (len(frame), 1))
    logged_a = (frame["action"] == "a").to_numpy()
    target[logged_a] = [0.001, 0.999]  # the target almost never takes the logged action...
    target[np.flatnonzero(logged_a)[:5]] = [0.999, 0.001]  # ...except on five decisions
    report = _evaluate(frame, target)
    ips = report.estimates["ips"]
    w = np.where(logged_a, target[:, 0], target[:, 1]) / 0.5
    ess = w.sum() ** 2 / (w**2).sum()
    assert ips.effective_sample_size == pytest.approx(ess)
    assert ess < 0.2 * len(frame)
    assert any(f"effective sample size {ess:.1f} is under 20%" in warning for warning in ips.warnings), (
        ips.warnings
    )


def test_reports_carry_t_and_bernstein_bounds_on_the_weighted_terms() -> None:
    frame, _ = _timelines(500, 1, 5)
    target = np.tile([0.2, 0.8], (len(frame), 1))
    report = _evaluate(frame, target, confidence=0.9)
    bounds = {b.method: b for b in report.bounds}
    assert set(bounds) == {BoundMethod.T_TEST, BoundMethod.EMPIRICAL_BERNSTEIN}
    reward = frame["reward"].to_numpy()
    w = np.where(frame["action"] == "b", 0.8, 0.2) / 0.5
    terms = w * reward
    n = terms.size
    expected = terms.mean() - stats.t.ppf(0.9, n - 1) * terms.std(ddof=1) / np.sqrt(n)
    t_bound = bounds[BoundMethod.T_TEST]
    assert t_bound.estimator == "ips" and t_bound.lower == pytest.approx(expected)
    logged = reward.mean()
    assert t_bound.normalized_lower == pytest.approx(1.0 + (expected - logged) / abs(logged))
    assert bounds[BoundMethod.EMPIRICAL_BERNSTEIN].lower < expected  # the conservative one

    frame, _ = _timelines(300, 2, 6)
    target = np.tile([0.2, 0.8], (len(frame), 1))
    report = _evaluate(frame, target, gamma=0.5)
    w = np.where(frame["action"] == "b", 0.8, 0.2) / 0.5
    r = frame["reward"].to_numpy().reshape(-1, 2)
    w = w.reshape(-1, 2)
    pdis_terms = w[:, 0] * r[:, 0] + 0.5 * w[:, 0] * w[:, 1] * r[:, 1]
    n = pdis_terms.size
    expected = pdis_terms.mean() - stats.t.ppf(0.95, n - 1) * pdis_terms.std(ddof=1) / np.sqrt(n)
    t_bound = next(b for b in report.bounds if b.method == BoundMethod.T_TEST)
    assert t_bound.estimator == "pdis" and t_bound.lower == pytest.approx(expected)


def test_fqe_the_light_weighted_steps_contradict_is_flagged_and_the_gate_judges_wdr() -> None:
    """r = 3·sin(3x)·1{a = b} over 3-step episodes: FQE's second-order Q misses the target's value (it
    sends b where sin(3x) > 0), and weighted DR over the first steps, where the weights are light,
    says so."""
    frame, x = _timelines(600, 3, 7, reward_of=_sine_reward)
    p_b = np.where(np.sin(3.0 * x) > 0.0, 0.8, 0.2)
    report = _evaluate(frame, np.stack([1.0 - p_b, p_b], axis=1))
    fqe = report.estimates["fqe"]
    assert not fqe.reliable
    assert any(
        w.startswith("fqe: the data do not confirm its model: over the first") for w in fqe.warnings
    ), fqe.warnings
    assert not report.estimates["magic"].reliable
    assert report.headline == "wdr"
    assert "the data do not confirm FQE" in report.headline_reason


def test_the_heads_go_second_order_only_with_ten_rows_per_coefficient() -> None:
    """3 value columns and 3 presence columns (one varying): second order is [x, upper(x⊗x)] = 3 + 6
    columns, + 1 presence + the intercept = 11 coefficients per head, so 2 heads need 220 rows."""
    from evaluation.kinds.discrete import _model_design

    rng = np.random.default_rng(0)

    def state(rows: int) -> np.ndarray:
        presence = np.ones((rows, 3))
        presence[::2, 1] = 0.0
        return np.hstack([rng.normal(size=(rows, 3)), presence])

    wide, narrow = _model_design(state(220), 3, 2), _model_design(state(219), 3, 2)
    assert wide.shape == (220, 10) and narrow.shape == (219, 4)
    x = state(220)
    assert np.array_equal(_model_design(x, 3, 2)[:, 3:9], x[:, [0, 0, 0, 1, 1, 2]] * x[:, [0, 1, 2, 1, 2, 2]])


def test_second_order_drops_products_that_carry_nothing() -> None:
    """Columns: a continuous z, a two-level one-hot (u, v) and a 0/1 flag b. Of the 10 products,
    u·v is zero everywhere and u², v², b² equal their columns: 4 columns + 6 products remain."""
    from evaluation.joint_models import second_order_state

    rng = np.random.default_rng(1)
    z = rng.normal(size=50)
    u = (rng.random(50) < 0.5).astype(float)
    b = (rng.random(50) < 0.3).astype(float)
    x = np.column_stack([z, u, 1.0 - u, b])
    design = second_order_state(x)
    expected = np.column_stack([x, z * z, z * u, z * (1 - u), z * b, u * b, (1 - u) * b])
    assert design.shape == (50, 10)
    assert np.array_equal(design, expected)


def _sigmoid_target(x: np.ndarray, slope: float) -> np.ndarray:
    """π(b|x) = sigmoid(slope·x) against uniform logging: per-step ratios 2π(a|x), continuous in x."""
    p_b = 1.0 / (1.0 + np.exp(-slope * x))
    return np.stack([1.0 - p_b, p_b], axis=1)


def test_heavy_tailed_cumulative_weights_mark_the_sequential_estimates_unreliable() -> None:
    # 1,000 episodes of 10 steps, a target far from uniform logging: the final weights' Pareto k̂ is
    # 0.77 (infinite variance) while their effective sample size, 55, clears the minimum of 30.
    frame, x = _timelines(1000, 10, 0)
    report = _evaluate(frame, _sigmoid_target(x, 2.0))
    wdr = report.estimates["wdr"]
    assert wdr.effective_sample_size > 30
    assert wdr.pareto_k == pytest.approx(0.767, abs=0.001)
    reason = (
        "wdr: the episodes' cumulative importance weights are too heavy-tailed to trust (Pareto k̂ = 0.77 > "
        "0.50): their variance is infinite, so a few of the 1000 episodes decide the value"
    )
    assert [w for w in wdr.warnings if w.startswith(reason)], wdr.warnings
    assert not wdr.reliable
    for name in ("pdis", "sequential_dr"):  # the same weights
        e = report.estimates[name]
        assert e.pareto_k == wdr.pareto_k and any("too heavy-tailed" in w for w in e.warnings), name
    # The headline (WDR or MAGIC) carries the reason, so the report is unreliable and the gate says why.
    assert not report.reliable
    assert any("too heavy-tailed to trust" in w for w in report.warnings), report.warnings
    decision = gate_model(report, None, GateConfig(threshold=0.0, min_effective_sample_size=0.0))
    assert not decision.approved
    assert any("too heavy-tailed to trust" in r for r in decision.reasons), decision.reasons
    assert decision.checked["pareto_k"] == report.headline_estimate.pareto_k
    # The unreliable headline reports the interval that holds whatever the tail, and says so;
    # the other estimates keep their bootstrap intervals.
    head = report.headline_estimate
    assert head.interval == "truncated_is"
    assert "the interval is the truncated importance-sampling bound" in report.verdict
    assert {e.interval for k, e in report.estimates.items() if k != report.headline} == {"bootstrap"}
    # by hand: returns of 10 steps with rewards in [r_min, r_max] lie in [a·S, b·S], a = min(r_min, 0),
    # b = max(r_max, 0), S = Σ_{t<10} γ^t; the interval is inside that and far wider than the bootstrap's
    total = sum(report.gamma**t for t in range(10))
    low, high = min(frame["reward"].min(), 0.0) * total, max(frame["reward"].max(), 0.0) * total
    assert low <= head.ci_low < head.ci_high <= high
    seq = report.estimates["sequential_dr"]
    assert head.ci_high - head.ci_low > 3 * (seq.ci_high - seq.ci_low)


def test_light_tailed_cumulative_weights_leave_the_sequential_estimates_alone() -> None:
    frame, x = _timelines(1000, 5, 1)
    report = _evaluate(frame, _sigmoid_target(x, 0.5))
    wdr = report.estimates["wdr"]
    assert wdr.pareto_k is not None and wdr.pareto_k < 0.5
    assert wdr.reliable, wdr.warnings
    assert report.headline_estimate.interval == "bootstrap"
    assert "truncated importance-sampling" not in report.verdict
    assert not any("heavy-tailed" in w for e in report.estimates.values() for w in e.warnings)
