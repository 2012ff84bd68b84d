"""The shared benchmark harness: timing, child processes, the machine header, Markdown tables.

Timing follows JAX's `docs/benchmarking.md`: compile apart from the steady state, every call
ending in `block_until_ready()`, medians over repeated calls. Implementations that are compared
with each other are timed round-robin, so that a burst of load on a shared machine hits all of
them alike.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
CASE_BUDGET_S = 4.0  # Timed seconds per case at most (but at least 3 calls).

# One arena (XLA's worker threads would otherwise get per-thread arenas, whose heaps are capped
# at 64 MiB and shrunk on free), no mmap, and no trimming: a steady state without page faults.
# Opt-in only: a user's training process runs with glibc's defaults.
TUNED_MALLOC = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**40),
}


@dataclass
class Case:
    """One implementation in one mode on one array: how to compile it and how to call it.

    ``compile`` does the tracing and compilation and returns a zero-argument steady-state call;
    ``sync`` blocks on that call's output.
    """

    group: tuple
    name: str
    mode: str  # "fwd" or "fwd+bwd"
    compile: Callable[[], Callable[[], object]]
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

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1e3 if self.times else math.nan

    @property
    def min_ms(self) -> float:
        return min(self.times) * 1e3 if self.times else math.nan


def short_error(error: BaseException) -> str:
    lines = str(error).splitlines() or [""]
    return f"{type(error).__name__}: {lines[0][:160]}"


def run_group(cases: Sequence[Case], repeats: int, warmup: int) -> None:
    """Compiles each case, then times them round-robin so that drift hits all of them alike.

    Compile time is ``compile()`` plus the first call, synchronised. A failing case is reported
    and skipped, so that an optional peer cannot stop the run.
    """
    live = []
    for case in cases:
        try:
            start = time.perf_counter()
            case.call = case.compile()
            case.sync(case.call())
            case.compile_s = time.perf_counter() - start
            for _ in range(warmup):
                case.sync(case.call())
            # Slow cases (hundreds of ms a call) get fewer timed calls: about CASE_BUDGET_S each.
            start = time.perf_counter()
            case.sync(case.call())
            one = time.perf_counter() - start
            case.repeats = max(3, min(repeats, int(CASE_BUDGET_S / max(one, 1e-9))))
            live.append(case)
        except Exception as error:  # noqa: BLE001 - reported in the table, not fatal.
            case.error = short_error(error)
            case.call = None
            print(f"  {case.name} [{case.mode}] failed: {case.error}", flush=True)
    for i in range(repeats):
        for case in live:
            if i >= case.repeats:
                continue
            start = time.perf_counter()
            case.sync(case.call())
            case.times.append(time.perf_counter() - start)
    for case in live:
        case.call = None  # Frees the outputs and the executables' arguments.
        if case.drop_rate is not None:
            case.rate = case.drop_rate()
        print(
            f"  {case.name[:60]:60s} {case.mode:8s} compile {case.compile_s:6.2f} s  "
            f"median {case.median_ms:8.3f} ms  min {case.min_ms:8.3f} ms",
            flush=True,
        )


def statistics_median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def shape_name(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


# ---------------------------------------------------------------------------------------------
# What the code under test offers


def dropblock_options() -> frozenset[str]:
    """The keyword options of ``jaxdrop.dropblock`` in the checked-out code."""
    import jaxdrop

    return frozenset(inspect.signature(jaxdrop.dropblock).parameters)


def has_min_keep_prob() -> bool:
    """Whether ``jaxdrop.dropblock`` takes ``min_keep_prob`` (a static seed budget)."""
    return "min_keep_prob" in dropblock_options()


def jaxdrop_root() -> str:
    """The directory the imported ``jaxdrop`` package lies in."""
    import jaxdrop

    return os.path.dirname(os.path.dirname(os.path.abspath(jaxdrop.__file__)))


def git_commit() -> str:
    """The commit of the imported ``jaxdrop``'s checkout, with ``+dirty`` when it has changes."""
    root = jaxdrop_root()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("+dirty" if dirty else "")


# ---------------------------------------------------------------------------------------------
# Child processes: a device count or an allocator is fixed when a process starts.


def run_child(script: str, config: dict, env: dict[str, str] | None = None) -> dict:
    """Runs ``python benchmarks/<script> '<json config>'`` and returns the JSON it prints last.

    The child inherits this process's environment plus ``env``. Its stderr is passed through, so
    its progress shows; a failure is returned as ``{"error": ...}``.
    """
    child_env = {**os.environ, **(env or {})}
    path = os.path.join(HERE, script)
    proc = subprocess.run(
        [sys.executable, path, json.dumps(config)],
        env=child_env,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"{script} exited with {proc.returncode}"}
    return json.loads(lines[-1])


def child_config() -> dict:
    """The JSON config a child was started with (``sys.argv[1]``)."""
    return json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}


def child_result(result: dict) -> None:
    """Prints a child's result as the last line of its stdout (progress goes to stderr)."""
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The machine and the versions


PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "numpy",
    "torch",
    "timm",
    "dropblock",
    "keras",
    "keras-cv",
    "tensorflow",
    "tensorflow-cpu",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def allocator_line(tuned_column: bool) -> str:
    present = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    settings = ", ".join(f"`{k}={v}`" for k, v in sorted(present.items()))
    line = (
        "the process as started, "
        + (f"with {settings} from the environment" if present else "glibc's defaults")
        + " (no re-exec, no tuning by the script)"
    )
    if tuned_column:
        tuned = " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items())
        line += (
            f"; the `tuned malloc` columns rerun the same cases in a child process with "
            f"`{tuned}` (one arena, no buffer served by mmap, freed memory stays mapped)"
        )
    return line


def machine_lines(commit: str, tuned_column: bool = False) -> list[str]:
    import jax

    cores = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    return [
        f"- Code: jaxdrop from `{jaxdrop_root()}`, commit `{commit}` (when the run started)",
        f"- Machine: {cpu_model()}, {usable} of {cores} cores usable, "
        f"{platform.system()} {platform.release()}",
        f"- Devices: `{jax.devices()}`",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- Allocator: {allocator_line(tuned_column)}",
        f"- Load average at the start: {fmt(os.getloadavg()[0])} "
        "(on a shared machine, read the ratios rather than the times)",
    ]
