"""The train steps: one jitted step per configuration (linen), or `nnx.jit` steps (NNX), with
the keep_prob schedules, and what a checkpoint of each holds."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxdrop

from .model import STRIDES, WIDTHS, LinenPlainNet, LinenResNet, NnxResNet

if TYPE_CHECKING:
    from .train import Config


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


def random_erasing(key: jax.Array, x: jax.Array, p: float) -> jax.Array:
    """RandomErasing as DeiT trains with it (timm's ``reprob=0.25, remode="pixel", recount=1``).

    timm's defaults fit a 16 x 16 image as they fit a 224 x 224 one: the area is 2% to a third
    of the image (5 to 85 pixels here, the smallest still about 2 x 2), the aspect ratio 0.3 to
    3.3. The noise is per pixel N(0, 1), the statistics of the standardised images, as timm
    draws it on normalised ones; unlike Cutout's patch it is not the background colour of the
    test occluders.
    """
    return jaxdrop.random_erasing(key, x, p, fill="pixel", max_count=1)


def loss_fn(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def geometry(args) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ResNet's widths and strides: the run's, or the model's defaults."""
    return tuple(getattr(args, "widths", WIDTHS)), tuple(getattr(args, "strides", STRIDES))


def linen_network(args, num_classes: int, config: Config | None = None) -> nn.Module:
    """The run's linen network (``args.network``: "resnet", the default, or "plain") with
    ``config``'s regulariser, or none."""
    kind, block_size, calibrate, broadcast_dims = "none", 3, False, ()
    if config is not None:
        kind, (_, block_size) = config.kind, resolved(config, args)
        calibrate, broadcast_dims = config.calibrate, config.broadcast_dims
    network = getattr(args, "network", "resnet")
    if network == "plain":
        return LinenPlainNet(num_classes, kind, block_size, calibrate, broadcast_dims)
    if network != "resnet":
        raise ValueError(f"`network` must be 'resnet' or 'plain', got {network!r}.")
    widths, strides = geometry(args)
    return LinenResNet(
        num_classes, kind, block_size, calibrate, broadcast_dims, widths=widths, strides=strides
    )


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
        keep_prob, _ = resolved(config, args)
        self.model = linen_network(args, data.num_classes, config)
        self.tx = optax.adam(optax.cosine_decay_schedule(args.lr, total_steps))
        self.schedule = keep_prob_schedule(config, keep_prob, total_steps)
        self.traces = 0
        self.args, self.hyper = args, None
        model, tx, schedule = self.model, self.tx, self.schedule
        cutout, erasing, background = config.cutout, config.erasing, data.background
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
            if erasing:
                x = random_erasing(jax.random.fold_in(key, 2), x, erasing)

            def objective(params):
                logits, updates = model.apply(
                    {"params": params, "batch_stats": batch_stats},
                    x,
                    keep_probs,
                    True,
                    rngs={"dropout": key},
                    mutable=["batch_stats"],
                )
                # The plain network has no batch statistics: an empty collection.
                return loss_fn(logits, y), updates.get("batch_stats", {})

            (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

        self.train_step = train_step
        self.init_fn, self.predict = linen_shared_fns(linen_network(args, data.num_classes))

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
def linen_shared_fns(plain: nn.Module):
    """Initialisation and evaluation, compiled once for every configuration.

    The regularisers hold no variables and are the identity in evaluation mode, so every
    configuration has the parameter tree of the network without regulariser (``plain``) and
    evaluates as it does: one compiled init and one compiled evaluation serve them all. (The
    train steps differ.)
    """
    unused = jnp.ones(2, jnp.float32)  # Without a regulariser the keep_probs are unused.

    @jax.jit
    def init(key, x):
        variables = plain.init(key, x, unused, False)
        return variables["params"], variables.get("batch_stats", {})

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
