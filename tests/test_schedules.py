"""Per-layer keep probabilities, and a schedule's value reaching every module without a retrace."""

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import oracle
import pytest
from flax import nnx

import jaxdrop

STEPS = 24
SCHEDULE = optax.linear_schedule(1.0, 0.5, STEPS - 1)


# --- exact values ---------------------------------------------------------------------------
# Dyadic keep probabilities make every intermediate exactly representable in float32, so the
# values are compared with ==, whatever the order of operations (or an FMA) on the device.


def test_dropblock_rule_exact():
    got = jaxdrop.layer_keep_probs(0.75, 4)
    # The authors' code: group g drops (1 - keep_prob) / 4 ** (4 - g).
    want = np.float32([1 - 0.25 / 64, 1 - 0.25 / 16, 1 - 0.25 / 4, 0.75])
    assert got.dtype == jnp.float32 and got.shape == (4,)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(jaxdrop.layer_keep_probs(0.75, 2), np.float32([0.9375, 0.75]))
    np.testing.assert_array_equal(jaxdrop.layer_keep_probs(0.75, 1), np.float32([0.75]))


def test_linear_rule_exact():
    # Stochastic depth: block l of L drops l / L * (1 - p_L).
    got = jaxdrop.layer_keep_probs(0.5, 4, rule="linear")
    np.testing.assert_array_equal(got, np.float32([0.875, 0.75, 0.625, 0.5]))


def test_explicit_multipliers_exact():
    got = jaxdrop.layer_keep_probs(0.5, 3, rule=(0.0, 0.25, 1.0))
    np.testing.assert_array_equal(got, np.float32([1.0, 0.875, 0.5]))


def test_from_drop_rate_matches_keep_prob():
    for rule in ("dropblock", "linear"):
        a = jaxdrop.layer_keep_probs(0.25, 4, rule=rule, from_drop_rate=True)
        np.testing.assert_array_equal(a, jaxdrop.layer_keep_probs(0.75, 4, rule=rule))


def test_extremes():
    np.testing.assert_array_equal(jaxdrop.layer_keep_probs(1.0, 3), np.ones(3, np.float32))
    np.testing.assert_array_equal(
        jaxdrop.layer_keep_probs(0.0, 4, rule="linear"), np.float32([0.75, 0.5, 0.25, 0.0])
    )


def test_schedule_in_jit_exact_and_one_trace():
    layer_schedule = jaxdrop.layer_keep_probs(optax.linear_schedule(1.0, 0.5, 8), 2)
    f = jax.jit(layer_schedule)
    f(jnp.int32(0))
    layer_schedule(0)

    # keep_prob at step s is 1 - s / 16 (dyadic); group 3 drops a quarter of group 4's rate.
    with oracle.compilations() as compiled:
        for s in range(10):
            drop = min(s, 8) / 16
            np.testing.assert_array_equal(f(jnp.int32(s)), np.float32([1 - drop / 4, 1 - drop]))
            np.testing.assert_array_equal(layer_schedule(s), f(jnp.int32(s)))  # eager == jit
    assert compiled == []


def test_drop_rate_schedule():
    drop_schedule = jaxdrop.layer_keep_probs(
        optax.linear_schedule(0.0, 0.5, 8), 4, rule="linear", from_drop_rate=True
    )
    np.testing.assert_array_equal(drop_schedule(0), np.ones(4, np.float32))
    np.testing.assert_array_equal(drop_schedule(8), np.float32([0.875, 0.75, 0.625, 0.5]))


def test_low_precision_input_gives_float32():
    got = jaxdrop.layer_keep_probs(jnp.bfloat16(0.75), 2)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, np.float32([0.9375, 0.75]))


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((1.5, 2), {}, ValueError, "keep_prob"),
        ((-0.1, 2), {"from_drop_rate": True}, ValueError, "drop_rate"),
        (("0.9", 2), {}, TypeError, "keep_prob"),
        ((0.9, 0), {}, ValueError, "num_layers"),
        ((0.9, 2.0), {}, TypeError, "num_layers"),
        ((0.9, 2), {"rule": "cubic"}, ValueError, "rule"),
        ((0.9, 2), {"rule": (1.0,)}, ValueError, "rule"),
        ((0.9, 2), {"rule": (0.5, 2.0)}, ValueError, "rule"),
        ((0.9, 2), {"rule": ("a", "b")}, TypeError, "rule"),
        ((0.9, 2), {"from_drop_rate": 1}, TypeError, "from_drop_rate"),
    ],
)
def test_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxdrop.layer_keep_probs(*args, **kwargs)


# --- the call-time path: schedule(step) reaches every module, one trace ------------------------
# Every module that takes a call-time `keep_prob`, with its other required arguments. A module
# added to jaxdrop.linen / jaxdrop.nnx with a call-time keep_prob must be added here
# (test_every_module_is_covered fails otherwise).
LINEN = {
    "DropBlock": lambda cls: cls(keep_prob=0.5, block_size=3),
    "Dropout": lambda cls: cls(keep_prob=0.5),
    "SpatialDropout": lambda cls: cls(keep_prob=0.5),
    "DropPath": lambda cls: cls(keep_prob=0.5),
    "DropConnect": lambda cls: cls(nn.Conv(4, (3, 3)), keep_prob=0.5),
}
NNX = {
    "DropBlock": lambda cls, rngs: cls(keep_prob=0.5, block_size=3, rngs=rngs),
    "Dropout": lambda cls, rngs: cls(keep_prob=0.5, rngs=rngs),
    "SpatialDropout": lambda cls, rngs: cls(keep_prob=0.5, rngs=rngs),
    "DropPath": lambda cls, rngs: cls(keep_prob=0.5, rngs=rngs),
    "DropConnect": lambda cls, rngs: cls(
        nnx.Conv(4, 4, (3, 3), rngs=rngs), keep_prob=0.5, rngs=rngs
    ),
}


@pytest.mark.parametrize("module, factories", [(jaxdrop.linen, LINEN), (jaxdrop.nnx, NNX)])
def test_every_module_is_covered(module, factories):
    for name in module.__all__:
        params = inspect.signature(getattr(module, name).__call__).parameters
        # PatchDropout's keep_prob sets the token count, so it cannot be traced (a schedule
        # compiles a step per value; tests/test_patch_dropout.py checks the error).
        if "keep_prob" in params and name != "PatchDropout":
            assert name in factories, f"add {name} to the module factories of this test"


class LinenNet(nn.Module):
    names: tuple[str, ...]

    @nn.compact
    def __call__(self, x, keep_probs, deterministic):
        x = nn.Conv(4, (3, 3))(x)
        for i, name in enumerate(self.names):
            layer = LINEN[name](getattr(jaxdrop.linen, name))
            x = layer(x, deterministic=deterministic, keep_prob=keep_probs[i])
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


class NnxNet(nnx.Module):
    def __init__(self, names, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.drops = nnx.List([NNX[n](getattr(jaxdrop.nnx, n), rngs) for n in names])
        self.head = nnx.Linear(4, 10, rngs=rngs)

    def __call__(self, x, keep_probs, deterministic=None):
        x = self.conv(x)
        for i, layer in enumerate(self.drops):
            x = layer(x, deterministic=deterministic, keep_prob=keep_probs[i])
        return self.head(jnp.mean(x, axis=(1, 2)))


def data():
    kx, ky = jax.random.split(jax.random.key(1))
    return jax.random.normal(kx, (4, 8, 8, 1)), jax.random.randint(ky, (4,), 0, 10)


def cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def check_run(diffs):
    # keep_prob is exactly 1.0 at step 0, so training mode equals eval mode there (up to float32
    # rounding: the two passes are compiled separately); once the schedule has fallen, the masks
    # change the output: the traced value did reach the modules.
    assert diffs[0] < 1e-5
    assert all(d > 1e-3 for d in diffs[STEPS // 2 :])


@pytest.mark.slow
def test_linen_schedule_one_trace():
    names = tuple(LINEN)
    model = LinenNet(names)
    layer_schedule = jaxdrop.layer_keep_probs(SCHEDULE, len(names), rule="linear")
    x, y = data()
    params = model.init(jax.random.key(0), x, layer_schedule(0), True)["params"]
    tx = optax.sgd(0.1)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, step, key):
        keep_probs = layer_schedule(step)

        def loss_fn(params):
            logits = model.apply({"params": params}, x, keep_probs, False, rngs={"dropout": key})
            return cross_entropy(logits, y), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        diff = jnp.max(jnp.abs(logits - model.apply({"params": params}, x, keep_probs, True)))
        return optax.apply_updates(params, updates), opt_state, diff

    params, opt_state, diff = train_step(params, opt_state, 0, jax.random.key(0))
    diffs = [float(diff)]
    with oracle.compilations() as compiled:
        for step in range(1, STEPS):
            params, opt_state, diff = train_step(params, opt_state, step, jax.random.key(step))
            diffs.append(float(diff))
    assert compiled == []
    check_run(diffs)


@pytest.mark.slow
def test_nnx_schedule_one_trace():
    names = list(NNX)
    model = NnxNet(names, nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    layer_schedule = jaxdrop.layer_keep_probs(SCHEDULE, len(names), rule="linear")
    x, y = data()

    @nnx.jit
    def train_step(model, optimizer, step):
        keep_probs = layer_schedule(step)

        # Call-time `deterministic=True` wins over the modules' training mode.
        eval_logits = model(x, keep_probs, deterministic=True)

        def loss_fn(model):
            logits = model(x, keep_probs)
            return cross_entropy(logits, y), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return jnp.max(jnp.abs(logits - eval_logits))

    counts = jax.tree.leaves(nnx.state(model, nnx.RngCount))
    diffs = [float(train_step(model, optimizer, 0))]
    with oracle.compilations() as compiled:
        diffs += [float(train_step(model, optimizer, step)) for step in range(1, STEPS)]
    assert compiled == []
    check_run(diffs)
    # Each module's stream advanced once per step, as flax.nnx.Dropout's does.
    after = jax.tree.leaves(nnx.state(model, nnx.RngCount))
    assert all(int(b) - int(a) == STEPS for a, b in zip(counts, after, strict=True))
