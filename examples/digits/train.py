"""Training: configurations, keep_prob schedules, one jitted train step per configuration, the
loop over seeds and epochs, and its orbax checkpoints (``--resume``)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxdrop

from .model import STRIDES, WIDTHS, LinenResNet, NnxResNet


@dataclasses.dataclass(frozen=True)
class Config:
    """One regulariser setting; ``None`` fields take the run's ``--keep-prob``, ``--block-size``."""

    name: str
    kind: str  # "none", "dropout", "spatial_dropout" or "dropblock"
    scheduled: bool = False
    calibrate: bool = False
    keep_prob: float | None = None
    block_size: int | None = None
    # Axes that share one mask: (-1,) gives every channel the same mask.
    broadcast_dims: tuple[int, ...] = ()
    # Side of the Cutout patch applied to the training images (0: no Cutout).
    cutout: int = 0


CONFIGS = {
    "none": Config("no regularisation", "none"),
    "dropout": Config("dropout", "dropout"),
    "spatial": Config("SpatialDropout", "spatial_dropout"),
    "dropblock": Config("DropBlock, fixed keep_prob", "dropblock"),
    "scheduled": Config("DropBlock, scheduled", "dropblock", scheduled=True),
    "calibrated": Config(
        "DropBlock, scheduled, calibrate=True", "dropblock", scheduled=True, calibrate=True
    ),
}


@dataclasses.dataclass
class Run:
    """Curves of one configuration and seed, evaluated at `epochs`."""

    epochs: list[int]
    train_acc: list[float]
    test_acc: list[float]
    train_loss: list[float]


def keep_prob_schedule(config: Config, keep_prob: float, total_steps: int) -> Callable:
    """Per-group (3, 4) keep probabilities as a function of the step."""
    if config.scheduled:
        # The paper's schedule: keep_prob falls linearly from 1.0 to its target over training.
        schedule = optax.linear_schedule(1.0, keep_prob, total_steps)
    else:
        schedule = optax.constant_schedule(keep_prob)
    # The authors' scaling: group 4 gets the full drop rate, group 3 a quarter of it.
    return jaxdrop.layer_keep_probs(schedule, 2, rule="dropblock")


def init_key(seed: int) -> jax.Array:
    """The key of the parameter initialisers.

    An "rbg" key (XLA's RngBitGenerator): on CPU its initialisers compile in about a third of
    the time of the default threefry's unrolled rounds, which dominates a short run. The
    regularisers' keys stay default (threefry) keys; jaxdrop accepts either.
    """
    return jax.random.key(seed, impl="rbg")


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == labels))


def loss_fn(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def geometry(args) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ResNet's widths and strides: the run's, or the model's defaults."""
    return tuple(getattr(args, "widths", WIDTHS)), tuple(getattr(args, "strides", STRIDES))


def resolved(config: Config, args) -> tuple[float, int]:
    """The configuration's keep_prob and block_size, falling back on the run's."""
    keep_prob = args.keep_prob if config.keep_prob is None else config.keep_prob
    block_size = args.block_size if config.block_size is None else config.block_size
    return keep_prob, block_size


def dynamic_keep_probs(step, target, scheduled, total_steps: int) -> jax.Array:
    """`keep_prob_schedule` with a traced target and a traced on/off switch for the schedule."""
    linear = optax.linear_schedule(1.0, target, total_steps)(step)
    return jaxdrop.layer_keep_probs(jnp.where(scheduled, linear, target), 2, rule="dropblock")


class LinenTrainer:
    """One jitted train step per configuration, shared by all seeds and steps.

    With ``dynamic=True`` the keep_prob target and the schedule switch are traced arguments
    instead of constants: one compiled step then serves every keep_prob and schedule of the
    configuration's kind (`configure` sets them), at the price of float32 rather than Python
    arithmetic in the schedule. The evaluation's sweeps use it; `train_digits.py` does not.
    """

    def __init__(self, config, data, args, total_steps, *, dynamic=False):
        keep_prob, block_size = resolved(config, args)
        widths, strides = geometry(args)
        self.model = LinenResNet(
            data.num_classes,
            config.kind,
            block_size,
            calibrate=config.calibrate,
            broadcast_dims=config.broadcast_dims,
            widths=widths,
            strides=strides,
        )
        self.tx = optax.adam(optax.cosine_decay_schedule(args.lr, total_steps))
        self.schedule = keep_prob_schedule(config, keep_prob, total_steps)
        self.traces = 0
        self.args, self.hyper = args, None
        model, tx, schedule = self.model, self.tx, self.schedule
        cutout, background = config.cutout, data.background
        if dynamic:
            self.configure(config)

        @jax.jit
        def train_step(state, step, key, x, y, hyper):
            self.traces += 1  # Runs at trace time only: counts compilations.
            params, batch_stats, opt_state = state
            if hyper is None:
                keep_probs = schedule(step)
            else:
                keep_probs = dynamic_keep_probs(step, *hyper, total_steps)
            if cutout:
                # The patch is painted in the background colour, as the test occluders are.
                cut_key = jax.random.fold_in(key, 1)
                x = jaxdrop.cutout(cut_key, x, cutout, fill=background)

            def objective(params):
                logits, updates = model.apply(
                    {"params": params, "batch_stats": batch_stats},
                    x,
                    keep_probs,
                    True,
                    rngs={"dropout": key},
                    mutable=["batch_stats"],
                )
                return loss_fn(logits, y), updates["batch_stats"]

            (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

        self.train_step = train_step
        self.init_fn, self.predict = linen_shared_fns(data.num_classes, widths, strides)

    def configure(self, config):
        """Sets the keep_prob target and schedule switch of a dynamic trainer."""
        keep_prob, _ = resolved(config, self.args)
        self.hyper = (jnp.float32(keep_prob), jnp.bool_(config.scheduled))

    def init(self, seed, x):
        params, batch_stats = self.init_fn(init_key(seed), x[:1])
        return params, batch_stats, self.tx.init(params)

    def step(self, state, step, key, x, y):
        return self.train_step(state, step, key, x, y, self.hyper)

    def logits(self, state, x):
        return self.predict(state[0], state[1], x)[0]

    def features(self, state, x):
        return self.predict(state[0], state[1], x)[1]

    def checkpoint_tree(self, state):
        """What a checkpoint holds: parameters, batch statistics and optimizer state."""
        return state

    def restore(self, state, tree):
        return tree


@functools.cache
def linen_shared_fns(num_classes: int, widths=WIDTHS, strides=STRIDES):
    """Initialisation and evaluation, compiled once for every configuration.

    The regularisers hold no variables and are the identity in evaluation mode, so every
    configuration has the parameter tree of the plain network and evaluates as it does: one
    compiled init and one compiled evaluation serve them all. (The train steps differ.)
    """
    plain = LinenResNet(num_classes, widths=widths, strides=strides)
    unused = jnp.ones(2, jnp.float32)  # The plain network ignores its keep_probs.

    @jax.jit
    def init(key, x):
        variables = plain.init(key, x, unused, False)
        return variables["params"], variables["batch_stats"]

    @jax.jit
    def predict(params, batch_stats, x):
        variables = {"params": params, "batch_stats": batch_stats}
        logits, inter = plain.apply(variables, x, unused, False, mutable=["intermediates"])
        return logits, inter["intermediates"]["group3_input"][0]

    return init, predict


class NnxTrainer:
    """The same with NNX: `nnx.jit` steps; the model and optimizer carry their state."""

    def __init__(self, config, data, args, total_steps):
        if config.cutout or config.broadcast_dims:
            raise ValueError(f"the NNX trainer has no Cutout or shared masks, got {config}.")
        self.config, self.args, self.data = config, args, data
        keep_prob, self.block_size = resolved(config, args)
        self.widths, self.strides = geometry(args)
        self.tx = optax.adam(optax.cosine_decay_schedule(args.lr, total_steps))
        self.schedule = schedule = keep_prob_schedule(config, keep_prob, total_steps)
        self.traces = 0

        @nnx.jit
        def train_step(model, optimizer, step, x, y):
            self.traces += 1
            keep_probs = schedule(step)

            def objective(model):
                return loss_fn(model(x, keep_probs), y)

            loss, grads = nnx.value_and_grad(objective)(model)
            optimizer.update(model, grads)
            return loss

        @nnx.jit
        def predict(model, x):
            return model(x, schedule(0))

        @nnx.jit
        def features(model, x):
            return model.features(x)

        self._train_step, self._predict, self._features = train_step, predict, features
        self._create = None

    def init(self, seed, x):
        config, data = self.config, self.data

        # Built under nnx.jit: one compilation for all the initialisers (eagerly, every
        # parameter shape would compile its own), reused for every seed.
        @nnx.jit
        def create(key, dropout_key):
            return NnxResNet(
                x.shape[-1],
                data.num_classes,
                kind=config.kind,
                block_size=self.block_size,
                calibrate=config.calibrate,
                widths=self.widths,
                strides=self.strides,
                rngs=nnx.Rngs(params=key, dropout=dropout_key),
            )

        if self._create is None:
            self._create = create
        model = self._create(init_key(seed), jax.random.key(10_000 + seed))
        optimizer = nnx.Optimizer(model, self.tx, wrt=nnx.Param)
        # An evaluation view sharing the model's variables: BatchNorm uses its running averages
        # and the regularisers are off.
        view = nnx.view(
            model, deterministic=True, use_running_average=True, raise_if_not_found=False
        )
        return model, optimizer, view

    def step(self, state, step, key, x, y):
        model, optimizer, _ = state
        # The NNX modules draw their keys from their own `dropout` streams; `key` is unused.
        return state, self._train_step(model, optimizer, step, x, y)

    def logits(self, state, x):
        return self._predict(state[2], x)

    def features(self, state, x):
        return self._features(state[2], x)

    def checkpoint_tree(self, state):
        """Parameters, batch statistics, the regularisers' rng streams (key and count: a
        restored stream continues where it stopped) and the optimizer state."""
        model, optimizer, _ = state
        return nnx.state(model), nnx.state(optimizer)

    def restore(self, state, tree):
        model, optimizer, _ = state
        nnx.update(model, tree[0])
        nnx.update(optimizer, tree[1])
        return state


# --- checkpoints ------------------------------------------------------------------------------


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


# --- the loop ---------------------------------------------------------------------------------

# Evaluation batch: large enough for the digits in one call, small enough for CIFAR-sized data.
EVAL_CHUNK = 2048


def in_chunks(fn: Callable[[np.ndarray], jax.Array], x: np.ndarray, chunk: int) -> np.ndarray:
    """``fn`` over ``x`` in chunks of exactly ``chunk`` rows (the last one padded): one shape,
    so one compilation, whatever the data size."""
    outs = []
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        pad = chunk - len(part)
        if pad:
            part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
        outs.append(np.asarray(fn(part))[: chunk - pad])
    return np.concatenate(outs)


def make_trainer(config, data, args):
    trainer_cls = LinenTrainer if args.framework == "linen" else NnxTrainer
    return trainer_cls(config, data, args, total_steps(data, args))


def total_steps(data, args) -> int:
    return args.epochs * max(1, len(data.x_train) // args.batch_size)


def train(
    config, data, args, seeds, progress, *, checkpoint_dir=None, on_trained=None, trainer=None
):
    """Trains `config` once per seed; returns the runs, the traces and the group-3 features of
    the first test image under the last trained state.

    With ``checkpoint_dir``, saves a checkpoint per seed at every evaluation epoch, and with
    ``args.resume`` continues each seed from its latest checkpoint. ``on_trained(seed, trainer,
    state)``, if given, sees each trained model (the evaluation's occlusion tests use it).
    ``trainer`` reuses a (dynamic) trainer, and its compiled step, built for another config.
    """
    n = len(data.x_train)
    steps_per_epoch = max(1, n // args.batch_size)
    trainer = make_trainer(config, data, args) if trainer is None else trainer
    eval_at = set(np.linspace(0, args.epochs, args.evals + 1).round().astype(int).tolist())
    runs, state = [], None
    x_eval = np.concatenate([data.x_train, data.x_test])
    chunk = min(EVAL_CHUNK, len(x_eval))
    for seed in seeds:
        rng = np.random.default_rng(seed)
        state = trainer.init(seed, data.x_train)
        key = jax.random.key(10_000 + seed)
        run = Run([], [], [], [])
        step, losses, start_epoch = 0, [], 1
        ckpt = None
        if checkpoint_dir is not None:
            ckpt = Checkpoints(Path(checkpoint_dir) / f"seed{seed}")
            last = ckpt.latest() if getattr(args, "resume", False) else None
            if last is not None:
                tree, meta = ckpt.load(last, trainer.checkpoint_tree(state))
                state = trainer.restore(state, tree)
                run, step, start_epoch = Run(**meta["run"]), meta["step"], last + 1
                for _ in range(last):  # Replay the data order up to the checkpoint.
                    rng.permutation(n)
                progress.update(step)
        for epoch in range(start_epoch, args.epochs + 1):
            order = rng.permutation(n)
            for i in range(steps_per_epoch):
                idx = order[i * args.batch_size : (i + 1) * args.batch_size]
                state, loss = trainer.step(
                    state, step, jax.random.fold_in(key, step), data.x_train[idx], data.y_train[idx]
                )
                losses.append(loss)
                step += 1
                progress.update(1)
            if epoch in eval_at:
                run.epochs.append(epoch)
                run.train_loss.append(float(np.mean(jax.device_get(losses))))
                losses = []
                # One call (one compiled shape) for both sets.
                logits = in_chunks(functools.partial(trainer.logits, state), x_eval, chunk)
                run.train_acc.append(accuracy(logits[:n], data.y_train))
                run.test_acc.append(accuracy(logits[n:], data.y_test))
                if ckpt is not None:
                    meta = {"step": step, "run": dataclasses.asdict(run)}
                    ckpt.save(epoch, trainer.checkpoint_tree(state), meta)
        if ckpt is not None:
            ckpt.close()
        if on_trained is not None:
            on_trained(seed, trainer, state)
        runs.append(run)
    # The group-3 input maps of the first test image, for the feature-map figure.
    features = in_chunks(functools.partial(trainer.features, state), x_eval[n : n + 1], chunk)[0]
    return runs, trainer.traces, features
