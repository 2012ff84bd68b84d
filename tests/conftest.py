"""Strict numerics for the whole suite, as Equinox does: no silent dtype or rank promotion.

The CPU backend gets 16 simulated devices, as Equinox's conftest does, so that the sharding
tests run in this process (single-device code uses the first device, as with one).
"""

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_num_cpu_devices", 16)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x_key():
    """A key for test inputs, independent of ``key``: never draw ``x`` and a mask from one key."""
    return jax.random.key(1)
