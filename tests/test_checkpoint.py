"""Checkpoint and resume with orbax: a resumed run draws the masks the uninterrupted run draws.

For NNX (jaxdrop modules hold an rng stream: a key and a count, ``nnx.RngState``) and for linen
(keys folded from the step, which the checkpoint holds), with a scheduled keep_prob and a
scheduled learning rate: training ``2 * K`` steps straight equals training ``K`` steps, saving,
restoring in a fresh process and training ``K`` more, with the same DropBlock mask at every step
(each step's whole mask is recorded and compared) and the same parameters at the end.

The fixture trains in this process and launches this file as a script for the resumed half.
The script also shows the failure mode the README warns about: restoring an NNX model's
parameters (``nnx.state(model, nnx.Param)``) and the optimizer but not its rng state restarts
the dropout stream, so the resumed run draws the keys of the first ``K`` steps again.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import jaxdrop

# Every test here starts a training process and restarts it: slow (CI runs them all).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parent.parent
K = 3  # steps before the checkpoint, and after it
SEED = 0
BATCH = (4, 8, 8, 1)
# The paper's schedule (keep_prob falling linearly) and a learning-rate schedule: both read the
# step, which must come back with the checkpoint.
KEEP_PROB = optax.linear_schedule(1.0, 0.7, 2 * K)
TX = optax.adam(optax.linear_schedule(1e-2, 1e-3, 2 * K))


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """The data of a step: a function of the step alone, so a resumed run sees the same."""
    rng = np.random.default_rng([SEED, step])
    return rng.standard_normal(BATCH, dtype=np.float32), rng.integers(0, 3, BATCH[0]).astype(
        np.int32
    )


# ---------------------------------------------------------------------------------------------
# NNX: the dropout stream is model state
# ---------------------------------------------------------------------------------------------


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.drop = jaxdrop.nnx.DropBlock(keep_prob=1.0, block_size=3, rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x, keep_prob):
        # At least 1 before DropBlock, so that an output of 0 marks exactly a dropped unit.
        h = 1.0 + nnx.relu(self.conv(x))
        y = self.drop(h, keep_prob=keep_prob)
        return self.head(y.mean(axis=(1, 2))), y == 0


def nnx_create() -> tuple[NnxNet, nnx.Optimizer]:
    model = NnxNet(nnx.Rngs(params=SEED, dropout=SEED + 1))
    return model, nnx.Optimizer(model, TX, wrt=nnx.Param)


@nnx.jit
def nnx_step(model, optimizer, x, y):
    keep_prob = KEEP_PROB(optimizer.step[...])

    def loss_fn(model):
        logits, mask = model(x, keep_prob)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), mask

    (_, mask), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return mask


def nnx_train(model, optimizer, steps: range) -> dict[str, np.ndarray]:
    masks, keys = [], []
    for step in steps:
        # The key the DropBlock stream draws at this step, read from a copy of the model so that
        # the model's own stream is untouched.
        keys.append(jax.random.key_data(nnx.clone(model).drop.rngs()))
        masks.append(nnx_step(model, optimizer, *batch(step)))
    return {
        "masks": np.asarray(masks),
        "keys": np.asarray(keys),
        **{
            f"params{jax.tree_util.keystr(p)}": np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
        },
    }


def nnx_save(path: pathlib.Path, model, optimizer) -> None:
    # The whole state: parameters, optimizer moments and step, and the dropout stream's key and
    # count (nnx.RngState), which is what makes the next masks new ones.
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, nnx.state((model, optimizer)))


def nnx_restore(path: pathlib.Path):
    abstract = nnx.eval_shape(nnx_create)
    graphdef, abstract_state = nnx.split(abstract)
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(path, abstract_state)
    return nnx.merge(graphdef, state)


def nnx_restore_params_and_optimizer_only(path: pathlib.Path):
    """The failure mode: a fresh model (its streams at count 0) given the saved parameters and
    optimizer state, but not its rng state."""
    model, optimizer = nnx_create()
    abstract_state = nnx.state((model, optimizer))
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(path, abstract_state)
    nnx.update((model, optimizer), nnx.filter_state(state, nnx.Not(nnx.RngState)))
    return model, optimizer


# ---------------------------------------------------------------------------------------------
# linen: keys folded from the step; the step is in the checkpoint
# ---------------------------------------------------------------------------------------------


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, keep_prob, train: bool):
        h = 1.0 + nn.relu(nn.Conv(4, (3, 3))(x))
        y = jaxdrop.linen.DropBlock(keep_prob=1.0, block_size=3)(h, not train, keep_prob=keep_prob)
        return nn.Dense(3)(y.mean(axis=(1, 2))), y == 0


def linen_create() -> dict:
    model = LinenNet()
    params = model.init(jax.random.key(SEED), jnp.zeros(BATCH), 1.0, False)["params"]
    return {"params": params, "opt_state": TX.init(params), "step": jnp.int32(0)}


@jax.jit
def linen_step(state, x, y):
    step = state["step"]
    # One root key from the seed, never saved: the step alone decides each step's key.
    key = jax.random.fold_in(jax.random.key(SEED + 1), step)

    def loss_fn(params):
        logits, mask = LinenNet().apply(
            {"params": params}, x, KEEP_PROB(step), True, rngs={"dropout": key}
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), mask

    (_, mask), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = TX.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state, "step": step + 1}, mask


def linen_train(state, steps: range) -> tuple[dict, dict[str, np.ndarray]]:
    masks = []
    for step in steps:
        assert int(state["step"]) == step
        state, mask = linen_step(state, *batch(step))
        masks.append(mask)
    record = {"masks": np.asarray(masks)}
    for p, v in jax.tree_util.tree_leaves_with_path(state["params"]):
        record[f"params{jax.tree_util.keystr(p)}"] = np.asarray(v)
    return state, record


def linen_save(path: pathlib.Path, state: dict) -> None:
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, state)


def linen_restore(path: pathlib.Path) -> dict:
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, jax.eval_shape(linen_create))


# ---------------------------------------------------------------------------------------------
# The two halves
# ---------------------------------------------------------------------------------------------


def resume(checkpoints: pathlib.Path, out: pathlib.Path) -> None:
    """The fresh process: restore both checkpoints, train K more steps, write what was drawn."""
    resumed = range(K, 2 * K)
    records = {}
    for name, record in (
        ("nnx", nnx_train(*nnx_restore(checkpoints / "nnx"), resumed)),
        ("linen", linen_train(linen_restore(checkpoints / "linen"), resumed)[1]),
        (
            "nnx-params-only",
            nnx_train(*nnx_restore_params_and_optimizer_only(checkpoints / "nnx"), resumed),
        ),
    ):
        records.update({f"{name}/{k}": v for k, v in record.items()})
    np.savez(out, **records)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"straight": ..., "first": ..., "resumed": ...}, each {"nnx/...", "linen/...": array}."""
    tmp = tmp_path_factory.mktemp("checkpoint")
    # optax's Adam is not strict-clean (its bias correction raises a Python float to an int32
    # count), so dtype promotion is relaxed around training only.
    with jax.numpy_dtype_promotion("standard"):
        straight, first = {}, {}
        straight.update(_prefixed("nnx", nnx_train(*nnx_create(), range(2 * K))))
        straight.update(_prefixed("linen", linen_train(linen_create(), range(2 * K))[1]))

        model, optimizer = nnx_create()
        first.update(_prefixed("nnx", nnx_train(model, optimizer, range(K))))
        nnx_save(tmp / "nnx", model, optimizer)
        state, record = linen_train(linen_create(), range(K))
        first.update(_prefixed("linen", record))
        linen_save(tmp / "linen", state)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-W", "error", __file__, str(tmp), str(tmp / "resumed.npz")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    with np.load(tmp / "resumed.npz") as data:
        resumed = dict(data)
    return {"straight": straight, "first": first, "resumed": resumed}


def _prefixed(prefix: str, record: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in record.items()}


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", ["nnx", "linen"])
def test_resume_draws_the_masks_of_the_straight_run(runs, framework):
    straight, first, resumed = runs["straight"], runs["first"], runs["resumed"]
    masks = np.concatenate([first[f"{framework}/masks"], resumed[f"{framework}/masks"]])
    # Every step's whole mask, bit for bit, before and after the restart.
    np.testing.assert_array_equal(masks, straight[f"{framework}/masks"])
    # Not vacuous: masks drop something, and differ from step to step (no mask is repeated).
    assert masks[1:].any(axis=(1, 2, 3, 4)).all()
    flat = masks.reshape(2 * K, -1)
    assert len({row.tobytes() for row in flat if row.any()}) == sum(row.any() for row in flat)
    # The same parameters at the end: same data, same masks, same schedules, same steps.
    names = [k for k in straight if k.startswith(f"{framework}/params")]
    assert names
    for name in names:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)


def test_nnx_resume_continues_the_stream(runs):
    straight, first, resumed = runs["straight"], runs["first"], runs["resumed"]
    keys = np.concatenate([first["nnx/keys"], resumed["nnx/keys"]])
    np.testing.assert_array_equal(keys, straight["nnx/keys"])
    assert len({k.tobytes() for k in keys}) == 2 * K  # a new key every step


def test_nnx_restoring_params_only_repeats_the_keys(runs):
    # The failure mode: without its rng state, the restored model's DropBlock stream starts
    # again at count 0, so the resumed steps K..2K-1 draw the keys of steps 0..K-1. The masks
    # differ from the straight run's (they come from old keys), and with a fixed keep_prob they
    # would be the first K steps' masks again.
    straight, resumed = runs["straight"], runs["resumed"]
    np.testing.assert_array_equal(resumed["nnx-params-only/keys"], straight["nnx/keys"][:K])
    assert not np.array_equal(resumed["nnx-params-only/masks"], straight["nnx/masks"][K:])


if __name__ == "__main__":
    jax.config.update("jax_numpy_dtype_promotion", "standard")
    resume(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
