"""Every module takes its drop probability by name, ``keep_prob=`` or ``rate=``, in linen, NNX and
Equinox alike, at construction and at call time.

``flax.linen.Dropout(0.1)`` drops 10% of the units; a bare ``jaxdrop.linen.Dropout(0.1)`` used to
keep 10%. A positional number is now a ``TypeError`` that says ``keep_prob = 1 - rate``, and
``rate=r`` is exactly ``keep_prob=1 - r``: same key, same output, bit for bit.
"""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxdrop
import jaxdrop.equinox as jeqx

NAMES = ["DropBlock", "Dropout", "SpatialDropout", "DropPath", "DropConnect", "PatchDropout"]
# PatchDropout's probability sets its output's shape, so it cannot be traced: a traced one is the
# function's TypeError (tests/test_family_modules.py, tests/test_equinox.py).
TRACEABLE = [n for n in NAMES if n != "PatchDropout"]
FRAMEWORKS = ["linen", "nnx", "equinox"]
# Channels last for linen and NNX (a batch), channels first for Equinox (one example); values
# away from 0, so that a dropped unit shows.
X = jnp.asarray(np.random.default_rng(0).uniform(0.5, 2.0, (2, 6, 6, 4)), jnp.float32)
X_EQX = X[0].transpose(2, 0, 1)
MESSAGE = r"`rate=`.*keep_prob = 1 - rate"


def _build(framework, name, **prob):
    """The module built with ``prob`` (``keep_prob=`` or ``rate=``), as ``f(key, **call_prob)``."""
    extra = {"block_size": 3} if name == "DropBlock" else {}
    if framework == "linen":
        if name == "DropConnect":
            layer = jaxdrop.linen.DropConnect(nn.Dense(3), **prob)
            variables = layer.init(jax.random.key(1), X, deterministic=True)
            return lambda key, **kw: layer.apply(variables, X, deterministic=False, rng=key, **kw)
        layer = getattr(jaxdrop.linen, name)(**prob, **extra)
        # rng positionally, in flax.linen.Dropout's order (inputs, deterministic, rng).
        return lambda key, **kw: layer.apply({}, X, False, key, **kw)
    if framework == "nnx":
        if name == "DropConnect":
            layer = jaxdrop.nnx.DropConnect(nnx.Linear(4, 3, rngs=nnx.Rngs(1)), **prob)
        else:
            layer = getattr(jaxdrop.nnx, name)(**prob, **extra)
        return lambda key, **kw: layer(X, rngs=key, **kw)
    if name == "DropConnect":
        layer = jeqx.DropConnect(eqx.nn.Conv2d(4, 3, 3, key=jax.random.key(1)), **prob)
    else:
        layer = getattr(jeqx, name)(**prob, **extra)
    return lambda key, **kw: layer(X_EQX, key=key, **kw)


def _positional(framework, name):
    """The constructor call with a bare number where the probability goes."""
    module = {"linen": jaxdrop.linen, "nnx": jaxdrop.nnx, "equinox": jeqx}[framework]
    layer = {"linen": nn.Dense(3), "nnx": None, "equinox": None}[framework]
    if name == "DropConnect":
        if framework == "nnx":
            layer = nnx.Linear(4, 3, rngs=nnx.Rngs(1))
        elif framework == "equinox":
            layer = eqx.nn.Conv2d(4, 3, 3, key=jax.random.key(1))
        return lambda: module.DropConnect(layer, 0.5)
    if name == "DropBlock":
        return lambda: module.DropBlock(0.9, 3)
    return lambda: getattr(module, name)(0.1)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", NAMES)
def test_probability_by_name(framework, name, key):
    rate = 0.3
    # rate=r is keep_prob=1-r exactly, at construction and at call time.
    want = _build(framework, name, keep_prob=1 - rate)(key)
    assert not np.array_equal(want, _build(framework, name, keep_prob=1.0)(key))  # Not vacuous.
    np.testing.assert_array_equal(_build(framework, name, rate=rate)(key), want)
    no_prob = _build(framework, name)  # Neither spelling: the call brings it.
    np.testing.assert_array_equal(no_prob(key, rate=rate), want)
    np.testing.assert_array_equal(no_prob(key, keep_prob=1 - rate), want)
    # The call's wins over the constructor's, whichever the spellings.
    np.testing.assert_array_equal(_build(framework, name, keep_prob=0.5)(key, rate=rate), want)

    # A bare number could mean either probability: it is an error that says which is which.
    with pytest.raises(TypeError, match=MESSAGE):
        _positional(framework, name)()
    with pytest.raises(TypeError, match=r"both `keep_prob` \(0.7\) and `rate` \(0.3\)"):
        _build(framework, name, keep_prob=0.7, rate=0.3)
    with pytest.raises(TypeError, match=r"both `keep_prob`.*and `rate`.* in the call"):
        no_prob(key, keep_prob=0.7, rate=0.3)
    with pytest.raises(TypeError, match=f"{name} has no drop probability.*" + MESSAGE):
        no_prob(key)
    with pytest.raises(ValueError, match=r"`rate` must be in \[0, 1\], got 1.5"):
        no_prob(key, rate=1.5)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", TRACEABLE)
def test_traced_call_time_rate(framework, name, key):
    """A schedule's rate, traced under jit: one trace for every value, and the eager result."""
    layer = _build(framework, name, rate=0.5)
    traces = 0

    @jax.jit
    def step(rate):
        nonlocal traces
        traces += 1
        return layer(key, rate=rate)

    for rate in (0.1, 0.4):
        rate = jnp.float32(rate)
        got = step(rate)
        np.testing.assert_array_equal(got, layer(key, keep_prob=1.0 - rate))
    assert traces == 1


def test_python_rate_stays_a_python_float():
    # 1 - rate is computed once, in Python: the functions' static fast paths still apply.
    kp = jaxdrop._src.checks.module_keep_prob(jaxdrop.linen.Dropout(rate=0.1))
    assert type(kp) is float and kp == 1 - 0.1
    # rate=0 keeps everything without drawing (Equinox needs no key, as eqx.nn.Dropout(p=0)).
    np.testing.assert_array_equal(jeqx.Dropout(rate=0.0)(X_EQX), X_EQX)


def test_linen_modules_survive_clone_remat_and_share_scope(key):
    layer = jaxdrop.linen.DropBlock(rate=0.1, block_size=3)
    np.testing.assert_array_equal(
        layer.clone().apply({}, X, False, key), layer.apply({}, X, False, key)
    )
    with pytest.raises(TypeError, match="both"):
        layer.clone(keep_prob=0.9)  # The clone keeps rate=0.1.
    # The subclasses Flax's transforms generate reject a bare number too.
    with pytest.raises(TypeError, match=MESSAGE):
        nn.remat(jaxdrop.linen.DropBlock)(0.9, block_size=3)
    np.testing.assert_array_equal(
        nn.remat(jaxdrop.linen.DropBlock)(rate=0.1, block_size=3, deterministic=False).apply(
            {}, X, rngs={"dropout": key}
        ),
        layer.apply({}, X, False, rngs={"dropout": key}),
    )
    wrapped = jaxdrop.linen.DropConnect(nn.Dense(3), rate=0.5)
    variables = wrapped.init(key, X, deterministic=True)
    assert jax.tree.map(jnp.shape, variables) == {"params": {"bias": (3,), "kernel": (4, 3)}}
