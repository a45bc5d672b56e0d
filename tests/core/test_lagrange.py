"""Multiplier updates against sequences computed by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from saferl.core.lagrange import LagrangeConfig, lagrange_init, lagrange_update


def run(config, costs, limit):
    state = lagrange_init(config, len(limit))
    out = []
    for c in costs:
        state = lagrange_update(
            config, state, jnp.asarray(c, jnp.float32), jnp.asarray(limit, jnp.float32)
        )
        out.append(np.asarray(state.multiplier))
    return np.array(out)


def test_gradient_ascent_sequence_two_constraints():
    config = LagrangeConfig(method="gradient", lr=0.5, init=0.0)
    costs = [[14, 3], [12, 9], [6, 7], [2, 5], [25, 5]]
    limits = [10, 5]
    # λ₀: 0 → 2 → 3 → 1 → 0 (clipped at 0: 1 + 0.5·(2 − 10) = −3) → 7.5
    # λ₁: 0 → 0 (clipped) → 2 → 3 → 3 → 3
    expected = [[2, 0], [3, 2], [1, 3], [0, 3], [7.5, 3]]
    np.testing.assert_allclose(run(config, costs, limits), expected, atol=1e-6)


def test_gradient_ascent_respects_the_upper_clip():
    config = LagrangeConfig(method="gradient", lr=1.0, max_multiplier=4.0)
    np.testing.assert_allclose(run(config, [[20], [20]], [10]), [[4.0], [4.0]])


def test_pid_sequence_by_hand():
    config = LagrangeConfig(
        method="pid", kp=1.0, ki=0.1, kd=2.0, ema_alpha_p=0.5, ema_alpha_d=0.5, delay=2, init=0.0
    )
    costs = [[20.0], [30.0], [10.0], [0.0]]
    limit = [10.0]
    # errors e: 10, 20, 0, −10
    # I: 1, 3, 3, 2              (I ← max(0, I + 0.1 e))
    # EMA_p(e): 5, 12.5, 6.25, −1.875
    # EMA_d(J): 10, 20, 15, 7.5; history (delay 2) starts [0, 0]:
    #   D-terms compare with the EMA two updates ago: 10−0, 20−0, 15−10, 7.5−20 → 10, 20, 5, 0
    # λ = max(0, P + I + 2·D): 5+1+20 = 26, 12.5+3+40 = 55.5, 6.25+3+10 = 19.25, −1.875+2+0 = 0.125
    np.testing.assert_allclose(run(config, costs, limit)[:, 0], [26, 55.5, 19.25, 0.125], rtol=1e-6)


def test_pid_integral_is_projected_at_zero():
    config = LagrangeConfig(method="pid", kp=0.0, ki=1.0, kd=0.0)
    np.testing.assert_allclose(run(config, [[0.0], [0.0], [15.0]], [10.0])[:, 0], [0, 0, 5])


@pytest.mark.parametrize(
    "field,value", [("lr", -1.0), ("ema_alpha_p", 1.0), ("delay", 0), ("method", "adam")]
)
def test_bad_configuration_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        LagrangeConfig(**{field: value})


def test_lagrangian_advantage_combines_and_skips_without_an_estimate():
    from saferl.core.lagrange import lagrangian_advantage

    config = LagrangeConfig(method="gradient", lr=1.0)
    state = lagrange_init(config, 2)
    reward = jnp.array([1.0, -1.0])
    costs = jnp.array([[2.0, 0.0], [0.0, 4.0]])
    new, advantage, metrics = lagrangian_advantage(
        config, state, jnp.array([12.0, 11.0]), jnp.array([10.0, 10.0]), jnp.array(True),
        reward, costs)
    np.testing.assert_allclose(new.multiplier, [2.0, 1.0])  # λ ← λ + 1·(J − d)
    # (Â_R − Σ λ_i Â_Ci)/(1 + Σλ): [(1 − 4)/4, (−1 − 4)/4]
    np.testing.assert_allclose(advantage, [-0.75, -1.25])
    assert float(metrics["lagrange/lambda_0"]) == 2.0
    same, _, _ = lagrangian_advantage(config, state, jnp.array([12.0, 11.0]),
                                      jnp.array([10.0, 10.0]), jnp.array(False), reward, costs)
    np.testing.assert_array_equal(same.multiplier, state.multiplier)
