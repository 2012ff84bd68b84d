"""Data-parallel training with DropBlock on several processes (``jax.distributed``).

One command trains on 2 local processes x 2 CPU devices each, which JAX treats as two hosts::

    python examples/multihost.py --num-processes 2 [--local-devices 2] [--steps 200]

With ``--num-processes N`` and no ``--process-id`` the script is a launcher: it picks a free
port, starts N copies of itself (``--process-id 0 .. N-1``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=LOCAL_DEVICES``, waits for them, and stops
them all as soon as one fails or ``--timeout`` passes. Without ``--num-processes`` it trains in
this one process, on its local devices (the reference the multi-process run must equal). On real
hosts run one copy per host with ``--coordinator HOST:PORT --process-id i --num-processes N``
(or call ``jax.distributed.initialize()`` with no arguments where JAX detects the cluster).

What it shows:

- one global ``jax.jit`` over a mesh of every device of every process; the batch is sharded over
  the devices, the parameters are replicated;
- one key for all processes: ``jax.random.key(seed)`` on every process, folded with the step
  inside the jitted step, and ``jaxdrop.check_same_key`` at the start and at every log line, so
  a process that derives its key differently fails loudly instead of drawing its own masks;
- DropBlock after both convolutions with the paper's schedule (keep_prob falling linearly from
  1 to ``--keep-prob``; ``jaxdrop.layer_keep_probs`` gives the first group a quarter of the drop
  rate), passed at call time so the schedule never retraces;
- the data: ``sklearn.datasets.load_digits`` (shipped with scikit-learn), the same on every
  process; each step's batch is chosen from the seed and the step, so every process agrees on
  it, and each process hands JAX only the rows its devices hold;
- logging from process 0 only.

``tests/test_multihost.py`` runs :func:`train` on 2 processes x 2 devices and on one process
with 4 devices and checks that the parameters agree.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdrop


class Net(nn.Module):
    """Two convolutions with DropBlock after each, then a linear head."""

    @nn.compact
    def __call__(self, x: jax.Array, keep_probs: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = jaxdrop.linen.DropBlock(keep_prob=1.0, block_size=3)(
            x, not train, keep_prob=keep_probs[0]
        )
        x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
        x = jaxdrop.linen.DropBlock(keep_prob=1.0, block_size=3)(
            x, not train, keep_prob=keep_probs[1]
        )
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits (8 x 8, 1,797 images) as float32 in [0, 1]: 1,500 to train, the rest to test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    return images[:1500], labels[:1500], images[1500:], labels[1500:]


def global_batch(mesh: Mesh, host_array: np.ndarray) -> jax.Array:
    """A global array sharded over the batch axis; this process supplies only its devices' rows.

    Every process holds the whole (small) dataset here. With data too large for that, load only
    this process's rows and use ``jax.make_array_from_process_local_data``.
    """
    sharding = NamedSharding(mesh, P("batch"))
    return jax.make_array_from_callback(host_array.shape, sharding, lambda index: host_array[index])


def train(
    *,
    steps: int = 200,
    batch_size: int = 64,
    seed: int = 0,
    keep_prob: float = 0.9,
    log_every: int = 50,
    log: Callable[[str], None] = print,
) -> dict:
    """Trains :class:`Net` data-parallel over all devices of all processes.

    Returns the final parameters (as NumPy arrays, the same on every process) and the loss of
    every step.
    """
    mesh = Mesh(np.asarray(jax.devices()), ("batch",))
    if batch_size % mesh.size:
        raise ValueError(
            f"`batch_size` must be a multiple of the number of devices ({mesh.size}), got "
            f"{batch_size}."
        )
    replicated = NamedSharding(mesh, P())
    train_x, train_y, test_x, test_y = load_data()

    model = Net()
    # One seed for everything; every process derives the same keys from it.
    root = jax.random.key(seed)
    jaxdrop.check_same_key(root)
    params_key, dropout_key = jax.random.split(root)
    keep_probs = jaxdrop.layer_keep_probs(optax.linear_schedule(1.0, keep_prob, steps), 2)
    tx = optax.adam(optax.cosine_decay_schedule(1e-2, steps))

    # Replicated parameters and optimizer state: the same values on every device.
    @functools.partial(jax.jit, out_shardings=replicated)
    def init():
        params = model.init(params_key, jnp.zeros((1, 8, 8, 1)), keep_probs(0), False)["params"]
        return params, tx.init(params)

    @jax.jit
    def train_step(params, opt_state, step, x, y):
        key = jax.random.fold_in(dropout_key, step)
        kp = keep_probs(step)  # traced: one compilation for the whole schedule

        def loss_fn(params):
            logits = model.apply({"params": params}, x, kp, True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracy(params, x, y):
        logits = model.apply({"params": params}, x, keep_probs(0), False)
        return jnp.mean(jnp.argmax(logits, -1) == y)

    params, opt_state = init()
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        # The same rows on every process: chosen from the seed and the step, not from the process.
        rows = np.random.default_rng([seed, step]).choice(len(train_x), batch_size, replace=False)
        x, y = global_batch(mesh, train_x[rows]), global_batch(mesh, train_y[rows])
        params, opt_state, loss = train_step(params, opt_state, step, x, y)
        losses.append(float(loss))  # a replicated scalar: readable on every process
        if (step + 1) % log_every == 0 or step + 1 == steps:
            jaxdrop.check_same_key(jax.random.fold_in(dropout_key, step))
            if jax.process_index() == 0:
                log(f"step {step + 1:4d}  loss {np.mean(losses[-log_every:]):.4f}")
    usable = len(test_x) - len(test_x) % mesh.size
    acc = float(
        accuracy(params, global_batch(mesh, test_x[:usable]), global_batch(mesh, test_y[:usable]))
    )
    if jax.process_index() == 0:
        log(
            f"{jax.process_count()} process(es), {jax.device_count()} devices, {steps} steps in "
            f"{time.perf_counter() - start:.1f} s: test accuracy {acc:.4f}"
        )
    host_params = jax.tree.map(lambda p: np.asarray(p.addressable_data(0)), params)
    return {"params": host_params, "losses": np.asarray(losses), "test_accuracy": acc}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int, local_devices: int, argv: list[str], timeout: float) -> int:
    """Runs ``num_processes`` copies of this script on this machine; returns the first failure's
    exit status (or 0). Stops every copy when one fails or ``timeout`` seconds pass."""
    port = free_port()
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={local_devices}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *argv]
            + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(num_processes)]
            + ["--process-id", str(i)],
            env=env,
        )
        for i in range(num_processes)
    ]
    deadline = time.monotonic() + timeout
    status = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                status = failed[0] if failed else 124
                break
            time.sleep(0.1)
        else:
            status = next((p.returncode for p in procs if p.returncode), 0)
    finally:
        # A process whose peer died would wait for it forever in the next collective.
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if status == 124:
        print(f"timed out after {timeout} s", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--local-devices", type=int, default=2, help="CPU devices per process")
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-prob", type=float, default=0.9)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    training = ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    training += ["--seed", str(args.seed), "--keep-prob", str(args.keep_prob)]
    training += ["--log-every", str(args.log_every)]

    if args.num_processes is not None and args.process_id is None:
        return launch(args.num_processes, args.local_devices, training, args.timeout)
    if args.process_id is not None:
        # CPU devices of different processes talk through gloo; GPUs and TPUs ignore this.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    try:
        train(
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            keep_prob=args.keep_prob,
            log_every=args.log_every,
        )
    finally:
        if args.process_id is not None:
            jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
