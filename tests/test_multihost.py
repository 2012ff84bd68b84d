"""Multi-process runs: 2 processes x 2 CPU devices on localhost behave as two hosts.

The module fixture :func:`runs` launches this file as a script three times at once: twice as the
two processes of one ``jax.distributed`` run (gloo collectives, 2 forced host devices each), and
once as a single process with 4 devices. Every process computes the same things on a mesh of
all 4 devices and writes them (gathered to the host) as ``.npz`` plus a ``.json`` of metadata.
The tests compare the multi-process results with the single-process ones, never with stored
values (the samplers' random streams may change; their sharding invariance may not):

- every family function (DropBlock with ``normalize="actual"`` and ``"expected"``, dropout,
  spatial_dropout, drop_path, cutout, dropconnect): forward and gradient under a global
  ``jax.jit`` with the batch sharded over both processes; the compiled collectives are the
  same and ``normalize="actual"``'s one scalar all-reduce is the only communication jaxdrop adds;
- a few data-parallel training steps of an NNX model with jaxdrop modules and of the linen model
  of ``examples/multihost.py`` (its training loop, called as a function): the same parameters;
- processes that pass *different* keys: what comes out, exactly;
- ``jaxdrop.check_same_key``: silent when the processes agree, ``ValueError`` when they do not.

The launcher (``examples/multihost.py --num-processes 2``) runs in a slow-marked test.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import oracle
import pytest
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# Importing jaxdrop, flax and optax starts no JAX backend, so the workers may still call
# jax.distributed.initialize afterwards.
import jaxdrop

# Every test here starts processes: slow (CI runs them all).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parent.parent
NUM_PROCESSES = 2
LOCAL_DEVICES = 2
DEVICES = NUM_PROCESSES * LOCAL_DEVICES
# The limit for the three workers together. Each used about 25 s of CPU time here (5.6 s for the
# family, 6.7 s for the NNX steps, 10 s for the example, the rest imports); the margin is for a
# loaded machine, where the wall time is many times that.
TIMEOUT_S = 300
# Batch 8: two examples per device, so each process holds rows [4p, 4p + 4).
SHAPE = (8, 12, 12, 4)
KEY_SEED = 0
# The keys of the "different keys" case: process p passes jax.random.key(OTHER_SEEDS[p]).
OTHER_SEEDS = (10, 11)
TRAIN_STEPS = 3
DIFFERENT_KEYS = ("dropblock-actual", "dropblock-expected", "dropout")

# ---------------------------------------------------------------------------------------------
# Launching (parent side)
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(
    commands: list[tuple[list[str], dict[str, str]]], logs: pathlib.Path, timeout: float
) -> None:
    """Runs the commands at once; as soon as one fails (or time runs out) kills the others, whose
    next collective would otherwise wait forever, and fails with every process's output."""
    paths = [logs / f"{i}.log" for i in range(len(commands))]
    procs = []
    failure = None
    try:
        for (argv, env), path in zip(commands, paths, strict=True):
            with open(path, "w") as log:
                procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                break
            if time.monotonic() > deadline:
                failure = f"timed out after {timeout} s"
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if failure is None and any(p.returncode != 0 for p in procs):
        failure = "a process failed"
    if failure is not None:
        report = "\n".join(
            f"--- {argv[1:]} exit {p.returncode}:\n{path.read_text()[-6000:]}"
            for (argv, _), p, path in zip(commands, procs, paths, strict=True)
        )
        pytest.fail(f"{failure}\n{report}", pytrace=False)


def worker_env(local_devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={local_devices}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def load(out: pathlib.Path, name: str) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(out / f"{name}.npz") as data:
        arrays = dict(data)
    return arrays, json.loads((out / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One launch for the whole file: {"multi-0", "multi-1", "single-0"} -> (arrays, metadata)."""
    out = tmp_path_factory.mktemp("multihost")
    port = free_port()
    # -W error: a warning in a worker (e.g. about the per-process keys) fails the run.
    script = [sys.executable, "-W", "error", __file__, str(out)]
    commands = [
        (script + ["multi", str(i), f"127.0.0.1:{port}"], worker_env(LOCAL_DEVICES))
        for i in range(NUM_PROCESSES)
    ]
    commands.append((script + ["single", "0"], worker_env(DEVICES)))
    run_all(commands, out, TIMEOUT_S)
    return {name: load(out, name) for name in ("multi-0", "multi-1", "single-0")}


# ---------------------------------------------------------------------------------------------
# What every process computes (worker side)
# ---------------------------------------------------------------------------------------------


def family() -> dict:
    """name -> (function of (key, data), the collectives jaxdrop may add)."""
    return {
        "dropblock-actual": (lambda k, x: jaxdrop.dropblock(k, x, 0.8, 3), "one scalar all-reduce"),
        "dropblock-expected": (
            lambda k, x: jaxdrop.dropblock(k, x, 0.8, 3, normalize="expected"),
            "none",
        ),
        "dropout": (lambda k, x: jaxdrop.dropout(k, x, 0.8), "none"),
        "spatial_dropout": (lambda k, x: jaxdrop.spatial_dropout(k, x, 0.5), "none"),
        "drop_path": (lambda k, x: jaxdrop.drop_path(k, x, 0.5), "none"),
        "cutout": (lambda k, x: jaxdrop.cutout(k, x, 5, num_patches=2), "none"),
        "dropconnect": (lambda k, p: jaxdrop.dropconnect(k, p, 0.7), "none"),
    }


def host_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal(SHAPE, dtype=np.float32),
        "cotangent": rng.standard_normal(SHAPE, dtype=np.float32),
        "kernel": rng.standard_normal((16, 8), dtype=np.float32),
        "bias": rng.standard_normal((8,), dtype=np.float32),
    }


def _flat(prefix: str, tree) -> dict[str, np.ndarray]:
    """Leaves of a pytree of global arrays, gathered to this host, keyed by path."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {
        prefix + jax.tree_util.keystr(path): np.asarray(
            multihost_utils.process_allgather(leaf, tiled=True)
        )
        for path, leaf in leaves
    }


def compute_family(mesh, results, meta):
    """Every family function, forward and gradient in one global jit; then the "different keys"
    case through the same compiled program: process p passes jax.random.key(OTHER_SEEDS[p])
    (the single process computes both keys on everything)."""
    from test_sharding import collectives

    host = host_inputs()
    batch = NamedSharding(mesh, P("batch"))
    replicated = NamedSharding(mesh, P())

    def put(a, sharding):
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    x, ct = put(host["x"], batch), put(host["cotangent"], batch)
    # DropConnect's "batch": the kernel's rows over the devices (tensor parallelism).
    params = {"kernel": put(host["kernel"], batch), "bias": put(host["bias"], replicated)}
    meta["collectives"] = {}
    meta["device_processes"] = [d.process_index for d in mesh.devices.flat]
    for name, (fn, _) in family().items():
        data, cotangent = (params, params) if name == "dropconnect" else (x, ct)

        # One program for the forward pass and the gradient (a vjp with a sharded cotangent,
        # passed as an argument: a global array cannot be closed over).
        def step(key, data, cotangent, fn=fn):
            y, vjp = jax.vjp(lambda d: fn(key, d), data)
            return y, vjp(cotangent)[0]

        key = jax.random.key(KEY_SEED)
        compiled = jax.jit(step).lower(key, data, cotangent).compile()
        y, grad = compiled(key, data, cotangent)
        results.update(_flat(f"{name}/forward", y))
        results.update(_flat(f"{name}/grad", grad))
        meta["collectives"][name] = collectives(compiled.as_text())
        if name not in DIFFERENT_KEYS:
            continue
        if jax.process_count() > 1:
            own = jax.random.key(OTHER_SEEDS[jax.process_index()])
            results.update(_flat(f"different-keys/{name}", compiled(own, data, cotangent)[0]))
        else:
            for seed in OTHER_SEEDS:
                y = compiled(jax.random.key(seed), data, cotangent)[0]
                results.update(_flat(f"key-{seed}/{name}", y))


def compute_check_same_key(mesh, results, meta):
    cases = {
        "same typed key": jax.random.key(KEY_SEED),
        "same legacy key": jax.random.PRNGKey(KEY_SEED),
        "same key, folded with the step": jax.random.fold_in(jax.random.key(KEY_SEED), 7),
        "key folded with the process index": jax.random.fold_in(
            jax.random.key(KEY_SEED), jax.process_index()
        ),
        "different implementation on process 1": jax.random.key(
            KEY_SEED, impl="rbg" if jax.process_index() == 1 else "threefry2x32"
        ),
    }
    root = jax.random.key(KEY_SEED)
    # Global key arrays: replicated (checked through this process's copy), and sharded over the
    # processes (rejected: its shards differ between processes by design).
    cases["same global key, replicated"] = jax.jit(
        lambda: root, out_shardings=NamedSharding(mesh, P())
    )()
    sharded = jax.jit(
        lambda: jax.random.split(root, DEVICES), out_shardings=NamedSharding(mesh, P("batch"))
    )()
    meta["check_same_key"] = {}
    try:
        jaxdrop.check_same_key(sharded)
        meta["sharded key"] = None
    except ValueError as e:
        meta["sharded key"] = str(e)
    for case, rng in cases.items():
        try:
            jaxdrop.check_same_key(rng)
            meta["check_same_key"][case] = None
        except ValueError as e:
            meta["check_same_key"][case] = str(e)


def compute_nnx_training(mesh, results, meta):
    """A few data-parallel steps of an NNX model with jaxdrop modules (the linen model is the
    example's, in compute_example)."""

    rng = np.random.default_rng(1)
    images = rng.standard_normal((TRAIN_STEPS, 8, 10, 10, 3), dtype=np.float32)
    labels = rng.integers(0, 5, (TRAIN_STEPS, 8)).astype(np.int32)
    batch = NamedSharding(mesh, P("batch"))
    replicated = NamedSharding(mesh, P())

    def put(a):
        return jax.make_array_from_callback(a.shape, batch, lambda index: a[index])

    keep_prob = optax.linear_schedule(1.0, 0.8, TRAIN_STEPS)
    tx = optax.adam(1e-2)

    class NnxNet(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.drop = jaxdrop.nnx.DropBlock(
                keep_prob=1.0, block_size=3, normalize="expected", rngs=rngs
            )
            self.drop_path = jaxdrop.nnx.DropPath(keep_prob=0.8, rngs=rngs)
            self.head = nnx.Linear(8, 5, rngs=rngs)

        def __call__(self, x, kp):
            h = nnx.relu(self.conv(x))
            h = h + self.drop_path(self.drop(h, keep_prob=kp))
            return self.head(h.mean(axis=(1, 2)))

    # Built inside a global jit from the same seeds on every process, its whole state
    # (parameters, optimizer moments, the dropout streams' keys and counts) replicated: a
    # multi-process jax.device_put cannot place local values on another process's devices.
    @nnx.jit
    def create():
        model = NnxNet(nnx.Rngs(params=4, dropout=5))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        state = nnx.state((model, optimizer))
        nnx.update((model, optimizer), jax.lax.with_sharding_constraint(state, replicated))
        return model, optimizer

    nnx_model, optimizer = create()

    @nnx.jit
    def nnx_step(model, optimizer, x, y):
        kp = keep_prob(optimizer.step[...])

        def loss_fn(model):
            logits = model(x, kp)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = []
    for step in range(TRAIN_STEPS):
        losses.append(float(nnx_step(nnx_model, optimizer, put(images[step]), put(labels[step]))))
    results.update(_flat("nnx/params/", nnx.state(nnx_model, nnx.Param)))
    results["nnx/losses"] = np.asarray(losses)
    results["nnx/dropout-count"] = np.asarray(
        [int(np.asarray(nnx_model.drop.rngs.count[...].addressable_data(0)))]
    )


def compute_example(mesh, results, meta):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "multihost_example", ROOT / "examples/multihost.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.train(steps=TRAIN_STEPS, batch_size=16, log=lambda line: None)
    results.update({f"example/params/{k}": v for k, v in _flat_host(out["params"]).items()})
    results["example/losses"] = out["losses"]


def _flat_host(tree) -> dict[str, np.ndarray]:
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def worker(out: str, mode: str, process_id: int, coordinator: str | None) -> None:
    # The suite's strict numerics (tests/conftest.py) here too.
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    if mode == "multi":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, NUM_PROCESSES, process_id)
    try:
        assert jax.device_count() == DEVICES, jax.devices()
        mesh = Mesh(np.asarray(jax.devices()), ("batch",))
        results: dict[str, np.ndarray] = {}
        meta: dict = {"process_count": jax.process_count()}
        meta["cpu_seconds"] = {}
        for phase in (compute_family, compute_check_same_key):
            start = time.process_time()
            phase(mesh, results, meta)
            meta["cpu_seconds"][phase.__name__] = time.process_time() - start
            print(f"{phase.__name__}: {meta['cpu_seconds'][phase.__name__]:.1f} s", flush=True)
        # Dtype promotion is relaxed for training only because optax's Adam is not strict-clean
        # (its bias correction raises a Python float to an int32 count).
        with jax.numpy_dtype_promotion("standard"):
            for phase in (compute_nnx_training, compute_example):
                start = time.process_time()
                phase(mesh, results, meta)
                meta["cpu_seconds"][phase.__name__] = time.process_time() - start
                print(f"{phase.__name__}: {meta['cpu_seconds'][phase.__name__]:.1f} s", flush=True)
        name = f"{mode}-{process_id}"
        np.savez(os.path.join(out, f"{name}.npz"), **results)
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(meta, f)
    finally:
        if mode == "multi":
            jax.distributed.shutdown()


# ---------------------------------------------------------------------------------------------
# Tests (parent side)
# ---------------------------------------------------------------------------------------------


def test_processes_agree(runs):
    # Both processes gathered the same global arrays and saw the same key checks.
    (a, meta_a), (b, meta_b) = runs["multi-0"], runs["multi-1"]
    assert meta_a["process_count"] == meta_b["process_count"] == NUM_PROCESSES
    assert runs["single-0"][1]["process_count"] == 1
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert meta_a["check_same_key"] == meta_b["check_same_key"]


@pytest.mark.parametrize("name", list(family()))
def test_family_matches_single_process(runs, name):
    # Imported here: at import, test_sharding asks for the device count, which in a worker
    # would start JAX before jax.distributed.initialize.
    from test_sharding import is_scalar

    (multi, meta), (single, single_meta) = runs["multi-0"], runs["single-0"]
    names = [k for k in single if k.startswith(f"{name}/")]
    assert {f"{name}/forward", f"{name}/grad"} <= {k.split("[")[0] for k in names}, names
    for k in names:
        # Bit for bit: the random bits depend only on the key and the index, not on the
        # sharding, and the one reduction ("actual"'s count) is in integers.
        np.testing.assert_array_equal(multi[k], single[k], err_msg=k)
    # The same program on 2 processes as on one: the same collectives, and jaxdrop's own are
    # what the README says. The program is the forward pass plus the vjp, so any reduction in
    # it comes from jaxdrop.
    found = [tuple(c) for c in meta["collectives"][name]]
    assert found == [tuple(c) for c in single_meta["collectives"][name]]
    if family()[name][1] == "one scalar all-reduce":
        # The count of kept units, one scalar, reused by the backward pass.
        assert len(found) == 1 and found[0][0] == "all-reduce" and is_scalar(found[0][1]), found
    else:
        assert found == [], found


@pytest.mark.parametrize("name", DIFFERENT_KEYS)
def test_different_keys_per_process(runs, name):
    # What happens when process p passes its own key, jax.random.key(OTHER_SEEDS[p]), to a
    # global jit: no error and no warning. Each device draws its part of the mask from its own
    # process's key, so the rows held by process p are the rows that key gives on one process;
    # the global array is the two single-process results spliced at the process boundary.
    (multi, meta), (single, _) = runs["multi-0"], runs["single-0"]
    x = host_inputs()["x"]
    assert np.all(x != 0)  # so that y == 0 marks exactly the dropped units
    got = multi[f"different-keys/{name}"]
    per_key = [single[f"key-{seed}/{name}"] for seed in OTHER_SEEDS]
    rows = np.repeat(meta["device_processes"], SHAPE[0] // DEVICES)
    spliced = np.where((rows == 0)[:, None, None, None], per_key[0], per_key[1])
    assert not np.array_equal(got, per_key[0]) and not np.array_equal(got, per_key[1])
    if name == "dropblock-actual":
        # The mask is spliced too, but the scale is size / kept over the spliced mask (the
        # all-reduce sums each process's count): a value neither key gives on its own.
        keep = spliced != 0
        np.testing.assert_array_equal(got, oracle.apply_keep(x, keep, oracle.actual_scale(keep)))
        assert not np.array_equal(got, spliced)
    else:
        np.testing.assert_array_equal(got, spliced)


def test_check_same_key(runs):
    checks = runs["multi-0"][1]["check_same_key"]
    same = ("same typed key", "same legacy key", "same key, folded with the step")
    for case in (*same, "same global key, replicated"):
        assert checks[case] is None, (case, checks[case])
    for case in ("key folded with the process index", "different implementation on process 1"):
        message = checks[case]
        assert message is not None, case
        assert "`rng`" in message and "[0]" in message and "[1]" in message, message
    message = runs["multi-0"][1]["sharded key"]
    assert message is not None and "`rng` must be one key" in message, message
    # One process: nothing to compare, nothing raised (a global array there is fully addressable).
    assert all(v is None for v in runs["single-0"][1]["check_same_key"].values())


@pytest.mark.parametrize("model", ["nnx", "example"])
def test_training_matches_single_process(runs, model):
    # A few data-parallel steps on 2 processes give the parameters of the same steps on one
    # process with 4 devices: NNX modules whose dropout streams are replicated state, and the
    # linen model of examples/multihost.py (keys folded from the step, a keep_prob schedule).
    multi, single = runs["multi-0"][0], runs["single-0"][0]
    names = [k for k in single if k.startswith(f"{model}/")]
    assert any("/params/" in k for k in names), names
    for k in names:
        # Not bit for bit: the gradient's mean over the batch is summed across devices in
        # another order (gloo between processes, in-process on one), measured at up to 6e-8 in
        # parameters of magnitude up to 0.8 after 3 steps, a few float32 ulps. A different mask
        # at any step would change the gradient at O(1) relative size and move parameters by a
        # good fraction of Adam's step (lr 1e-2 / 3e-3), four orders above this tolerance.
        np.testing.assert_allclose(multi[k], single[k], rtol=1e-6, atol=1e-6, err_msg=k)
    if model == "nnx":
        # The DropBlock stream advanced once per step, on every process alike.
        assert multi["nnx/dropout-count"].tolist() == [TRAIN_STEPS]


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
def test_check_same_key_one_process(make_key):
    # One process: nothing to compare, no communication, nothing raised.
    assert jax.process_count() == 1
    assert jaxdrop.check_same_key(make_key(0)) is None
    assert jaxdrop.check_same_key(jax.random.split(make_key(0), 3)) is None


@pytest.mark.parametrize("bad", [np.ones(3, np.float32), np.ones(2, np.float32), "key", None])
def test_check_same_key_rejects_non_keys(bad):
    with pytest.raises(TypeError, match="`rng` must be a PRNG key"):
        jaxdrop.check_same_key(bad)


def test_check_same_key_outside_jit_only():
    # It is a host-side all-gather: inside jit the key is a tracer, which has no bits to compare.
    with pytest.raises(TypeError, match="`rng` must be a concrete key"):
        jax.jit(jaxdrop.check_same_key)(jax.random.key(0))


def test_run_all_stops_the_others_when_one_fails(tmp_path):
    # A process whose peer died would wait in its next collective until the timeout: run_all
    # must kill it as soon as the other fails, and report the failure with both outputs.
    env = worker_env(1)
    fail = [sys.executable, "-c", "import sys; print('failing'); sys.exit(3)"]
    wait = [sys.executable, "-c", "import time; time.sleep(120)"]
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"a process failed[\s\S]*failing"):
        run_all([(fail, env), (wait, env)], tmp_path, timeout=100)
    assert time.monotonic() - start < 60


def test_launcher_runs_the_example():
    # The one command the README documents, for a few steps.
    env = worker_env(1)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples/multihost.py"), "--num-processes", "2"]
        + ["--steps", "3", "--batch-size", "16", "--log-every", "1", "--timeout", "240"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "2 process(es), 4 devices, 3 steps" in result.stdout, result.stdout
    # Logged by process 0 only: one line per step, not two.
    assert result.stdout.count("step    1 ") == 1, result.stdout


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tests"))
    out, mode, process_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    worker(out, mode, process_id, sys.argv[4] if len(sys.argv) > 4 else None)
