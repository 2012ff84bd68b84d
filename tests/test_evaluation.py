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
    assert "jax " in report and "scipy " in report and "wall time:" in report
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
