"""DropBlock against dropout and the `x * 2` floor: the entry point of the benchmarks.

Runs the parts selected with `--parts` in one process (device counts and the opt-in tuned
allocator in child processes, since both are fixed when a process starts), checks the targets
against the ratios of this run, and writes a Markdown report (`benchmarks/RESULTS.md` by
default). The process runs as a user's would: glibc's default allocator, no environment tuning.

    python benchmarks/bench_dropblock.py            # everything
    python benchmarks/bench_dropblock.py --quick    # a small version of every part
    python benchmarks/bench_dropblock.py --parts vmap,compile

Parts (one file each): `matrix.py` (shapes x dtypes x blocks, forward and forward+backward),
`vmapped.py` (vmap over per-example keys), `compile_time.py` with `resnet.py` (trace and compile
time of a ResNet-50 train step), `devices.py` (global jit on simulated CPU devices), `pieces.py`
(seed sampling and block expansion alone), `peers.py` (PyTorch and keras-cv, when installed).
`harness.py` times and describes the machine; `report.py` writes the report: the targets of
`targets.py` (each checked on the run's ratios), then the tables of `sections.py`; `measurements.py`
holds what the run measured.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import harness

PARTS = ("matrix", "vmap", "compile", "devices", "pieces", "peers")
SHAPES = "16x56x56x256,16x28x28x512,16x14x14x1024,16x7x7x2048"
# --quick: the two default-allocator headline shapes, each with its own block.
QUICK_MATRIX = {(16, 28, 28, 512): [7], (16, 56, 56, 256): [3]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, from {', '.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes to check the script: the two headline shapes in float32, 5 repeats, a "
        "ResNet with stages [1, 1, 1, 1] compiled once at 64 and 32 px, 1 and 2 devices",
    )
    parser.add_argument("--shapes", default=SHAPES, help="matrix: comma-separated NHWC shapes")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="matrix: dtypes")
    parser.add_argument("--blocks", default="7,3", help="matrix: block sizes, for every shape")
    parser.add_argument("--keep-prob", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per implementation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
    parser.add_argument("--rate-keys", type=int, default=4, help="keys averaged for drop rates")
    parser.add_argument("--no-backward", action="store_true", help="matrix: forward only")
    parser.add_argument(
        "--compile-repeats", type=int, default=3, help="compile: measurements per variant"
    )
    parser.add_argument(
        "--compile-images",
        default=None,
        help="compile: comma-separated input sizes in px; the first is bounded by the target, the "
        "others are reported with no bound (default: 112,32; with --quick: 64,32)",
    )
    parser.add_argument("--device-counts", default="1,2,4,8", help="devices: simulated counts")
    parser.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="matrix: add columns timed again in a child process with "
        + " ".join(f"{k}={v}" for k, v in harness.TUNED_MALLOC.items()),
    )
    parser.add_argument("--out", default=os.path.join(harness.HERE, "RESULTS.md"))
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",") if s]
    blocks = [int(b) for b in args.blocks.split(",") if b]
    args.blocks_for = {shape: blocks for shape in shapes}
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.device_counts = [int(n) for n in args.device_counts.split(",") if n]
    images = args.compile_images
    if images is None:
        import compile_time

        images = ",".join(
            str(i) for i in (compile_time.QUICK_IMAGES if args.quick else compile_time.IMAGES)
        )
    args.compile_images = [int(i) for i in images.split(",") if i]
    if args.quick:
        args.blocks_for = dict(QUICK_MATRIX)
        args.dtypes = ["float32"]
        args.repeats = 5
        args.compile_repeats = 1
        args.device_counts = [1, 2]
    args.shapes = list(args.blocks_for)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    command = " ".join(["python", *(shlex.quote(a) for a in sys.argv)])
    start = time.perf_counter()
    import jax
    import measurements
    import report

    print(f"devices: {jax.devices()}", flush=True)
    results = measurements.Results(
        command,
        harness.git_commit(),
        args.keep_prob,
        args.repeats,
        args.warmup,
        args.rate_keys,
        quick=args.quick,
    )
    backward = not args.no_backward
    if "matrix" in args.parts:
        import matrix

        results.matrix = matrix.run(
            args.shapes,
            args.dtypes,
            args.blocks_for,
            args.keep_prob,
            args.repeats,
            args.warmup,
            rate_keys=args.rate_keys,
            backward=backward,
        )
    if "vmap" in args.parts:
        import vmapped

        results.vmap = vmapped.run(args.keep_prob, args.repeats, args.warmup)
    if "pieces" in args.parts:
        import pieces

        results.pieces = pieces.run(args.keep_prob, args.repeats, args.warmup)
    if "compile" in args.parts:
        import compile_time

        results.compile = [
            compile_time.run(args.keep_prob, args.compile_repeats, args.quick, image=image)
            for image in args.compile_images
        ]
    if "devices" in args.parts:
        import devices

        results.devices = devices.run(args.device_counts, args.keep_prob, args.repeats, args.warmup)
    if "matrix" in args.parts and args.tuned_malloc:
        print("matrix again, tuned allocator (child process)", flush=True)
        config = {
            "shapes": args.shapes,
            "blocks_for": [[list(s), b] for s, b in args.blocks_for.items()],
            "dtypes": args.dtypes,
            "keep_prob": args.keep_prob,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "backward": backward,
        }
        results.tuned = harness.run_child("matrix.py", config, harness.TUNED_MALLOC)
    if "peers" in args.parts:
        import peers

        results.peers, results.skipped = peers.run(
            args.shapes,
            args.dtypes,
            args.blocks_for,
            args.keep_prob,
            args.repeats,
            args.warmup,
            args.rate_keys,
            backward,
        )
    results.wall_s = time.perf_counter() - start
    targets = report.write(results, args.out, args.tuned_malloc)
    print("\nTargets:")
    for target in targets:
        print("  " + target.line())


if __name__ == "__main__":
    main()
