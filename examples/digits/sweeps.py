"""The configurations of `evaluate_regularizers.py`, and their training once per seed (cached).

Rows of different sections that are the same configuration share one set of trained models, and
configurations that differ only in keep_prob or schedule share one compiled train step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path

from digits.data import load_data, occlude, occluder_side
from digits.train import Config, accuracy, in_chunks, total_steps, train

# The image fractions the occluder covers (its side is rounded to whole pixels).
OCCLUSION = (0.0, 0.10, 0.25, 0.40)
KEEP_PROBS = (0.95, 0.9, 0.8, 0.7)
BLOCK_SIZES = (1, 3, 5, 7)
# What runs.json must share with a run to continue it.
SETTINGS = ("size", "network", "epochs", "train_size", "batch_size", "lr")
# The model: groups 3 and 4 (the regularised ones) on 8 x 8 maps of a 16 x 16 input.
WIDTHS = (16, 32, 32, 32)
STRIDES = (1, 2, 1, 1)


def dropout(kp: float, scheduled: bool) -> Config:
    return Config(
        f"dropout {kp}{', scheduled' if scheduled else ''}", "dropout", scheduled, False, kp
    )


def dropblock(kp: float, scheduled: bool, block_size: int = 3, **kw) -> Config:
    name = f"DropBlock {kp}{', scheduled' if scheduled else ''}, block {block_size}"
    return Config(name, "dropblock", scheduled, keep_prob=kp, block_size=block_size, **kw)


def baselines() -> dict[str, Config]:
    """No regularisation, dropout and SpatialDropout at keep_prob 0.9."""
    return {
        "no regularisation": Config("none", "none"),
        "dropout": dropout(0.9, False),
        "SpatialDropout": Config("SpatialDropout 0.9", "spatial_dropout", keep_prob=0.9),
    }


def augmentations(size: int) -> dict[str, Config]:
    """Cutout (a patch of half the image's side, a quarter of its area) and RandomErasing."""
    cut = size // 2
    return {
        f"Cutout {cut} x {cut}": Config(f"Cutout {cut}", "none", cutout=cut),
        "RandomErasing 0.25": Config("RandomErasing 0.25", "none", erasing=0.25),
    }


def decisive_grid(quick: bool, size: int) -> dict[str, dict[str, Config]]:
    """Issue 20's grid: the occlusion section only, DropBlock with blocks 3, 5 and 7, fixed and
    scheduled, against the baselines and the input augmentations."""
    blocks = (3,) if quick else (3, 5, 7)
    main = baselines()
    for scheduled in (False, True):
        for b in blocks:
            tag = "scheduled" if scheduled else "fixed"
            main[f"DropBlock, {tag}, block {b}"] = dropblock(0.9, scheduled, b)
    main |= augmentations(size)
    if quick:
        keep = ("no regularisation", "DropBlock, fixed, block 3", "RandomErasing 0.25")
        main = {k: main[k] for k in keep}
    return {"main": main}


def grid(quick: bool, size: int = 16) -> dict[str, dict[str, Config]]:
    """The configurations of each section, by their row label."""
    kp, cut = 0.9, size // 2
    main = baselines() | {
        "DropBlock, fixed": dropblock(kp, False),
        "DropBlock, scheduled": dropblock(kp, True),
        "DropBlock, scheduled, calibrate=True": dropblock(kp, True, calibrate=True),
        **augmentations(size),
        "DropBlock, scheduled + Cutout": dropblock(kp, True, cutout=cut),
    }
    kps, sizes = ((0.9, 0.7), (1, 3)) if quick else (KEEP_PROBS, BLOCK_SIZES)
    if quick:
        keep = ("no regularisation", "dropout", "DropBlock, fixed", "DropBlock, scheduled")
        keep += ("RandomErasing 0.25",)
        main = {k: main[k] for k in keep}
    sweep = {}
    for p in kps:
        for scheduled in (False, True):
            tag = ", scheduled" if scheduled else ""
            sweep[f"dropout {p}{tag}"] = dropout(p, scheduled)
            sweep[f"DropBlock {p}{tag}"] = dropblock(p, scheduled)
    blocks = {f"block_size {b}": dropblock(kp, True, b) for b in sizes}
    masks = {
        "per-channel mask": dropblock(kp, True),
        "shared across channels": dropblock(kp, True, broadcast_dims=(-1,)),
    }
    return {"main": main, "keep_prob": sweep, "block_size": blocks, "masks": masks}


# Fields added to `Config` after runs were stored: left out of the identity at their default,
# so that the stored runs keep their identity (and their cache entry).
LATER_FIELDS = {"erasing": 0.0}


GRIDS = {"paper": grid, "decisive": decisive_grid}


def diverged(record: dict) -> bool:
    """A run whose mean training loss is not finite or whose final train accuracy is below 20%,
    twice chance (every run that trains reaches about 100% here): it did not learn. Its
    accuracies stay in the means and the paired differences, and the tables count such runs."""
    return not math.isfinite(record.get("loss", 0.0)) or record["train"] < 0.2


def identity(config: Config) -> str:
    """A config's identity without its label: rows of different sections that are the same
    configuration share one set of trained models."""
    fields = dataclasses.asdict(config)
    del fields["name"]
    for k, default in LATER_FIELDS.items():
        if fields[k] == default:
            del fields[k]
    return json.dumps(fields)


def static_part(config: Config) -> Config:
    """What the compiled train step depends on (the keep_prob and the schedule are traced)."""
    return dataclasses.replace(config, name="", keep_prob=None, scheduled=False)


def static_label(static: Config) -> str:
    parts = [static.kind]
    if static.kind == "dropblock":
        parts.append(f"block {static.block_size}")
    if static.calibrate:
        parts.append("calibrate")
    if static.broadcast_dims:
        parts.append(f"broadcast_dims {static.broadcast_dims}")
    if static.cutout:
        parts.append(f"Cutout {static.cutout}")
    if static.erasing:
        parts.append(f"RandomErasing {static.erasing}")
    return ", ".join(parts)


def load_runs(out: Path, args) -> dict:
    """``out/runs.json`` (empty without one), refusing runs trained with other settings."""
    cache_path = out / "runs.json"
    saved = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    # Runs trained with other settings must not be continued or mixed in; a runs.json without
    # settings is from before they were recorded (the default settings of `--grid paper`).
    settings = {k: getattr(args, k) for k in SETTINGS}
    if saved.get("settings", settings) != settings:
        raise ValueError(
            f"{cache_path} holds runs trained with {saved['settings']}, not {settings}: "
            "choose another `--out` or the same settings."
        )
    return {"settings": settings, "runs": {}, "seconds": {}, "traces": {}} | saved


def missing(sections, args, saved: dict) -> list[tuple[Config, list[int]]]:
    """Every distinct configuration with the seeds ``saved`` lacks."""
    configs = {}
    for section in sections.values():
        for config in section.values():
            configs.setdefault(identity(config), config)
    todo = []
    for ident, config in configs.items():
        seeds = list(range(len(saved["runs"].get(ident, [])), args.seeds))
        if seeds:
            todo.append((config, seeds))
    return todo


# The trainers of this process by network settings and static part: configurations that differ
# only in keep_prob or schedule share one compiled step.
_TRAINERS: dict = {}


@functools.cache
def cached_data(train_size: int, size: int):
    """The bundled digits at ``size`` x ``size``, split and standardised; once per process."""
    return load_data(None, train_size, size)


def train_config(args, config: Config, seeds: list[int], progress=None) -> dict:
    """Trains ``config`` once per seed and tests each model on the occluded test sets.

    A top-level function of picklable arguments: `run_all` calls it in this process or in a
    worker process. Returns the per-seed records (clean test accuracy, accuracy at each
    occluder, final train accuracy and loss), the seconds it took and the compilations it made.
    """
    from digits.trainers import LinenTrainer

    data = cached_data(args.train_size, args.size)
    tic = time.perf_counter()
    static = static_part(config)
    where = (*(getattr(args, k) for k in SETTINGS), static)
    if where not in _TRAINERS:
        _TRAINERS[where] = LinenTrainer(config, data, args, total_steps(data, args), dynamic=True)
    trainer = _TRAINERS[where]
    traces = trainer.traces
    trainer.configure(config)
    n_test, size = len(data.x_test), data.x_test.shape[1]
    occluded = [
        occlude(data.x_test, occluder_side(f, size), data.background, seed=1_000 + i)
        for i, f in enumerate(OCCLUSION)
    ]
    records = []

    def evaluate(seed, trainer, state):
        logits = [in_chunks(lambda x: trainer.logits(state, x), x, n_test) for x in occluded]
        records.append(
            {
                "seed": seed,
                "test": accuracy(logits[0], data.y_test),
                "occluded": [accuracy(lg, data.y_test) for lg in logits],
            }
        )

    runs, _, _ = train(
        config, data, args, seeds, progress or _Silent(), on_trained=evaluate, trainer=trainer
    )
    for record, run in zip(records, runs, strict=True):
        record["train"], record["loss"] = run.train_acc[-1], run.train_loss[-1]
    return {
        "records": records,
        "seconds": time.perf_counter() - tic,
        "traces": trainer.traces - traces,
    }


class _Silent:
    """The progress bar of a worker process: none (the parent counts finished configurations)."""

    def update(self, n: int = 1) -> None:
        pass


def run_all(studies, jobs: int = 1) -> list[dict[str, list[dict]]]:
    """Trains every distinct configuration of every study once per seed; returns, per study,
    its per-seed records by identity.

    ``studies``: ``(sections, args, out)`` triples (one per network), each cached in
    ``out/runs.json``: records are saved as each configuration finishes, and those already
    there are reused. With ``jobs > 1`` the configurations of all studies train in that many
    worker processes, the costliest first; a configuration's seeds stay in one process, so that
    one compilation serves them all. A record does not depend on the process that trained it.
    """
    from tqdm import tqdm

    saved = [load_runs(out, args) for _, args, out in studies]
    todo = [
        (i, config, seeds)
        for i, (sections, args, _) in enumerate(studies)
        for config, seeds in missing(sections, args, saved[i])
    ]

    def steps(i, seeds):
        return studies[i][1].steps * len(seeds)

    def record(i, config, result):
        out, s = studies[i][2], saved[i]
        ident, label = identity(config), static_label(static_part(config))
        s["runs"][ident] = s["runs"].get(ident, []) + result["records"]
        s["seconds"][ident] = s["seconds"].get(ident, 0.0) + result["seconds"]
        s["traces"][label] = s["traces"].get(label, 0) + result["traces"]
        (out / "runs.json").write_text(json.dumps(s, indent=1))

    tic = time.perf_counter()
    with tqdm(total=sum(steps(i, s) for i, _, s in todo), unit="step", file=sys.stderr) as bar:
        if jobs == 1:
            for i, config, seeds in todo:
                bar.set_description(config.name)
                record(i, config, train_config(studies[i][1], config, seeds, bar))
        else:
            # The costliest first, so that the last to finish are short.
            todo.sort(key=lambda t: -steps(t[0], t[2]) * COST[studies[t[0]][1].network])
            for (i, config, seeds), result in in_processes(jobs, studies, todo):
                record(i, config, result)
                bar.set_description(config.name)
                bar.update(steps(i, seeds))
    for i, ((_, args, out), s) in enumerate(zip(studies, saved, strict=True)):
        if any(j == i for j, _, _ in todo):
            # The wall time of the invocations that trained (with ``--network both``, the
            # networks' shared time is counted in each).
            s["wall"] = s.get("wall", 0.0) + time.perf_counter() - tic
            (out / "runs.json").write_text(json.dumps(s, indent=1))
        args.traces, args.train_seconds = s["traces"], sum(s["seconds"].values())
        args.wall_seconds = s.get("wall")
    return [s["runs"] for s in saved]


# A train step's relative cost at 32 x 32 (measured: the ResNet's about twice the plain
# network's), to start the costliest configurations first.
COST = {"resnet": 2, "plain": 1}


def in_processes(jobs: int, studies, todo):
    """`train_config` of each ``(study, config, seeds)`` in ``todo`` on ``jobs`` worker
    processes; yields each task with its result as it finishes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # "spawn": a forked child of a process that has started JAX's threads may deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {pool.submit(train_config, studies[t[0]][1], *t[1:]): t for t in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()
