"""Exact Shapley values on games whose values are known by hand, and the axioms they must satisfy."""

from __future__ import annotations

import numpy as np
import pytest

from audits.methods.exact_shapley import coalitions, interventional_values, shapley_from_values, shapley_values


def test_glove_game():
    # players 0 and 1 hold left gloves, player 2 a right glove; a pair is worth 1.
    # By hand: phi = (1/6, 1/6, 2/3).
    def game(members):
        return np.minimum(members[:, :2].sum(axis=1), members[:, 2])

    np.testing.assert_allclose(shapley_values(game, 3), [1 / 6, 1 / 6, 2 / 3])


def test_airport_game():
    # runway costs 1, 2, 4 for three planes (v(S) = -max cost): phi = (-1/3, -1/3 - 1/2, -1/3 - 1/2 - 2)
    costs = np.array([1.0, 2.0, 4.0])

    def game(members):
        return -np.max(np.where(members, costs, 0.0), axis=1)

    np.testing.assert_allclose(shapley_values(game, 3), [-1 / 3, -5 / 6, -17 / 6])


def test_majority_voting_game():
    # weighted vote [51; 50, 49, 1]: a coalition wins with 51 votes. By hand: 2/3, 1/6, 1/6.
    weights = np.array([50, 49, 1])

    def game(members):
        return (members @ weights >= 51).astype(float)

    np.testing.assert_allclose(shapley_values(game, 3), [2 / 3, 1 / 6, 1 / 6])


def test_axioms_on_a_random_game_with_12_players():
    rng = np.random.default_rng(0)
    n = 12
    values = rng.normal(size=2**n)
    values[0] = 0.0
    dummy = 5  # make player 5 a null player: v(S + 5) = v(S)
    masks = np.arange(2**n)
    values[masks & (1 << dummy) != 0] = values[masks[masks & (1 << dummy) != 0] ^ (1 << dummy)]
    phi = shapley_from_values(values)
    assert phi.sum() == pytest.approx(values[-1] - values[0])  # efficiency
    assert phi[dummy] == pytest.approx(0.0, abs=1e-12)  # null player
    additive = rng.normal(size=n)
    linear = coalitions(n) @ additive  # an additive game: each player gets exactly its own worth
    np.testing.assert_allclose(shapley_from_values(linear), additive, atol=1e-10)


def test_interventional_values_of_a_linear_model_are_coefficient_times_distance_from_the_mean():
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=6), 0.3
    background, row = rng.normal(size=(40, 6)), rng.normal(size=6)
    phi, base = interventional_values(lambda X: X @ w + b, row, background)
    np.testing.assert_allclose(phi[:, 0], w * (row - background.mean(axis=0)), atol=1e-12)
    assert base[0] == pytest.approx((background @ w + b).mean())


def test_too_many_players_is_refused():
    with pytest.raises(ValueError, match="1 to 20 players"):
        coalitions(21)
