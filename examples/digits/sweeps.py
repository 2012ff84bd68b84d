"""The configurations of `evaluate_regularizers.py`, and their training once per seed (cached).

Rows of different sections that are the same configuration share one set of trained models, and
configurations that differ only in keep_prob or schedule share one compiled train step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from digits.data import occlude, occluder_side
from digits.train import Config, accuracy, in_chunks, total_steps, train
from digits.trainers import LinenTrainer

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


def run_all(sections, data, args, out: Path, progress) -> dict[str, list[dict]]:
    """Trains every distinct configuration once per seed; returns per-seed records by identity.

    A record holds the clean test accuracy and the accuracy at each occluder size. Records are
    saved to ``runs.json`` as they finish, and those already there are reused.
    """
    cache_path = out / "runs.json"
    saved = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    cache, seconds = saved.get("runs", {}), saved.get("seconds", {})
    traces = saved.get("traces", {})
    # Runs trained with other settings must not be continued or mixed in; a runs.json without
    # settings is from before they were recorded (the default settings of `--grid paper`).
    settings = {k: getattr(args, k) for k in SETTINGS}
    if saved.get("settings", settings) != settings:
        raise ValueError(
            f"{cache_path} holds runs trained with {saved['settings']}, not {settings}: "
            "choose another `--out` or the same settings."
        )
    n_test, size = len(data.x_test), data.x_test.shape[1]
    occluded = [
        occlude(data.x_test, occluder_side(f, size), data.background, seed=1_000 + i)
        for i, f in enumerate(OCCLUSION)
    ]
    configs = {}
    for section in sections.values():
        for config in section.values():
            configs.setdefault(identity(config), config)
    trainers = {}
    for ident, config in configs.items():
        done = cache.get(ident, [])
        seeds = [s for s in range(args.seeds) if s >= len(done)]
        if not seeds:
            progress.update(args.steps * args.seeds)
            continue
        progress.update(args.steps * (args.seeds - len(seeds)))
        progress.set_description(config.name)
        static = static_part(config)
        if static not in trainers:
            trainers[static] = LinenTrainer(
                config, data, args, total_steps(data, args), dynamic=True
            )
        trainer = trainers[static]
        trainer.configure(config)
        records = list(done)
        tic = time.perf_counter()

        def evaluate(seed, trainer, state, records=records):
            logits = [in_chunks(lambda x: trainer.logits(state, x), x, n_test) for x in occluded]
            records.append(
                {
                    "seed": seed,
                    "test": accuracy(logits[0], data.y_test),
                    "occluded": [accuracy(lg, data.y_test) for lg in logits],
                }
            )

        runs, _, _ = train(
            config, data, args, seeds, progress, on_trained=evaluate, trainer=trainer
        )
        for record, run in zip(records[len(done) :], runs, strict=True):
            record["train"], record["loss"] = run.train_acc[-1], run.train_loss[-1]
        cache[ident] = records
        seconds[ident] = seconds.get(ident, 0.0) + time.perf_counter() - tic
        traces[static_label(static)] = trainer.traces
        saved = {"settings": settings, "runs": cache, "seconds": seconds, "traces": traces}
        cache_path.write_text(json.dumps(saved, indent=1))
    args.traces = traces
    args.train_seconds = sum(seconds.values())
    return cache
