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
# more there. Kept in one place rather than as decorators in each file. Entries are `file`
# (every test in it), `file::function` (every parametrisation) or `file::function[id]` (one); an
# entry that no longer exists simply marks nothing. Whole files: the ones that start processes or
# train (multi-process, checkpoint/resume, the examples), each test of which takes 20 s or more.
SLOW = {
    "test_multihost.py",
    "test_checkpoint.py",
    "test_example.py",
    "test_evaluation.py",
    "test_masking.py::test_count_true_of_all_true_rows_does_not_overflow_int8",
    "test_masking.py::test_xla_cpu_row_sums_is_a_sum",
    "test_masking.py::test_row_counts_reduce_one_axis",
    "test_forwarding.py::test_every_option_changes_the_output",
    "test_properties.py::test_dropblock_rate_and_independence",
    "test_properties.py::test_unitwise_rate_and_independence",
    "test_properties.py::test_traced_keep_prob_outside_unit_interval_is_clipped",
    "test_properties.py::test_dropconnect_transformations",
    "test_properties.py::test_changing_traced_keep_prob_never_recompiles",
    "test_properties.py::test_cutout_coverage_rate",
    "test_equinox.py::test_per_example_model_vmapped_over_the_batch",
    "test_equinox.py::test_vmapped_layers_equal_a_per_example_loop_exactly",
    "test_equinox.py::test_filter_grad_through_the_vmapped_model",
    "test_dropblock.py::test_keep_prob_edges_python_and_traced",
    "test_schedules.py::test_nnx_schedule_one_trace",
    "test_family_modules.py::test_nnx_modules_in_a_jitted_train_step",
    # The slowest 45 of the rest (2 s or more each, from `--durations` of the quick loop on an
    # idle machine), so that the quick loop stays near 2 minutes:
    "test_sharding.py::test_example_shard_map_per_device_keys_sparse_sampler",
    "test_modules.py::test_linen_in_jitted_grad_step",
    "test_properties.py::test_reused_key_gives_the_same_mask[dropblock-calibrated]",
    "test_family.py::test_low_precision_keeps_dtype[dropout]",
    "test_equinox.py::test_traced_call_time_keep_prob_does_not_retrace",
    "test_plotting.py::test_image_layout_png_size",
    "test_sharding.py::test_per_device_draws_do_not_depend_on_the_device_count",
    "test_properties.py::test_reused_key_gives_the_same_mask[dropblock]",
    "test_sampling.py::test_sub_rows_are_independent_and_cover_the_row",
    "test_properties.py::test_reused_key_gives_the_same_mask[dropblock-expected]",
    "test_modules.py::test_nnx_in_jitted_grad_step",
    "test_sampling.py::test_sampler_is_the_same_eager_jitted_and_batched",
    "test_family.py::test_zeros_at_zero_with_finite_gradient[dropout]",
    "test_properties.py::test_transformations[dropblock]",
    "test_dropblock.py::test_vmap_matches_per_example_loop_with_the_sparse_sampler",
    "test_equinox.py::test_keep_prob_one_needs_no_key_and_call_time_keep_prob_overrides",
    "test_sampling.py::test_sparse_and_dense_are_binomial[0.003]",
    "test_sampling.py::test_sparse_and_dense_are_binomial[0.05]",
    "test_equinox.py::test_module_is_the_function[DropBlock-key]",
    "test_properties.py::test_reused_key_gives_the_same_mask[dropout]",
    "test_sharding.py::test_sharded_jit_matches_single_device[dropblock-nchw-batch+model]",
    "test_equinox.py::test_dropconnect_masks_the_weight_only[Conv2d]",
    "test_dropblock.py::test_sparse_mask_is_the_oracle_of_its_seeds[nchw]",
    "test_equinox.py::test_import_jaxdrop_does_not_import_equinox",
    "test_family.py::test_drop_rate_matches_expectation[dropout]",
    "test_properties.py::test_transformations[dropout]",
    "test_family.py::test_dropconnect_masks_only_weight_matrices_each_with_its_own_mask",
    "test_dropblock.py::test_sparse_mask_is_the_oracle_of_its_seeds[nhwc]",
    "test_sampling.py::test_dropblock_drop_rate_sparse_matches_dense_and_expectation",
    "test_dropblock.py::test_zero_set_is_union_of_whole_blocks_inside_map[nhwc-nonsquare]",
    "test_forwarding.py::test_module_matches_its_function[linen-dropout-0]",
    "test_sharding.py::test_sharded_training_step[actual]",
    "test_dropblock.py::test_traced_keep_prob_below_min_keep_prob_is_clipped_up",
    "test_dropblock.py::test_kept_values_equal_x_times_scale[float16-expected]",
    "test_equinox.py::test_module_is_the_function[DropBlock-PRNGKey]",
    "test_sharding.py::test_sharded_jit_matches_single_device[dropblock-batch+model]",
    "test_dropblock.py::test_kept_values_equal_x_times_scale[float32-actual]",
    "test_sharding.py::test_sharded_jit_matches_single_device[dropout-batch+model]",
    "test_memory.py::test_vjp_residuals_are_tiny[float32-options2]",
    "test_dropblock.py::test_sparse_mask_is_the_oracle_of_its_seeds[1d-sequence]",
    "test_sampling.py::test_traced_keep_prob_across_the_range_of_gamma",
    "test_properties.py::test_reused_key_gives_the_same_mask[cutout]",
    "test_forwarding.py::test_module_matches_its_function[linen-dropblock-0]",
    "test_dropblock.py::test_sparse_sampler_reuses_no_key",
    "test_plotting.py::test_grey_2d_input",
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
        names = {item.path.name, f"{item.path.name}::{function}", f"{item.path.name}::{item.name}"}
        if names & SLOW:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x_key():
    """A key for test inputs, independent of ``key``: never draw ``x`` and a mask from one key."""
    return jax.random.key(1)
