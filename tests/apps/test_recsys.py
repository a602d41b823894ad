"""The recommendation simulator's truth: hand-computed rewards, oracle, uniform and gap values."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from apps.recsys import RecsysError, RecsysRequest, RecsysSim, RecsysSimConfig, RecsysWorld

# A 2-user, 3-item world small enough to compute by hand.
#   W = [[2, 0], [0, -1]], bias = -1, popularity b = [0, 0.5, -0.5]
#   user 0: x = [1, 0] → xᵀW = [2, 0];  user 1: x = [0, 2] → xᵀW = [0, -2]
#   items z0 = [1, 0], z1 = [0, 1], z2 = [1, 1]
#   logits user 0: 2 + 0 − 1 = 1,   0 + 0.5 − 1 = −0.5,  2 − 0.5 − 1 = 0.5
#   logits user 1: 0 + 0 − 1 = −1,  −2 + 0.5 − 1 = −2.5, −2 − 0.5 − 1 = −3.5
# σ(1) = 0.7310585786, σ(−0.5) = 0.3775406688, σ(0.5) = 0.6224593312,
# σ(−1) = 0.2689414214, σ(−2.5) = 0.0758581800, σ(−3.5) = 0.0293122308.
P = np.array(
    [
        [0.7310585786, 0.3775406688, 0.6224593312],
        [0.2689414214, 0.0758581800, 0.0293122308],
    ]
)


@pytest.fixture
def tiny() -> RecsysSim:
    config = RecsysSimConfig(n_users=2, n_items=3, user_dim=2, item_dim=2, min_candidates=2, max_candidates=3)
    world = RecsysWorld(
        user_features=np.array([[1.0, 0.0], [0.0, 2.0]]),
        item_features=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
        popularity=np.array([0.0, 0.5, -0.5]),
        weights=np.array([[2.0, 0.0], [0.0, -1.0]]),
        bias=-1.0,
    )
    return RecsysSim(config, world)


def _requests() -> list[RecsysRequest]:
    return [
        RecsysRequest(index=0, user=0, candidates=np.array([0, 1, 2])),
        RecsysRequest(index=1, user=1, candidates=np.array([2, 0])),
    ]


def test_expected_rewards_are_the_hand_computed_sigmoids(tiny: RecsysSim) -> None:
    first, second = _requests()
    np.testing.assert_allclose(tiny.expected_rewards(first), P[0], atol=1e-9)
    np.testing.assert_allclose(tiny.expected_rewards(second), [P[1, 2], P[1, 0]], atol=1e-9)


def test_oracle_uniform_policy_and_gap_by_hand(tiny: RecsysSim) -> None:
    requests = _requests()
    # oracle: best of each = σ(1) and σ(−1); they sum to 1, so the mean is exactly 0.5
    assert tiny.oracle_value(requests) == pytest.approx(0.5, abs=1e-12)
    # uniform: mean of (0.7310585786 + 0.3775406688 + 0.6224593312) / 3 = 0.5770195262
    #          and (0.0293122308 + 0.2689414214) / 2 = 0.1491268261 → 0.3630731761
    assert tiny.uniform_value(requests) == pytest.approx(0.3630731762, abs=1e-9)
    # choosing item 2 then item 0: mean(0.6224593312, 0.2689414214) = 0.4457003763
    assert tiny.policy_value(requests, [2, 0]) == pytest.approx(0.4457003763, abs=1e-9)
    # gap: (0.4457003763 − 0.3630731762) / (0.5 − 0.3630731762) = 0.0826272002 / 0.1369268239
    assert tiny.gap_closed(requests, [2, 0]) == pytest.approx(0.6034405664, abs=1e-8)
    assert tiny.gap_closed(requests, [0, 0]) == pytest.approx(1.0, abs=1e-12)  # the oracle's picks


def test_candidate_and_context_are_what_the_app_sends(tiny: RecsysSim) -> None:
    assert tiny.candidate(1) == {
        "id": "item-1",
        "features": {"item_0": 0.0, "item_1": 1.0, "item_popularity": 0.5},
    }
    assert tiny.context(1) == {"user_0": 0.0, "user_1": 2.0}
    request = _requests()[1]
    assert tiny.item_index(request, "item-0") == 0
    with pytest.raises(RecsysError, match=r"'item-1' was not offered; offered \['item-2', 'item-0'\]"):
        tiny.item_index(request, "item-1")
    with pytest.raises(RecsysError, match="item 1 was not among its candidates"):
        tiny.draw_reward(request, 1)
    with pytest.raises(RecsysError, match="1 choices for 2 requests"):
        tiny.policy_value(_requests(), [0])


def test_requests_are_seeded_distinct_and_span_the_candidate_range() -> None:
    sim = RecsysSim(RecsysSimConfig(seed=3))
    again = RecsysSim(RecsysSimConfig(seed=3))
    requests = sim.requests(0, 600)
    for a, b in zip(requests, again.requests(0, 600), strict=True):
        assert a.user == b.user and a.candidates.tolist() == b.candidates.tolist()
    assert sim.request(250).candidates.tolist() == requests[250].candidates.tolist()  # replayable alone
    counts = {r.candidates.size for r in requests}
    assert counts == set(range(5, 11))  # K uniform on [5, 10]: all six counts in 600 draws
    assert all(len(set(r.candidates.tolist())) == r.candidates.size for r in requests)
    other = RecsysSim(RecsysSimConfig(seed=4)).requests(0, 50)
    assert [r.user for r in other] != [r.user for r in requests[:50]]


def test_rewards_are_bernoulli_with_the_expected_probability() -> None:
    sim = RecsysSim(RecsysSimConfig(n_users=50, n_items=40))
    requests = sim.requests(0, 6000)
    p = np.array([sim.expected_rewards(r)[0] for r in requests])
    clicks = np.array([sim.draw_reward(r, int(r.candidates[0])) for r in requests])
    assert set(np.unique(clicks)) == {0.0, 1.0}
    # sum of independent Bernoullis: 4 standard deviations
    assert abs(clicks.sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())
    assert sim.draw_reward(requests[7], int(requests[7].candidates[0])) == clicks[7]  # seeded


def test_default_world_leaves_a_wide_gap_to_close() -> None:
    """Uniform random and the oracle differ by far more than an evaluation's sampling noise."""
    sim = RecsysSim(RecsysSimConfig())
    requests = sim.requests(0, 2000)
    uniform, oracle = sim.uniform_value(requests), sim.oracle_value(requests)
    assert 0.2 < uniform < oracle - 0.2


def test_bad_config_and_world_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"min_candidates \(6\) must be <= max_candidates \(5\)"):
        RecsysSimConfig(min_candidates=6, max_candidates=5)
    with pytest.raises(ValidationError, match=r"max_candidates \(10\) must be <= n_items \(4\)"):
        RecsysSimConfig(n_items=4)
    with pytest.raises(RecsysError, match=r"RecsysWorld.weights must have shape \(2, 2\), got \(2, 3\)"):
        RecsysWorld(
            user_features=np.zeros((2, 2)),
            item_features=np.zeros((3, 2)),
            popularity=np.zeros(3),
            weights=np.zeros((2, 3)),
            bias=0.0,
        )
