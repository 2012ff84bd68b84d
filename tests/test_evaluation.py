"""`examples/evaluate_regularizers.py`: its statistics against known cases; its `--quick` run."""

import importlib
import json
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")
scipy_stats = pytest.importorskip("scipy.stats")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.image  # noqa: E402

# The whole file is slow: its quick run trains the example (CI runs them all).
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def digits(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("digits")


def test_t_interval_known_case(digits):
    from digits import stats

    x = [0.90, 0.92, 0.94, 0.91, 0.93]
    ci = stats.t_interval(x)
    # By hand: mean 0.92; sample std sqrt(0.001 / 4) = 0.0158114; standard error 0.0070711;
    # t(0.975, 4 degrees of freedom) = 2.7764451 (printed tables: 2.776); half-width 0.0196324.
    assert ci.n == 5
    assert ci.mean == pytest.approx(0.92, abs=1e-12)
    assert ci.half_width == pytest.approx(2.7764451 * np.sqrt(0.001 / 4) / np.sqrt(5), rel=1e-7)
    assert (ci.low, ci.high) == pytest.approx((0.9003676, 0.9396324), abs=1e-7)
    # And scipy's own one-sample t-test interval.
    ref = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    # A 99% interval is wider; identical values give a zero-width interval, not NaN.
    assert stats.t_interval(x, 0.99).half_width > ci.half_width
    flat = stats.t_interval([0.5, 0.5, 0.5])
    assert (flat.low, flat.mean, flat.high) == (0.5, 0.5, 0.5)


def test_paired_matches_paired_t_test(digits):
    from digits import stats

    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0.0, 0.05, 5)  # shared by both arms of a pair: pairing removes it
    for shift in (0.0, 0.002, 0.01, 0.03):
        a = 0.9 + seed_effect + rng.normal(0.0, 0.005, 5) + shift
        b = 0.9 + seed_effect + rng.normal(0.0, 0.005, 5)
        d = stats.paired(a, b)
        assert d.mean == pytest.approx(np.mean(a - b), abs=1e-12)
        # The interval excludes 0 exactly when the paired t-test rejects at 5%.
        assert d.excludes_zero() == (scipy_stats.ttest_rel(a, b).pvalue < 0.05), shift
    # The big shift is found; unpaired intervals would overlap because of the seed effect.
    assert d.excludes_zero()
    assert stats.t_interval(a).low < stats.t_interval(b).high


def test_statistics_reject_bad_input(digits):
    from digits import stats

    with pytest.raises(ValueError, match="`values`"):
        stats.t_interval([0.9])
    with pytest.raises(ValueError, match="`confidence`"):
        stats.t_interval([0.9, 0.8], confidence=95)
    with pytest.raises(ValueError, match="`a` and `b`"):
        stats.paired([0.9, 0.8], [0.9, 0.8, 0.7])


def test_occluder(digits):
    from digits.data import occlude, occluder_side

    assert [occluder_side(f, 16) for f in (0.0, 0.1, 0.25, 0.4)] == [0, 5, 8, 10]
    assert [occluder_side(f, 32) for f in (0.0, 0.1, 0.25, 0.4)] == [0, 10, 16, 20]
    images = np.ones((50, 16, 16, 1), np.float32)
    a = occlude(images, 5, -1.0, seed=3)
    # Exactly one whole 5 x 5 square per image, at positions that depend on the seed only.
    assert np.all(np.sum(a == -1.0, axis=(1, 2, 3)) == 25)
    np.testing.assert_array_equal(a, occlude(images, 5, -1.0, seed=3))
    assert not np.array_equal(a, occlude(images, 5, -1.0, seed=4))
    assert occlude(images, 0, -1.0, seed=3) is images


def test_quick_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    evaluation = importlib.import_module("evaluate_regularizers")
    sweeps = importlib.import_module("digits.sweeps")
    # Dtype promotion relaxed for optax's Adam, as in test_example.py.
    with jax.numpy_dtype_promotion("standard"):
        out = evaluation.main(["--quick", "--out", str(tmp_path)])
    sections, runs = out["sections"], out["runs"]
    assert list(sections) == ["main", "keep_prob", "block_size", "masks"]
    seeds = 2
    for section in sections.values():
        for config in section.values():
            records = runs[sweeps.identity(config)]
            assert sorted(r["seed"] for r in records) == list(range(seeds))
            for r in records:
                assert len(r["occluded"]) == len(sweeps.OCCLUSION)
                assert r["occluded"][0] == r["test"]  # no occluder: the clean test set
                assert all(0.0 <= v <= 1.0 for v in [r["test"], r["train"], *r["occluded"]])
    assert json.loads((tmp_path / "runs.json").read_text())["runs"] == runs

    report = (tmp_path / "results.md").read_text()
    for heading in ("## 1. Occlusion", "## 2. keep_prob", "## 3. block_size", "## 4. Per-channel"):
        assert heading in report
    for label in sections["main"]:
        assert f"| {label} |" in report
    assert "Paired difference against no regularisation" in report
    assert "Paired difference against dropout" in report
    assert "python examples/evaluate_regularizers.py --quick" in report
    assert "jax " in report and "scipy " in report
    assert "s of wall time training (one process); " in report
    # One compiled train step per kind of configuration, whatever its keep_prob and schedule.
    assert "'dropblock, block 3': 1," in report
    assert "| vs no regularisation |" in report
    for name, size in {
        "occlusion.png": (550, 900),
        "keep_prob.png": (450, 700),
        "block_size.png": (450, 700),
    }.items():
        png = matplotlib.image.imread(tmp_path / name)
        assert png.shape[:2] == size, name
        assert png.min() < png.max(), name

    # Rerunning the command continues from runs.json: nothing is trained again.
    with jax.numpy_dtype_promotion("standard"):
        again = evaluation.main(["--quick", "--out", str(tmp_path)])
    assert again["runs"] == runs
    saved = json.loads((tmp_path / "runs.json").read_text())
    assert saved["traces"]["dropblock, block 3"] == 1


def test_decisive_grid_defaults_and_overrides(digits, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    evaluation = importlib.import_module("evaluate_regularizers")
    args = evaluation.parse_args(["--grid", "decisive"])
    # Issue 20's setting unless told otherwise.
    assert (args.size, args.epochs, args.train_size, args.network) == (32, 25, 400, "both")
    assert args.jobs == 2
    args = evaluation.parse_args(["--grid", "decisive", "--size", "16", "--epochs", "3"])
    assert (args.size, args.epochs, args.network) == (16, 3, "both")
    args = evaluation.parse_args([])  # the stored run's settings
    assert (args.size, args.epochs, args.train_size, args.network) == (16, 20, 300, "resnet")
    assert args.jobs == 1
    for bad in (["--size", "24"], ["--jobs", "-1"]):
        with pytest.raises(SystemExit):
            evaluation.parse_args(bad)

    from digits.sweeps import decisive_grid

    main = decisive_grid(False, 32)["main"]
    blocks = sorted(c.block_size for c in main.values() if c.kind == "dropblock")
    assert blocks == [3, 3, 5, 5, 7, 7]
    assert {c.keep_prob for c in main.values() if c.kind != "none"} == {0.9}
    assert main["Cutout 16 x 16"].cutout == 16 and main["RandomErasing 0.25"].erasing == 0.25


def test_rows(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    evaluation = importlib.import_module("evaluate_regularizers")
    args = evaluation.parse_args(["--grid", "decisive", "--rows", "dropout", "Cutout 16 x 16"])
    sections, one, out = evaluation.study(args, "plain", tmp_path)
    # No regularisation stays, for the paired differences.
    assert list(sections["main"]) == ["no regularisation", "dropout", "Cutout 16 x 16"]
    assert one.network == "plain" and args.network == "both"
    for argv in (["--grid", "decisive", "--rows", "dropout 0.9"], ["--rows", "dropout"]):
        with pytest.raises(ValueError, match="--rows"):
            evaluation.study(evaluation.parse_args(argv), "plain", tmp_path)


def test_plain_network_maps(digits):
    from digits.model import LinenPlainNet

    net = LinenPlainNet(10, "dropblock", 7)
    x = jax.numpy.ones((2, 32, 32, 1))
    variables = net.init(jax.random.key(0), x, jax.numpy.ones(2), False)
    # No normalisation: parameters only.
    assert set(variables) == {"params"}
    seen = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and type(context.module).__name__ == "DropBlock":
            seen.append(args[0].shape[1:3])
        return next_fun(*args, **kwargs)

    import flax.linen as nn

    with nn.intercept_methods(record):
        out = net.apply(
            variables, x, jax.numpy.full(2, 0.9), True, rngs={"dropout": jax.random.key(1)}
        )
    assert out.shape == (2, 10)
    # The regulariser on the two convolutions of stage 2 (16 x 16) and of stage 3 (8 x 8).
    assert seen == [(16, 16), (16, 16), (8, 8), (8, 8)]


def test_identity_of_stored_runs_and_divergence(digits):
    from digits.sweeps import diverged, identity
    from digits.train import Config

    # Fields added later stay out of the identity at their default: docs/evaluation/runs.json
    # keeps its keys.
    assert identity(Config("no regularisation", "none")) == (
        '{"kind": "none", "scheduled": false, "calibrate": false, "keep_prob": null, '
        '"block_size": null, "broadcast_dims": [], "cutout": 0}'
    )
    assert '"erasing": 0.25' in identity(Config("RandomErasing", "none", erasing=0.25))
    assert not diverged({"train": 1.0, "loss": 0.2})
    assert not diverged({"train": 1.0})  # records from before the loss was kept
    assert diverged({"train": 1.0, "loss": float("nan")})
    assert diverged({"train": 0.1, "loss": 2.3})


def test_quick_decisive_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    evaluation = importlib.import_module("evaluate_regularizers")
    sweeps = importlib.import_module("digits.sweeps")
    # At 16 x 16 to keep CI short: the 32 x 32 maps are checked in test_plain_network_maps.
    argv = ["--quick", "--grid", "decisive", "--size", "16", "--train-size", "100"]
    with jax.numpy_dtype_promotion("standard"):
        out = evaluation.main([*argv, "--out", str(tmp_path)])
    assert list(out) == ["resnet", "plain"]
    for network, result in out.items():
        assert list(result["sections"]) == ["main"]
        main = result["sections"]["main"]
        assert "RandomErasing 0.25" in main and "no regularisation" in main
        report = (tmp_path / network / "results.md").read_text()
        assert "| divergent runs |" in report and " of 2 |" in report
        assert ("plain network" in report) == (network == "plain")
        assert "## 2. keep_prob" not in report
        assert (tmp_path / network / "occlusion.png").exists()
        assert "![paired differences](paired.png)" in report
        assert "s of wall time training (2 worker processes, both networks at once)" in report
        png = matplotlib.image.imread(tmp_path / network / "paired.png")
        assert png.min() < png.max()
        assert not (tmp_path / network / "keep_prob.png").exists()
        for config in main.values():
            assert len(result["runs"][sweeps.identity(config)]) == 2
    # The grid's default trains in 2 worker processes; the same configuration trained in this
    # process gives the same records, bit for bit.
    args = evaluation.parse_args(argv)
    _, plain, _ = evaluation.study(args, "plain", tmp_path / "plain")
    config = main["DropBlock, fixed, block 3"]
    with jax.numpy_dtype_promotion("standard"):
        here = sweeps.train_config(plain, config, [0, 1])
    assert here["records"] == out["plain"]["runs"][sweeps.identity(config)]
    # A runs.json trained with other settings is not continued.
    with pytest.raises(ValueError, match="--out"), jax.numpy_dtype_promotion("standard"):
        evaluation.main(
            [*argv, "--network", "plain", "--epochs", "2", "--out", str(tmp_path / "plain")]
        )


def test_documented_commands_match_the_stored_runs(monkeypatch):
    """Every evaluation command in docs/evaluation.md parses, and the runs.json it wrote holds
    runs trained with the settings it states (the result pages come from these commands)."""
    import shlex

    monkeypatch.syspath_prepend(str(EXAMPLES))
    evaluation = importlib.import_module("evaluate_regularizers")
    from digits.sweeps import SETTINGS

    root = EXAMPLES.parent
    page = (root / "docs" / "evaluation.md").read_text()
    prefix = "python examples/evaluate_regularizers.py"
    commands = [line for line in page.splitlines() if line.startswith(prefix)]
    assert len(commands) >= 4, commands
    for command in commands:
        args = evaluation.parse_args(shlex.split(command)[2:])
        networks = ("resnet", "plain") if args.network == "both" else (args.network,)
        for network in networks:
            out = root / args.out / (network if args.network == "both" else "")
            saved = json.loads((out / "runs.json").read_text())
            expected = {k: getattr(args, k) for k in SETTINGS} | {"network": network}
            assert saved["settings"] == expected, command
            assert f"- command: `{command}`" in (out / "results.md").read_text()
