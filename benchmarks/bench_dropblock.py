"""DropBlock against dropout, the `x * 2` floor and the peers, on ResNet-50 feature maps.

Runs every implementation on the same arrays, in one process, and writes a Markdown report
(`benchmarks/RESULTS.md` by default): compile time apart from the steady state, the median and
minimum of the steady state, ratios to the floor and to `flax.linen.Dropout`, the measured drop
rate next to the nominal one, and the targets of issue 3 checked against this run.

    python benchmarks/bench_dropblock.py            # the full matrix (about 10 minutes on 2 cores)
    python benchmarks/bench_dropblock.py --quick    # one shape, float32, block 7

Allocator: glibc serves every buffer over its mmap threshold (at most 32 MiB) with a fresh
`mmap`, and gives XLA's worker threads their own arenas (heaps capped at 64 MiB, shrunk on free),
so each call on a large array pays page faults for its buffers. The script re-executes itself
with `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0` and a large `MALLOC_TRIM_THRESHOLD_` (one heap that
stays mapped), the same for every implementation; `--default-malloc` keeps glibc's defaults
instead. The report says which was used.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# One arena (XLA's worker threads would otherwise get per-thread arenas, whose heaps are capped
# at 64 MiB and shrunk on free), no mmap, and no trimming: a steady state without page faults.
MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**40),
}
SHAPES = "16x56x56x256,16x28x28x512,16x14x14x1024,16x7x7x2048"
CASE_BUDGET_S = 4.0  # Timed seconds per case at most (but at least 3 calls).
HEADLINE = ((16, 28, 28, 512), "float32", 7)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes", default=SHAPES, help="comma-separated NHWC shapes, e.g. 16x28x28x512"
    )
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--blocks", default="7,3", help="comma-separated block sizes")
    parser.add_argument("--keep-prob", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per implementation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
    parser.add_argument("--rate-keys", type=int, default=4, help="keys averaged for drop rates")
    parser.add_argument(
        "--quick", action="store_true", help="16x28x28x512, float32, block 7, 8 repeats"
    )
    parser.add_argument(
        "--no-peers", action="store_true", help="skip the PyTorch and keras-cv peers"
    )
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument(
        "--no-pieces", action="store_true", help="skip the sampler and expansion tables"
    )
    parser.add_argument(
        "--default-malloc", action="store_true", help="keep glibc's malloc defaults"
    )
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.dtypes, args.blocks, args.repeats = "16x28x28x512", "float32", "7", 8
    args.shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",") if s]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.blocks = [int(b) for b in args.blocks.split(",") if b]
    return args


def maybe_reexec(args):
    """Restarts the interpreter with the malloc settings: glibc reads them only at start-up."""
    if args.default_malloc or all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


# ---------------------------------------------------------------------------------------------
# Timing


@dataclass
class Case:
    """One implementation in one mode on one array: how to compile it and how to call it."""

    group: tuple  # (shape, dtype, block or None)
    name: str
    mode: str  # "fwd" or "fwd+bwd"
    compile: Callable[[], Callable[[], object]]  # Returns a zero-argument steady-state call.
    sync: Callable[[object], object]
    drop_rate: Callable[[], float] | None = None
    nominal: float | None = None
    expected: float | None = None
    framework: str = "jax"
    compile_s: float = math.nan
    times: list = field(default_factory=list)
    rate: float = math.nan
    error: str = ""
    call: Callable[[], object] | None = None
    repeats: int = 0


def run_group(cases, repeats, warmup):
    """Compiles each case, then times them round-robin so that drift hits all of them alike."""
    live = []
    for case in cases:
        try:
            start = time.perf_counter()
            case.call = case.compile()
            case.sync(case.call())
            case.compile_s = time.perf_counter() - start
            for _ in range(warmup):
                case.sync(case.call())
            # Slow peers (hundreds of ms a call) get fewer timed calls: about CASE_BUDGET_S each.
            start = time.perf_counter()
            case.sync(case.call())
            one = time.perf_counter() - start
            case.repeats = max(3, min(repeats, int(CASE_BUDGET_S / max(one, 1e-9))))
            live.append(case)
        except Exception as error:  # noqa: BLE001 - a failing peer is reported, not fatal.
            case.error = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            print(f"  {case.name} [{case.mode}] failed: {case.error}", flush=True)
    for i in range(repeats):
        for case in live:
            if i >= case.repeats:
                continue
            start = time.perf_counter()
            case.sync(case.call())
            case.times.append(time.perf_counter() - start)
    for case in live:
        case.call = None  # Free the outputs and executables' arguments.
        if case.drop_rate is not None:
            case.rate = case.drop_rate()
        print(
            f"  {case.name:42s} {case.mode:8s} compile {case.compile_s:6.2f} s  "
            f"median {median_ms(case):8.3f} ms  min {min_ms(case):8.3f} ms",
            flush=True,
        )


def median_ms(case):
    return statistics.median(case.times) * 1e3 if case.times else math.nan


def min_ms(case):
    return min(case.times) * 1e3 if case.times else math.nan


# ---------------------------------------------------------------------------------------------
# JAX implementations


def jax_cases(shape, dtype_name, blocks, keep_prob, rate_keys, backward):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import jaxdrop
    from jaxdrop._src import dropblock as dropblock_lib

    dtype = jnp.dtype(dtype_name)
    key = jax.random.key(0)
    x = jax.random.uniform(jax.random.key(1), shape, jnp.float32, 1.0, 2.0).astype(dtype)
    g = jax.random.normal(jax.random.key(2), shape, jnp.float32).astype(dtype)
    dropout = nn.Dropout(rate=1.0 - keep_prob, deterministic=False)

    impls = {
        "jitted `x * 2` (floor)": (lambda k, x: x * 2, None, None),
        f"`flax.linen.Dropout(rate={1 - keep_prob:.2g})`": (
            lambda k, x: dropout.apply({}, x, rngs={"dropout": k}),
            1 - keep_prob,
            None,
        ),
    }
    for block in blocks:
        b = min(block, shape[1], shape[2])
        sizes, bs = (shape[1], shape[2]), (b, b)
        gamma = dropblock_lib.seed_probability(jnp.float32(keep_prob), sizes, bs, False)
        expected = 1.0 - float(
            dropblock_lib.expected_keep(gamma, *dropblock_lib.coverage_histogram(sizes, bs))
        )
        variants = {
            "per-channel": {},
            "shared mask `broadcast_dims=(-1,)`": {"broadcast_dims": (-1,)},
            '`normalize="expected"`': {"normalize": "expected"},
        }
        for label, options in variants.items():
            fn = functools.partial(
                jaxdrop.dropblock, keep_prob=keep_prob, block_size=block, **options
            )
            impls[f"jaxdrop {label}, block {block}"] = (
                lambda k, x, fn=fn: fn(k, x),
                1 - keep_prob,
                expected,
            )

    cases = []
    for name, (fn, nominal, expected) in impls.items():
        block = int(name.rsplit("block ", 1)[1]) if "block " in name else None

        def compile_fwd(fn=fn):
            compiled = jax.jit(fn).lower(key, x).compile()
            return lambda: compiled(key, x)

        def drop_rate(fn=fn):
            f = jax.jit(fn)
            keys = jax.random.split(jax.random.key(7), rate_keys)
            return statistics.fmean(float(jnp.mean(f(k, x) == 0)) for k in keys)

        sync = jax.block_until_ready
        cases.append(
            Case(
                (shape, dtype_name, block),
                name,
                "fwd",
                compile_fwd,
                sync,
                drop_rate,
                nominal,
                expected,
            )
        )
        if backward:

            def fwd_bwd(k, x, g, fn=fn):
                y, vjp = jax.vjp(lambda x: fn(k, x), x)
                return y, vjp(g)[0]

            def compile_bwd(fwd_bwd=fwd_bwd):
                compiled = jax.jit(fwd_bwd).lower(key, x, g).compile()
                return lambda: compiled(key, x, g)

            cases.append(Case((shape, dtype_name, block), name, "fwd+bwd", compile_bwd, sync))
    return cases


# ---------------------------------------------------------------------------------------------
# Peers


def load_timm_drop():
    """timm's `layers/drop.py` alone: `timm.layers` imports torchvision, which it does not need."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("timm is not installed (pip install --no-deps timm)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "layers", "drop.py")
    module_spec = importlib.util.spec_from_file_location("_timm_drop", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def torch_cases(shape, dtype_name, blocks, keep_prob, rate_keys, backward, skipped):
    try:
        import torch
    except ImportError:
        skipped.add(
            "PyTorch peers: torch is not installed (pip install torch==2.13.0, a CPU build)"
        )
        return []
    n, h, w, c = shape
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand((n, c, h, w), generator=gen) + 1.0).to(tdtype)  # NCHW: PyTorch's layout.
    g = torch.randn((n, c, h, w), generator=gen).to(tdtype)
    drop_prob = 1.0 - keep_prob
    impls = {"torch `x * 2` (floor)": (lambda x: x * 2, None)}
    try:
        timm_drop = load_timm_drop()
    except Exception as error:  # noqa: BLE001
        skipped.add(f"timm: {error}")
        timm_drop = None
    try:
        from dropblock import DropBlock2D
    except ImportError:
        skipped.add("miguelvr dropblock: not installed (pip install --no-deps dropblock)")
        DropBlock2D = None
    for block in blocks:
        if timm_drop is not None:
            impls[f"timm `drop_block_2d(couple_channels=False)` (per-channel), block {block}"] = (
                functools.partial(
                    timm_drop.drop_block_2d,
                    drop_prob=drop_prob,
                    block_size=block,
                    couple_channels=False,
                ),
                drop_prob,
            )
            impls[f"timm `drop_block_2d` default (shared mask), block {block}"] = (
                functools.partial(timm_drop.drop_block_2d, drop_prob=drop_prob, block_size=block),
                drop_prob,
            )
        if DropBlock2D is not None:
            module = DropBlock2D(drop_prob=drop_prob, block_size=block).train()
            impls[f"miguelvr `DropBlock2D` (one mask shared by channels), block {block}"] = (
                module,
                drop_prob,
            )

    def sync(out):
        return out

    cases = []
    for name, (fn, nominal) in impls.items():
        block = int(name.rsplit("block ", 1)[1]) if "block " in name else None

        def compile_fwd(fn=fn):
            def call():
                with torch.no_grad():
                    return fn(x)

            return call

        def drop_rate(fn=fn):
            with torch.no_grad():
                return statistics.fmean(
                    float((fn(x) == 0).float().mean()) for _ in range(rate_keys)
                )

        cases.append(
            Case(
                (shape, dtype_name, block),
                name,
                "fwd",
                compile_fwd,
                sync,
                drop_rate,
                nominal,
                framework="torch",
            )
        )
        if backward:

            def compile_bwd(fn=fn):
                xr = x.detach().clone().requires_grad_(True)

                def call():
                    xr.grad = None
                    y = fn(xr)
                    y.backward(g)
                    return xr.grad

                return call

            cases.append(
                Case(
                    (shape, dtype_name, block),
                    name,
                    "fwd+bwd",
                    compile_bwd,
                    sync,
                    framework="torch",
                )
            )
    return cases


def shim_keras_cv_pooling():
    """keras-cv 0.9 passes NHWC-style 4-element pooling windows, which Keras 3 rejects on JAX.

    Keras 3's `ops.max_pool` takes the spatial window only; this converts `[1, h, w, 1]` to
    `(h, w)` for keras-cv's DropBlock2D module, and changes nothing else.
    """
    import keras_cv.src.layers.regularization.dropblock_2d as module

    real = module.ops
    if getattr(real, "_jaxdrop_shim", False):
        return

    class Ops:
        _jaxdrop_shim = True

        def __getattr__(self, name):
            return getattr(real, name)

        def max_pool(self, x, pool_size, strides=None, padding="valid", data_format=None):
            if len(pool_size) == 4:
                pool_size = tuple(pool_size[1:3])
            if strides is not None and len(strides) == 4:
                strides = tuple(strides[1:3])
            return real.max_pool(x, pool_size, strides, padding, data_format)

    module.ops = Ops()


def keras_cv_cases(shape, dtype_name, blocks, keep_prob, rate_keys, skipped):
    """keras-cv's DropBlock2D on Keras' JAX backend, eager (it does not trace under jax.jit)."""
    if importlib.util.find_spec("keras_cv") is None:
        skipped.add(
            "keras-cv: not installed (it needs TensorFlow to import: "
            "pip install keras-cv tensorflow-cpu)"
        )
        return []
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import jax
        import jax.numpy as jnp
        import keras
        import keras_cv

        if keras.backend.backend() != "jax":
            skipped.add(f"keras-cv: Keras runs on {keras.backend.backend()!r}, not JAX")
            return []
    except Exception as error:  # noqa: BLE001
        skipped.add(
            f"keras-cv: import failed ({type(error).__name__}: {str(error).splitlines()[0][:100]})"
        )
        return []
    try:
        shim_keras_cv_pooling()
    except Exception as error:  # noqa: BLE001
        skipped.add(f"keras-cv: the pooling shim failed ({type(error).__name__}: {error})")
        return []
    dtype = jnp.dtype(dtype_name)
    x = jax.random.uniform(jax.random.key(1), shape, jnp.float32, 1.0, 2.0).astype(dtype)
    cases = []
    for block in blocks:
        layer = keras_cv.layers.DropBlock2D(rate=1.0 - keep_prob, block_size=block, seed=0)
        name = f"keras-cv `DropBlock2D` (JAX backend, eager), block {block}"

        def compile_fwd(layer=layer):
            return lambda: layer(x, training=True)

        def drop_rate(layer=layer):
            return statistics.fmean(
                float(jnp.mean(layer(x, training=True) == 0)) for _ in range(rate_keys)
            )

        cases.append(
            Case(
                (shape, dtype_name, block),
                name,
                "fwd",
                compile_fwd,
                jax.block_until_ready,
                drop_rate,
                1.0 - keep_prob,
                framework="jax",
            )
        )
    return cases


# ---------------------------------------------------------------------------------------------
# Pieces of the mask: seed sampling and block expansion


def piece_tables(repeats, warmup):
    """Sparse against dense seed sampling, and the block-expansion strategies, at the headline."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from jaxdrop._src import dropblock as dropblock_lib
    from jaxdrop._src import sampling

    shape, _, block = HEADLINE
    seed_shape = (shape[0], shape[1] - block + 1, shape[2] - block + 1, shape[3])
    gamma = dropblock_lib.seed_probability(jnp.float32(0.9), shape[1:3], (block, block), False)
    key = jax.random.key(0)
    n = math.prod(seed_shape)

    def sampler(tiers):
        return lambda: (
            jax.jit(
                lambda k, g: sampling.bernoulli_seeds(
                    k, g, seed_shape, dtype=jnp.uint8, tiers=tiers
                )
            )
            .lower(key, gamma)
            .compile()
        )

    sample_cases = []
    # The headline gamma, and one near the top of the sparse ladder (where dense takes over).
    for g in (gamma, jnp.float32(0.2)):
        for name, tiers in [
            ("sparse (default ladder)", None),
            ("dense `jax.random.bernoulli`", ()),
        ]:

            def compile_(tiers=tiers, g=g):
                compiled = sampler(tiers)()
                return lambda: compiled(key, g)

            label = f"gamma {float(g):.4f}: {name}"
            sample_cases.append(Case(("pieces",), label, "fwd", compile_, jax.block_until_ready))
    run_group(sample_cases, repeats, warmup)

    seeds = jax.jit(lambda k: sampling.bernoulli_seeds(k, gamma, seed_shape, dtype=jnp.uint8))(key)

    def shifted_or(s, axis, b, doubling):
        pad = [(0, 0)] * s.ndim
        pad[axis] = (b - 1, b - 1)
        w = jnp.pad(s, pad)
        if not doubling:
            length = s.shape[axis] + b - 1
            out = lax.slice_in_dim(w, 0, length, axis=axis)
            for j in range(1, b):
                out = out | lax.slice_in_dim(w, j, j + length, axis=axis)
            return out
        width = 1  # OR of windows of `width`, doubled: log2(b) steps instead of b - 1.
        while 2 * width <= b:
            length = w.shape[axis] - width
            w = lax.slice_in_dim(w, 0, length, axis=axis) | lax.slice_in_dim(
                w, width, width + length, axis=axis
            )
            width *= 2
        if width < b:
            length = w.shape[axis] - (b - width)
            w = lax.slice_in_dim(w, 0, length, axis=axis) | lax.slice_in_dim(
                w, b - width, b - width + length, axis=axis
            )
        return w

    def reduce_window(s, axis, b):
        # A seed at s drops [s, s + b): pad b - 1 zeros on both sides, VALID window of b.
        window = tuple(b if d == axis else 1 for d in range(s.ndim))
        padding = tuple((b - 1, b - 1) if d == axis else (0, 0) for d in range(s.ndim))
        zero = jnp.zeros((), s.dtype)
        return lax.reduce_window(s, zero, lax.max, window, (1,) * s.ndim, padding)

    strategies = {
        "`lax.reduce_window` max per axis": reduce_window,
        "shifted-slice ORs, b - 1 per axis (`jaxdrop` `dilate`)": dropblock_lib.dilate,
        "shifted-slice ORs, log2(b) doublings per axis": functools.partial(
            shifted_or, doubling=True
        ),
    }
    expand_cases = []
    reference = None
    for label, fn in strategies.items():
        for barrier in (False, True):
            for dtype in (jnp.uint8, jnp.bool_):

                def expand(s, fn=fn, barrier=barrier, dtype=dtype):
                    s = s.astype(dtype)
                    for i, axis in enumerate((1, 2)):
                        if i and barrier:
                            s = lax.optimization_barrier(s)
                        s = fn(s, axis, block)
                    return s != 0

                out = jax.jit(expand)(seeds)
                if reference is None:
                    reference = out
                assert bool(jnp.all(out == reference)), label

                def compile_(expand=expand):
                    compiled = jax.jit(expand).lower(seeds).compile()
                    return lambda: compiled(seeds)

                name = f"{label}, {jnp.dtype(dtype).name}" + (
                    ", barrier between axes" if barrier else ""
                )
                if "jaxdrop" in label and barrier and dtype == jnp.uint8:
                    name += " **(used)**"
                expand_cases.append(Case(("pieces",), name, "fwd", compile_, jax.block_until_ready))
    run_group(expand_cases, repeats, warmup)
    return sample_cases, expand_cases, n, float(gamma)


# ---------------------------------------------------------------------------------------------
# Report


def fmt(value, digits=2):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def machine_lines(args):
    import jax

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for name in (
        "jax",
        "jaxlib",
        "flax",
        "numpy",
        "torch",
        "timm",
        "dropblock",
        "keras",
        "keras_cv",
        "tensorflow",
    ):
        try:
            from importlib.metadata import version

            versions[name] = version({"keras_cv": "keras-cv"}.get(name, name))
        except Exception:  # noqa: BLE001
            pass
    if "tensorflow" not in versions:
        try:
            from importlib.metadata import version

            versions["tensorflow-cpu"] = version("tensorflow-cpu")
        except Exception:  # noqa: BLE001
            pass
    malloc = (
        "glibc defaults (`--default-malloc`): buffers over the mmap threshold (at most 32 MiB) are "
        "mapped afresh on every call and pay page faults"
        if args.default_malloc
        else "`"
        + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())
        + "`: one arena, no buffer served by mmap, and freed heap memory stays mapped, so no "
        "call pays page faults for its buffers (glibc would otherwise map every buffer over its "
        "mmap threshold, at most 32 MiB, afresh, and give XLA's threads their own arenas, capped "
        "at 64 MiB and shrunk on free: measured 18 000 faults a call at 16x56x56x256)"
    )
    try:
        import torch

        torch_threads = f", torch threads: {torch.get_num_threads()}"
    except ImportError:
        torch_threads = ""
    return [
        f"- Machine: {cpu}, {os.cpu_count()} cores visible, "
        f"{platform.system()} {platform.release()}",
        f"- Devices: `{jax.devices()}`{torch_threads}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- Allocator: {malloc}",
        f"- Load average at the start: {fmt(os.getloadavg()[0])} "
        "(the machine is shared: read the ratios)",
    ]


def write_report(args, cases, pieces, skipped, command, wall):
    by_key = {(c.group, c.name, c.mode): c for c in cases}
    lines = [
        "# DropBlock benchmark results",
        "",
        f"Written by `benchmarks/bench_dropblock.py` in {wall / 60:.1f} minutes. Command:",
        "",
        "```bash",
        command,
        "```",
        "",
        *machine_lines(args),
        f"- Steady state: {args.repeats} timed calls per implementation after {args.warmup} "
        "untimed "
        f"ones (fewer, at least 3, for a case slower than {CASE_BUDGET_S:g} s / {args.repeats} "
        "a call), implementations of one framework and array interleaved round-robin (JAX first, "
        "then PyTorch, then keras-cv, each in its own pass), every call ending in "
        "`block_until_ready()` "
        "(PyTorch runs synchronously). Compile time (`jit(...).lower(...).compile()` plus the "
        "first "
        "call) is reported apart. Forward+backward is `jax.vjp` and the pullback in one `jax.jit` "
        "(PyTorch: autograd `backward`).",
        f"- Drop rate: the fraction of exact zeros in the output (inputs are drawn in [1, 2)), "
        f"averaged over {args.rate_keys} keys; nominal is `1 - keep_prob`; for jaxdrop the "
        "expected "
        "rate of the paper's gamma is given too (it is below nominal: blocks overlap and border "
        "units are covered by fewer seeds; `calibrate=True` closes that gap).",
        "",
    ]
    if skipped:
        lines += ["Skipped peers:", ""] + [f"- {s}" for s in sorted(skipped)] + [""]

    targets = []
    groups = []
    for c in cases:
        key = (c.group[0], c.group[1])
        if key not in groups:
            groups.append(key)
    for shape, dtype in groups:
        group_cases = [c for c in cases if c.group[0] == shape and c.group[1] == dtype]
        floor = {
            m: by_key.get(((shape, dtype, None), "jitted `x * 2` (floor)", m))
            for m in ("fwd", "fwd+bwd")
        }
        flax_name = f"`flax.linen.Dropout(rate={1 - args.keep_prob:.2g})`"
        flax = {m: by_key.get(((shape, dtype, None), flax_name, m)) for m in ("fwd", "fwd+bwd")}
        torch_floor = {
            m: by_key.get(((shape, dtype, None), "torch `x * 2` (floor)", m))
            for m in ("fwd", "fwd+bwd")
        }
        lines += [
            f"## {'x'.join(map(str, shape))} {dtype}, keep_prob {args.keep_prob}",
            "",
            "| implementation | fwd median ms | fwd min ms | fwd × floor | fwd × flax "
            "| fwd+bwd median ms | fwd+bwd × floor | fwd+bwd × flax | compile s (fwd / fwd+bwd) "
            "| drop rate (nominal; expected) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        names = []
        for c in group_cases:
            if c.name not in names:
                names.append(c.name)
        for name in names:
            block = int(name.rsplit("block ", 1)[1]) if "block " in name else None
            fwd = by_key.get(((shape, dtype, block), name, "fwd"))
            bwd = by_key.get(((shape, dtype, block), name, "fwd+bwd"))
            is_torch = fwd is not None and fwd.framework == "torch"
            ref_floor = torch_floor if is_torch else floor

            def ratio(case, ref):
                if case is None or ref is None or not case.times or not ref.times:
                    return math.nan
                return median_ms(case) / median_ms(ref)

            floor_note = " (torch floor)" if is_torch else ""
            rate = "–"
            if fwd is not None and not math.isnan(fwd.rate):
                rate = f"{fwd.rate:.4f} ({fmt(fwd.nominal, 2)}"
                rate += f"; {fwd.expected:.4f})" if fwd.expected is not None else ")"
            error = f" — failed: {fwd.error}" if fwd is not None and fwd.error else ""
            lines.append(
                f"| {name}{error} | {fmt(median_ms(fwd) if fwd else math.nan, 3)} | "
                f"{fmt(min_ms(fwd) if fwd else math.nan, 3)} | "
                f"{fmt(ratio(fwd, ref_floor['fwd']))}{floor_note} | "
                f"{fmt(ratio(fwd, flax['fwd']))} | {fmt(median_ms(bwd) if bwd else math.nan, 3)} | "
                f"{fmt(ratio(bwd, ref_floor['fwd+bwd']))} | {fmt(ratio(bwd, flax['fwd+bwd']))} | "
                f"{fmt(fwd.compile_s if fwd else math.nan)} / "
                f"{fmt(bwd.compile_s if bwd else math.nan)} | {rate} |"
            )
            if name.startswith("jaxdrop") and flax["fwd"] is not None:
                for mode, case in (("fwd", fwd), ("fwd+bwd", bwd)):
                    if (
                        case is not None
                        and flax[mode] is not None
                        and case.times
                        and flax[mode].times
                    ):
                        targets.append(
                            (
                                "no_slower_than_flax",
                                shape,
                                dtype,
                                name,
                                mode,
                                ratio(case, flax[mode]),
                            )
                        )
        lines.append("")

    lines += target_lines(args, by_key, targets)
    if pieces is not None:
        sample_cases, expand_cases, n, gamma = pieces
        shape, dtype, block = HEADLINE
        lines += [
            "## Pieces of the mask at the headline shape",
            "",
            f"Seed grid {n:,} positions (`{'x'.join(map(str, shape))}`, block {block}), "
            f"gamma = {gamma:.5f} "
            f"(about {n * gamma:,.0f} seeds).",
            "",
            "| seed sampling | median ms | min ms | compile s |",
            "|---|---|---|---|",
        ]
        for c in sample_cases:
            lines.append(
                f"| {c.name} | {fmt(median_ms(c), 3)} | {fmt(min_ms(c), 3)} | {fmt(c.compile_s)} |"
            )
        lines += [
            "",
            "| block expansion (both spatial axes, to a bool mask) | median ms | min ms |",
            "|---|---|---|",
        ]
        for c in expand_cases:
            lines.append(f"| {c.name} | {fmt(median_ms(c), 3)} | {fmt(min_ms(c), 3)} |")
        lines.append("")
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}")


def target_lines(args, by_key, targets):
    shape, dtype, block = HEADLINE
    group = (shape, dtype, None)
    dgroup = (shape, dtype, block)
    flax_name = f"`flax.linen.Dropout(rate={1 - args.keep_prob:.2g})`"

    def get(g, name, mode):
        case = by_key.get((g, name, mode))
        return median_ms(case) if case is not None and case.times else math.nan

    floor_f, floor_b = (
        get(group, "jitted `x * 2` (floor)", "fwd"),
        get(group, "jitted `x * 2` (floor)", "fwd+bwd"),
    )
    flax_f = get(group, flax_name, "fwd")
    per_f = get(dgroup, f"jaxdrop per-channel, block {block}", "fwd")
    per_b = get(dgroup, f"jaxdrop per-channel, block {block}", "fwd+bwd")
    shared_f = get(dgroup, f"jaxdrop shared mask `broadcast_dims=(-1,)`, block {block}", "fwd")

    def check(ok, text):
        if isinstance(ok, float) and math.isnan(ok):
            return f"- [ ] {text}: not measured in this run"
        return f"- [{'x' if ok else ' '}] {text}"

    lines = [
        "## Targets (issue 3, section 5), checked on this run's medians",
        "",
        f"At `{'x'.join(map(str, shape))}`, block {block}, keep_prob {args.keep_prob}, {dtype}:",
        "",
    ]

    def r(a, b):
        return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan

    checks = [
        (r(per_f, floor_f), 3.0, "per-channel forward at most 3x the `x * 2` floor"),
        (r(per_f, flax_f), 0.15, "per-channel forward at most 0.15x `flax.linen.Dropout`"),
        (
            r(per_b, floor_b),
            3.0,
            "forward plus backward at most 3x the floor's forward plus backward",
        ),
        (r(shared_f, floor_f), 1.5, "one mask for all channels at most 1.5x the floor"),
    ]
    for value, bound, text in checks:
        ok = math.nan if math.isnan(value) else value <= bound
        lines.append(check(ok, f"{text}: measured {fmt(value)}x"))
    if targets:
        worst = max(targets, key=lambda t: t[-1])
        ok = worst[-1] <= 1.0
        lines.append(
            check(
                ok,
                f"no jaxdrop row in the tables slower than `flax.linen.Dropout` on the same array "
                f"(forward and forward+backward): slowest is {worst[3]} [{worst[4]}] at "
                f"{'x'.join(map(str, worst[1]))} {worst[2]}, {fmt(worst[-1])}x flax",
            )
        )
    else:
        lines.append(check(math.nan, "no shape slower than `flax.linen.Dropout`"))
    lines.append("")
    return lines


def main(argv=None):
    args = parse_args(argv)
    maybe_reexec(args)
    command = " ".join(["python", *(shlex.quote(a) for a in sys.argv)])
    start = time.perf_counter()
    import jax

    print(f"devices: {jax.devices()}", flush=True)
    cases, skipped = [], set()
    for shape in args.shapes:
        for dtype in args.dtypes:
            print(f"{'x'.join(map(str, shape))} {dtype}", flush=True)
            group = jax_cases(
                shape, dtype, args.blocks, args.keep_prob, args.rate_keys, not args.no_backward
            )
            run_group(group, args.repeats, args.warmup)
            cases += group
    pieces = None if args.no_pieces else piece_tables(args.repeats, args.warmup)
    if not args.no_peers:
        # PyTorch in its own pass, after all JAX timings: its OpenMP threads spin for a while
        # after each call and would steal the cores from a JAX call timed right after.
        for shape in args.shapes:
            for dtype in args.dtypes:
                group = torch_cases(
                    shape,
                    dtype,
                    args.blocks,
                    args.keep_prob,
                    args.rate_keys,
                    not args.no_backward,
                    skipped,
                )
                if group:
                    print(f"torch {'x'.join(map(str, shape))} {dtype}", flush=True)
                    run_group(group, args.repeats, args.warmup)
                    cases += group
        # Last, in its own pass: importing keras-cv imports TensorFlow, which must not sit in the
        # process while the others are timed. Its eager calls take hundreds of ms: few repeats.
        for shape in args.shapes:
            for dtype in args.dtypes:
                group = keras_cv_cases(
                    shape, dtype, args.blocks, args.keep_prob, args.rate_keys, skipped
                )
                if group:
                    print(f"keras-cv {'x'.join(map(str, shape))} {dtype}", flush=True)
                    run_group(group, args.repeats, args.warmup)
                    cases += group
    for reason in sorted(skipped):
        print(f"skipped: {reason}")
    write_report(args, cases, pieces, skipped, command, time.perf_counter() - start)


if __name__ == "__main__":
    main()
