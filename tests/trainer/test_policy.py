"""`action_distribution` against answers worked out by hand: greedy, ε-greedy, softmax, softmax + ε,
masks of impossible actions, tie breaking, and the inputs it must refuse."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from trainer import (
    EpsilonGreedyExploration,
    ExplorationConfig,
    GreedyExploration,
    SoftmaxExploration,
    action_distribution,
)

ALL = [1, 1, 1]
LN2, LN3 = math.log(2.0), math.log(3.0)
Z = 1.0 + math.e + math.e**2  # Σ exp(Q) for Q = (1, 2, 0): 11.1073


def _one_row(q: list[float], mask: list[int], exploration: ExplorationConfig) -> np.ndarray:
    probabilities = action_distribution(np.array([q]), np.array([mask]), exploration)
    assert probabilities.shape == (1, len(q))
    return probabilities[0]


@pytest.mark.parametrize(
    ("q", "mask", "exploration", "expected"),
    [
        # greedy: all mass on argmax Q = action 1
        ([1.0, 2.0, 0.0], ALL, GreedyExploration(), [0.0, 1.0, 0.0]),
        # ε-greedy, ε = 0.1: best gets 0.9 + 0.1/3 = 0.9333, the others 0.1/3 = 0.0333
        ([1.0, 2.0, 0.0], ALL, EpsilonGreedyExploration(epsilon=0.1), [1 / 30, 28 / 30, 1 / 30]),
        # ε = 0 is greedy; ε = 1 is uniform over the three actions
        ([1.0, 2.0, 0.0], ALL, EpsilonGreedyExploration(epsilon=0.0), [0.0, 1.0, 0.0]),
        ([1.0, 2.0, 0.0], ALL, EpsilonGreedyExploration(epsilon=1.0), [1 / 3, 1 / 3, 1 / 3]),
        # softmax, T = 1: exp(Q) = (1, 2, 3) → (1/6, 2/6, 3/6)
        ([0.0, LN2, LN3], ALL, SoftmaxExploration(temperature=1.0), [1 / 6, 1 / 3, 1 / 2]),
        # softmax, T = 2: Q/T = (0, ln 2, ln 3) → the same (1/6, 1/3, 1/2)
        ([0.0, 2 * LN2, 2 * LN3], ALL, SoftmaxExploration(temperature=2.0), [1 / 6, 1 / 3, 1 / 2]),
        # softmax, T = 1, Q = (1, 2, 0): e/(1+e+e²), e²/(…), 1/(…) with 1+e+e² = 11.1073
        (
            [1.0, 2.0, 0.0],
            ALL,
            SoftmaxExploration(),
            [math.e / Z, math.e**2 / Z, 1 / Z],
        ),
        # softmax + ε = 0.4: 0.6·(1/6, 1/3, 1/2) + 0.4/3 = (0.2333, 0.3333, 0.4333)
        ([0.0, LN2, LN3], ALL, SoftmaxExploration(epsilon=0.4), [0.7 / 3, 1.0 / 3, 1.3 / 3]),
        # softmax of huge Q does not overflow: Q − 1000 = (0, ln 3) → (1/4, 3/4)
        ([1000.0, 1000.0 + LN3], [1, 1], SoftmaxExploration(), [0.25, 0.75]),
    ],
)
def test_distribution_matches_the_hand_computed_answer(q, mask, exploration, expected) -> None:
    assert _one_row(q, mask, exploration) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("q", "mask", "exploration", "expected"),
    [
        # the best Q (5) is impossible: greedy takes the best possible one, action 0
        ([1.0, 5.0, 0.0], [1, 0, 1], GreedyExploration(), [1.0, 0.0, 0.0]),
        # ε = 0.2 spreads over the 2 possible actions only: (0.8 + 0.1, 0, 0.1)
        ([1.0, 5.0, 0.0], [1, 0, 1], EpsilonGreedyExploration(epsilon=0.2), [0.9, 0.0, 0.1]),
        # softmax over the possible (0, ln 2, ln 3) only: exp = (1, 2, 3) → (1/6, 1/3, 0, 1/2)
        ([0.0, LN2, 100.0, LN3], [1, 1, 0, 1], SoftmaxExploration(), [1 / 6, 1 / 3, 0.0, 1 / 2]),
        # + ε = 0.3 uniform over 3 possible: 0.7·(1/6, 1/3, 0, 1/2) + 0.1 = (0.2167, 0.3333, 0, 0.45)
        (
            [0.0, LN2, 100.0, LN3],
            [1, 1, 0, 1],
            SoftmaxExploration(epsilon=0.3),
            [0.7 / 6 + 0.1, 0.7 / 3 + 0.1, 0.0, 0.45],
        ),
        # the exported graph puts −inf on impossible actions: still 0, no NaN
        # exp(Q − 1) over the possible = (1, 3) → (1/4, 3/4); with ε = 0.2: 0.8·(1/4, 3/4) + 0.1 = (0.3, 0.7)
        ([-math.inf, 1.0, 1.0 + LN3], [0, 1, 1], SoftmaxExploration(epsilon=0.2), [0.0, 0.3, 0.7]),
        # ε = 0.5 over 2 possible: best 0.5 + 0.25, the other 0.25
        ([-math.inf, 1.0, 3.0], [0, 1, 1], EpsilonGreedyExploration(epsilon=0.5), [0.0, 0.25, 0.75]),
        # one possible action is certain whatever the exploration
        ([9.0, 1.0, 9.0], [0, 1, 0], SoftmaxExploration(epsilon=0.5), [0.0, 1.0, 0.0]),
        ([9.0, 1.0, 9.0], [0, 1, 0], EpsilonGreedyExploration(epsilon=0.5), [0.0, 1.0, 0.0]),
    ],
)
def test_impossible_actions_get_zero_and_exploration_covers_only_possible_ones(
    q, mask, exploration, expected
) -> None:
    assert _one_row(q, mask, exploration) == pytest.approx(expected, abs=1e-12)


def test_ties_go_to_the_lowest_possible_index_and_softmax_splits_them() -> None:
    assert _one_row([2.0, 2.0, 1.0], ALL, GreedyExploration()) == pytest.approx([1.0, 0.0, 0.0])
    # ε = 0.3: (0.7 + 0.1, 0.1, 0.1)
    assert _one_row([2.0, 2.0, 1.0], ALL, EpsilonGreedyExploration(epsilon=0.3)) == pytest.approx(
        [0.8, 0.1, 0.1], abs=1e-12
    )
    # the lowest tied index is impossible: the next tied one wins
    assert _one_row([2.0, 2.0, 2.0], [0, 1, 1], GreedyExploration()) == pytest.approx([0.0, 1.0, 0.0])
    assert _one_row([2.0, 2.0, 1.0], ALL, SoftmaxExploration(temperature=0.5)) == pytest.approx(
        [1 / (2 + math.exp(-2.0)), 1 / (2 + math.exp(-2.0)), math.exp(-2.0) / (2 + math.exp(-2.0))],
        abs=1e-12,
    )


def test_rows_of_a_batch_are_independent() -> None:
    q = np.array([[1.0, 2.0, 0.0], [0.0, LN2, LN3], [5.0, 5.0, 5.0]])
    mask = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 1]])
    probabilities = action_distribution(q, mask, SoftmaxExploration(epsilon=0.4))
    np.testing.assert_allclose(
        probabilities,
        [
            # 0.6·(e, e², 1)/11.1073 + 0.4/3
            [
                0.6 * math.e / Z + 0.4 / 3,
                0.6 * math.e**2 / Z + 0.4 / 3,
                0.6 / Z + 0.4 / 3,
            ],
            [0.7 / 3, 1.0 / 3, 1.3 / 3],
            [0.0, 0.0, 1.0],
        ],
        atol=1e-12,
    )


def test_inputs_that_are_not_a_batch_of_rows_are_refused() -> None:
    with pytest.raises(ValueError, match=r"must both be \[batch, actions\]"):
        action_distribution(np.zeros((2, 3)), np.ones((2, 2)), GreedyExploration())
    with pytest.raises(ValueError, match=r"must both be \[batch, actions\]"):
        action_distribution(np.zeros(3), np.ones(3), GreedyExploration())
    with pytest.raises(ValueError, match="at least one possible action"):
        action_distribution(np.zeros((2, 3)), np.array([[1, 0, 0], [0, 0, 0]]), SoftmaxExploration())


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "epsilon_greedy", "epsilon": 1.5},
        {"type": "epsilon_greedy", "epsilon": -0.1},
        {"type": "softmax", "temperature": 0.0},
        {"type": "softmax", "epsilon": 2.0},
        {"type": "greedy", "epsilon": 0.1},  # greedy has no ε: unknown keys are refused
        {"type": "boltzmann"},
    ],
)
def test_bad_exploration_configs_are_refused(raw) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(ExplorationConfig).validate_python(raw)


def test_exploration_config_is_chosen_by_its_type() -> None:
    parsed = TypeAdapter(ExplorationConfig).validate_python({"type": "softmax", "temperature": 2.0})
    assert parsed == SoftmaxExploration(temperature=2.0, epsilon=0.0)
    assert TypeAdapter(ExplorationConfig).validate_python({"type": "greedy"}) == GreedyExploration()


@pytest.mark.parametrize(
    "exploration",
    [GreedyExploration(), EpsilonGreedyExploration(epsilon=0.1), SoftmaxExploration(temperature=1.0)],
    ids=["greedy", "epsilon_greedy", "softmax"],
)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_q_on_a_possible_action_gives_no_distribution(exploration, bad) -> None:
    # Row 0: the only possible action has a non-finite Q; argmax must not fall back to the
    # impossible index 0. Row 1 is healthy and keeps its hand-computed answer.
    q = np.array([[5.0, bad], [1.0, 2.0]])
    mask = np.array([[0, 1], [1, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from the math either
        got = action_distribution(q, mask, exploration)
    assert np.isnan(got[0]).all()
    assert np.isfinite(got[1]).all()
    assert got[1].sum() == pytest.approx(1.0)


def test_a_non_finite_q_on_an_impossible_action_is_ignored() -> None:
    got = action_distribution(np.array([[np.nan, 1.0, 3.0]]), np.array([[0, 1, 1]]), GreedyExploration())
    np.testing.assert_array_equal(got, [[0.0, 0.0, 1.0]])
