"""Gates, model and loss on tiny hand-computed cases (DESIGN.md §3), in float64 by hand.

Where a computation is float32 by specification the expected value is computed from the
float32-rounded input (e.g. a keep probability or the clamp bound 1 - 1e-6, which torch and
jaxcal both round to float32 before using), and compared with a float32 tolerance.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcal import CalibrationWeights, data_loss, target_loss_weights
from jaxcal._gates import clamp, deterministic_gates, l0_penalty, sample_gates

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1
U_LO = 1e-6
U_HI = float(np.float32(1 - 1e-6))  # 1 - 1.0133e-6: the bound after rounding to float32
RTOL = 2e-6


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def logit(p):
    return math.log(p / (1 - p))


def stretch(s):
    """s * (zeta - gamma) + gamma clipped to [0, 1], for the default gamma and zeta."""
    return min(max(s * (ZETA - GAMMA) + GAMMA, 0.0), 1.0)


def f32(p):
    return float(np.float32(p))


def assert_close(actual, expected, rtol=RTOL, atol=1e-7):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# (log_alpha, uniform, beta, expected gate), each written out with the clamps already applied.
SAMPLE_CASES = {
    "centre": (0.0, 0.5, BETA, 0.5),  # sigmoid(0) = 1/2 -> 1.2 / 2 - 0.1
    "interior": (0.3, 0.7, BETA, stretch(sigmoid((logit(0.7) + 0.3) / BETA))),
    "low_temperature": (-1.2, 0.35, 0.35, stretch(sigmoid((logit(0.35) - 1.2) / 0.35))),
    "clamped_to_0": (-4.0, 0.2, BETA, 0.0),  # stretch(0.0003) < 0
    "clamped_to_1": (4.0, 0.8, BETA, 1.0),  # stretch(0.9997) > 1
    # log_alpha is clamped to +-20 (visible at a high temperature, where gates do not saturate).
    "log_alpha_above_20": (25.0, 0.5, 10.0, stretch(sigmoid(20 / 10))),  # 0.95696; 1 unclamped
    "log_alpha_below_-20": (-25.0, 0.5, 10.0, stretch(sigmoid(-20 / 10))),
    # u is clamped to [1e-6, 1 - 1e-6]: u = 0 would give logit -inf and a closed gate. Both
    # expected gates are strictly inside (0, 1), about 0.58 and 0.41.
    "u_zero": (14.0, 0.0, BETA, stretch(sigmoid((logit(U_LO) + 14) / BETA))),
    "u_one": (-14.0, 1.0, BETA, stretch(sigmoid((logit(U_HI) - 14) / BETA))),
    "both_clamped": (30.0, 0.0, BETA, 1.0),  # logit(1e-6) + 20 = 6.18 > 0; unclamped u gives 0
}


@pytest.mark.parametrize("name", SAMPLE_CASES)
def test_sample_gates(name):
    log_alpha, u, beta, expected = SAMPLE_CASES[name]
    gate = sample_gates(jnp.array([log_alpha]), jnp.array([u]), beta, GAMMA, ZETA)
    assert gate.dtype == jnp.float32
    assert_close(gate, [expected])


def test_sample_gates_is_elementwise():
    cases = [c for c in SAMPLE_CASES.values() if c[2] == BETA]
    la, u, _, expected = (jnp.array(v, jnp.float32) for v in zip(*cases, strict=True))
    assert_close(sample_gates(la, u, BETA, GAMMA, ZETA), expected)


@pytest.mark.parametrize(
    "log_alpha, beta, expected",
    [
        (0.0, BETA, 0.5),
        (1.0, BETA, stretch(sigmoid(1.5))),
        (-0.9, 0.35, stretch(sigmoid(-0.9 / 0.35))),
        (-3.0, BETA, 0.0),  # stretch(sigmoid(-4.5)) = stretch(0.011) < 0
        (3.0, BETA, 1.0),
        (25.0, 10.0, stretch(sigmoid(2.0))),  # clamped to 20
        (-25.0, 10.0, stretch(sigmoid(-2.0))),
    ],
)
def test_deterministic_gates(log_alpha, beta, expected):
    assert_close(deterministic_gates(jnp.array([log_alpha]), beta, GAMMA, ZETA), [expected])


SHIFT = -BETA * math.log(-GAMMA / ZETA)  # = (2/3) log 11 = 1.59859


@pytest.mark.parametrize(
    "log_alpha, beta, expected",
    [
        ([0.0], BETA, sigmoid(SHIFT)),
        ([0.0, 2.0, -3.0], BETA, sigmoid(SHIFT) + sigmoid(2 + SHIFT) + sigmoid(-3 + SHIFT)),
        ([1.0], 0.35, sigmoid(1 + 0.35 * math.log(11))),
        ([-25.0], BETA, sigmoid(-20 + SHIFT)),  # 1.0e-8; unclamped it would be 6.8e-11
        ([25.0, 20.0], BETA, 2 * sigmoid(20 + SHIFT)),
        ([], BETA, 0.0),
    ],
)
def test_l0_penalty(log_alpha, beta, expected):
    assert_close(l0_penalty(jnp.array(log_alpha, jnp.float32), beta, GAMMA, ZETA), expected, atol=0)


def test_clamp_has_torchs_gradient():
    """Like torch.clamp: gradient 1 inside [lo, hi] including the bounds, 0 outside."""
    x = jnp.array([-1.5, -1.0, 0.3, 2.0, 2.5])
    assert_close(clamp(x, -1.0, 2.0), [-1.0, -1.0, 0.3, 2.0, 2.0])
    grad = jax.vmap(jax.grad(lambda v: clamp(v, -1.0, 2.0)))(x)
    np.testing.assert_array_equal(grad, [0.0, 1.0, 1.0, 1.0, 0.0])


def test_log_alpha_clamp_passes_gradient_at_the_bound_only():
    # At beta = 10 the gate at +-20 is stretch(sigmoid(+-2)), inside (0, 1): its derivative in
    # log_alpha is (zeta - gamma) * s (1 - s) / beta at the bound and 0 beyond it.
    gate = lambda la: deterministic_gates(la, 10.0, GAMMA, ZETA)  # noqa: E731
    log_alpha = jnp.array([20.0, 20.5, -20.0, -21.0])
    grad = jax.vmap(jax.grad(lambda la: gate(la[None])[0]))(log_alpha)
    slope = 1.2 * sigmoid(2) * (1 - sigmoid(2)) / 10
    assert_close(grad, [slope, 0.0, slope, 0.0], atol=0)


# --- CalibrationWeights ---------------------------------------------------------------------

KEY = jax.random.key(0)


def test_model_defaults_are_l0_pythons():
    model = CalibrationWeights.init(3, key=KEY, log_alpha_jitter_sd=0.0)
    assert (model.beta, model.gamma, model.zeta, model.use_gates) == (2 / 3, -0.1, 1.1, True)
    assert_close(model.log_weight, [math.log(1 + 1e-8)] * 3)
    np.testing.assert_array_equal(model.log_alpha, [0.0] * 3)  # logit(0.5)
    assert model.log_weight.dtype == model.log_alpha.dtype == jnp.float32
    assert model.n_records == 3


@pytest.mark.parametrize(
    "init_weights, expected",
    [
        (100.0, [math.log(100)] * 3),
        ([0.0, 1.0, 2.5], [math.log(1e-8), 0.0, math.log(2.5)]),  # log(w + 1e-8)
        (np.array([3e-8, 7.0, 1e6]), [math.log(4e-8), math.log(7), math.log(1e6)]),
    ],
)
def test_init_log_weight(init_weights, expected):
    model = CalibrationWeights.init(3, key=KEY, init_weights=init_weights, log_alpha_jitter_sd=0.0)
    assert_close(model.log_weight, expected)


@pytest.mark.parametrize(
    "keep_prob, expected",
    [
        (0.25, [-math.log(3)] * 3),
        (0.999, [logit(f32(0.999))] * 3),  # logit in float32, as torch computes it
        ([0.0, 0.9, 1.0], [logit(f32(1e-6)), logit(f32(0.9)), logit(U_HI)]),  # arrays are clipped
        ([-3.0, 1e-7, 7.0], [logit(f32(1e-6))] * 2 + [logit(U_HI)]),
    ],
)
def test_init_log_alpha(keep_prob, expected):
    model = CalibrationWeights.init(3, key=KEY, init_keep_prob=keep_prob, log_alpha_jitter_sd=0.0)
    assert_close(model.log_alpha, expected)


def test_init_log_alpha_jitter():
    def jitter(sd, key=KEY, n=20_000):
        model = CalibrationWeights.init(n, key=key, init_keep_prob=0.8, log_alpha_jitter_sd=sd)
        return np.asarray(model.log_alpha, np.float64) - math.log(4)

    base = jitter(0.3)
    default = CalibrationWeights.init(20_000, key=KEY, init_keep_prob=0.8).log_alpha  # sd 0.01
    assert_close(np.asarray(default, np.float64) - math.log(4), base / 30, rtol=1e-4, atol=1e-6)
    assert_close(jitter(0.0), np.zeros_like(base), atol=1e-6)
    np.testing.assert_array_equal(jitter(0.3), base)  # same key, same draws
    assert_close(jitter(0.6) / 0.6, base / 0.3, rtol=1e-4, atol=1e-5)  # N(0, 1) * sd
    assert not np.allclose(jitter(0.3, key=jax.random.key(1)), base)
    noise = base / 0.3  # N(0, 1): mean within 5 standard errors, sd within 3%
    assert abs(noise.mean()) < 5 / math.sqrt(noise.size)
    assert abs(noise.std() - 1) < 0.03


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(init_weights=[1.0, 2.0]), r"init_weights must be a scalar or have shape \(3,\)"),
        (dict(init_weights=np.ones((3, 1))), "init_weights must be a scalar"),
        (dict(init_keep_prob=[0.5] * 4), "init_keep_prob must be a scalar"),
        (dict(init_weights=-1.0), "non-negative"),
        (dict(init_weights=[1.0, -0.1, 2.0]), "non-negative"),
        (dict(init_weights=[1.0, np.nan, 2.0]), "finite"),
        (dict(init_weights=np.inf), "finite"),
        (dict(init_keep_prob=0.0), r"init_keep_prob must lie in \(0, 1\)"),
        (dict(init_keep_prob=1.0), r"init_keep_prob must lie in \(0, 1\)"),
        (dict(init_keep_prob=-0.5), r"init_keep_prob must lie in \(0, 1\)"),
        (dict(init_keep_prob=1.5), r"init_keep_prob must lie in \(0, 1\)"),
        (dict(init_keep_prob=np.nan), r"init_keep_prob must lie in \(0, 1\)"),
        (dict(init_keep_prob=[0.5, np.nan, 0.5]), "init_keep_prob must not contain NaN"),
        (dict(log_alpha_jitter_sd=-0.1), "log_alpha_jitter_sd must not be negative"),
        (dict(beta=0.0), "beta > 0"),
        (dict(gamma=0.1), "gamma < 0"),
        (dict(zeta=0.9), "1 < zeta"),
    ],
)
def test_init_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CalibrationWeights.init(3, key=KEY, **kwargs)


def test_init_rejects_negative_record_count():
    with pytest.raises(ValueError, match="n_records must not be negative"):
        CalibrationWeights.init(-1, key=KEY)


# Weights 2, 3, 5; gates: open half way, partly open, closed.
LOG_ALPHA = [0.0, 1.0, -20.0]
UNIFORM = [0.5, 0.7, 0.9]
SAMPLED_GATES = [0.5, stretch(sigmoid((logit(0.7) + 1) / BETA)), 0.0]
DETERMINISTIC_GATES = [0.5, stretch(sigmoid(1.5)), 0.0]


def _model(use_gates=True, log_alpha=LOG_ALPHA, weights=(2.0, 3.0, 5.0)):
    log_weight = jnp.log(jnp.array(weights))
    return CalibrationWeights(log_weight, jnp.array(log_alpha), use_gates=use_gates)


def test_weights_with_gates():
    model = _model()
    assert_close(model.sample_weights(jnp.array(UNIFORM)), np.multiply([2, 3, 5], SAMPLED_GATES))
    assert_close(model.deterministic_weights(), np.multiply([2, 3, 5], DETERMINISTIC_GATES))
    assert_close(model.deterministic_gates(), DETERMINISTIC_GATES)
    assert_close(model.l0_penalty(), sum(sigmoid(la + SHIFT) for la in LOG_ALPHA))
    assert int(model.n_active()) == 2


def test_weights_without_gates():
    model = _model(use_gates=False)
    for weights in (
        model.sample_weights(jnp.array(UNIFORM)),
        model.sample_weights(None),
        model.deterministic_weights(),
    ):
        assert_close(weights, [2.0, 3.0, 5.0])
    assert float(model.l0_penalty()) == 0.0
    assert int(model.n_active()) == 3


@pytest.mark.parametrize("use_gates", [True, False])
def test_l2_penalty_is_on_ungated_weights(use_gates):
    assert_close(_model(use_gates).l2_penalty(), 4.0 + 9.0 + 25.0)


def test_n_active_threshold():
    """A deterministic gate is exactly 0 iff sigmoid(la / beta) <= 1/12, i.e. la <= -beta log 11."""
    threshold = -BETA * math.log(11)  # -1.59859
    model = _model(log_alpha=[threshold + 0.01, threshold - 0.01, 0.0])
    assert int(model.n_active()) == 2
    gates = np.asarray(model.deterministic_gates())
    assert gates[0] > 0 and gates[1] == 0
    np.testing.assert_array_equal(model.deterministic_weights() > 0, [True, False, True])


# --- data loss and target weights ---------------------------------------------------------

PREDICTIONS = [1.0, 2.0, 3.0]
TARGETS = [0.0, 3.0, 9.0]
LOSS_WEIGHTS = [1.0, 0.5, 2.0]


@pytest.mark.parametrize(
    "kind, expected",
    [
        # sum g ((t - p) / (t + 1))^2 = 1 * (-1/1)^2 + 0.5 * (1/4)^2 + 2 * (6/10)^2
        ("relative", 1.0 + 0.03125 + 0.72),
        # sum g (t - p)^2 = 1 * 1 + 0.5 * 1 + 2 * 36
        ("mse", 1.0 + 0.5 + 72.0),
    ],
)
def test_data_loss(kind, expected):
    loss = data_loss(jnp.array(PREDICTIONS), jnp.array(TARGETS), jnp.array(LOSS_WEIGHTS), kind)
    assert loss.shape == ()
    assert_close(loss, expected)


def test_data_loss_rejects_unknown_kind(ill_typed_input):
    with pytest.raises(ValueError, match="loss must be 'relative' or 'mse'"):
        data_loss(jnp.array(PREDICTIONS), jnp.array(TARGETS), jnp.array(LOSS_WEIGHTS), "relatve")


def test_data_loss_gradient():
    """d/dp of g ((t - p) / (t + 1))^2 is -2 g (t - p) / (t + 1)^2."""
    grad = jax.grad(data_loss)(jnp.array(PREDICTIONS), jnp.array(TARGETS), jnp.array(LOSS_WEIGHTS), "relative")
    assert_close(grad, [-2 * 1 * -1 / 1, -2 * 0.5 * 1 / 16, -2 * 2 * 6 / 100])


GROUPS = [0, 0, 1, 2, 2, 2]


@pytest.mark.parametrize(
    "groups, normalize, multipliers, expected",
    [
        (None, True, None, [1.0] * 6),
        (None, False, None, [1.0] * 6),
        (GROUPS, True, None, [1 / 2, 1 / 2, 1.0, 1 / 3, 1 / 3, 1 / 3]),
        (GROUPS, False, None, [1.0] * 6),
        (np.array([7, -1, 7]), True, None, [1 / 2, 1.0, 1 / 2]),
        (GROUPS, True, {2: 3.0}, [1 / 2, 1 / 2, 1.0, 1.0, 1.0, 1.0]),
        (GROUPS, True, {0: 4.0, 1: 0.5}, [2.0, 2.0, 0.5, 1 / 3, 1 / 3, 1 / 3]),
        (GROUPS, False, {0: 2.0}, [2.0, 2.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_target_loss_weights(groups, normalize, multipliers, expected):
    weights = target_loss_weights(len(expected), groups, normalize_groups=normalize, group_multipliers=multipliers)
    assert weights.dtype == np.float32
    assert_close(weights, expected, rtol=1e-7, atol=0)


@pytest.mark.parametrize(
    "groups, multipliers, match",
    [
        (GROUPS, {3: 2.0}, "names group 3, which no target has"),
        (None, {0: 2.0}, "group_multipliers requires target_groups"),
        (GROUPS, {0: -1.0}, "finite and non-negative, got -1.0 for group 0"),
        (GROUPS, {1: np.nan}, "finite and non-negative, got nan for group 1"),
        (GROUPS[:5], None, "target_groups must be 6 integers"),
        ([GROUPS], None, "target_groups must be 6 integers"),
        (np.array(GROUPS, float), None, "target_groups must be 6 integers"),
    ],
)
def test_target_loss_weights_rejects(groups, multipliers, match):
    with pytest.raises(ValueError, match=match):
        target_loss_weights(6, groups, group_multipliers=multipliers)
