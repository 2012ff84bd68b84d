"""Strict numerics for the whole suite, as Equinox does: no silent dtype or rank promotion.

The CPU backend gets 16 simulated devices, as Equinox's conftest does, so that the sharding
tests run in this process (single-device code uses the first device, as with one).
"""

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_num_cpu_devices", 16)


# Tests marked `slow` here, so that the quick loop `pytest -n 2 -m "not slow and not bigmem" tests`
# stays short; CI runs them all. Chosen from `--durations=25` of one full run (on 2 cores shared
# with other work, load average about 18, so the absolute times were inflated several-fold; the
# ranking is what counts): the example trainings, the 8-device subprocess, and the tests of 40 s or
# more there. Kept in one place rather than as decorators in each file. Entries are
# `file::function` (every parametrisation) or `file::function[id]` (one); an entry that no longer
# exists simply marks nothing.
SLOW = {
    "test_example.py::test_quick_run",
    "test_example.py::test_quick_run_nnx",
    "test_sharding.py::test_on_8_devices",
    "test_big_arrays.py::test_actual_scale_past_2_24_units_per_example",
    "test_dropblock.py::test_zero_set_is_union_of_whole_blocks_inside_map[nchw]",
    "test_dropblock.py::test_gradients",
    "test_dropblock.py::test_float16_count_does_not_overflow",
    "test_dropblock.py::test_drop_rate_matches_exact_expectation",
    "test_dropblock.py::test_masks_are_independent_per_example_and_channel",
    "test_properties.py::test_matches_oracle",
    "test_properties.py::test_dropconnect_matches_oracle",
    "test_family.py::test_cutout_transforms_and_dtypes",
    "test_family.py::test_cutout_fills_exactly_the_patches",
    "test_family_modules.py::test_linen_modules_in_a_jitted_train_step",
    "test_schedules.py::test_linen_schedule_one_trace",
    "test_plotting.py::test_feature_layout_png_size",
    "test_memory.py::test_traced_keep_prob_backward_matches_forward",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        function = getattr(item, "originalname", item.name)
        if {f"{item.path.name}::{function}", f"{item.path.name}::{item.name}"} & SLOW:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x_key():
    """A key for test inputs, independent of ``key``: never draw ``x`` and a mask from one key."""
    return jax.random.key(1)
