"""Orbax checkpoints of one configuration and seed (``--resume``)."""

from __future__ import annotations

from pathlib import Path

import jax


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


class Checkpoints:
    """Orbax checkpoints of one configuration and seed, one per evaluation epoch.

    A checkpoint holds the trainer's state (typed PRNG keys stored as their key data), the step,
    and the curves so far. The regularisers' keys are folded from the step (linen) or carried in
    the restored rng streams (NNX), and the data order is replayed from the seed, so a resumed
    run draws exactly the batches and masks the uninterrupted run would have.
    """

    def __init__(self, directory: Path):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.manager = ocp.CheckpointManager(
            Path(directory).resolve(),
            options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True),
            item_names=("state", "meta"),
        )

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, epoch: int, tree, meta: dict) -> None:
        leaves = [jax.random.key_data(x) if _is_key(x) else x for x in jax.tree.leaves(tree)]
        ocp = self.ocp
        self.manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta)
            ),
        )

    def load(self, epoch: int, like) -> tuple[object, dict]:
        """The tree saved at ``epoch``, in the structure (and key types) of ``like``."""
        leaves, treedef = jax.tree.flatten(like)
        raw = [jax.random.key_data(x) if _is_key(x) else x for x in leaves]
        ocp = self.ocp
        restored = self.manager.restore(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(raw), meta=ocp.args.JsonRestore()
            ),
        )
        loaded = [
            jax.random.wrap_key_data(r, impl=jax.random.key_impl(x)) if _is_key(x) else r
            for r, x in zip(restored["state"], leaves, strict=True)
        ]
        return jax.tree.unflatten(treedef, loaded), restored["meta"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
