"""The README demo, `examples/train_digits.py --quick`, trains for real and writes sane outputs;
an interrupted and resumed run ends exactly where the uninterrupted one does."""

import importlib
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.image  # noqa: E402

# Every test here trains the example: slow (CI runs them all).
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def example(monkeypatch):
    # The script runs with its own directory on the import path (where `digits` lives), as
    # `python examples/train_digits.py` does.
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("train_digits")


def test_quick_run(tmp_path, example):
    # In-process: the suite's strict rank promotion applies and warnings are errors. Dtype
    # promotion is relaxed around the run only because optax's Adam is not strict-clean (its bias
    # correction raises a float to an int32 count power: TypePromotionError).
    with jax.numpy_dtype_promotion("standard"):
        results = example.main(["--quick", "--out", str(tmp_path)])

    assert list(results) == [c.name for c in example.CONFIGS.values()]
    for name, runs in results.items():
        # 10 classes: chance is 0.1. A few epochs on 300 digits already give about 0.9.
        assert runs[0].test_acc[-1] > 0.5, name
        assert 0.0 <= runs[0].train_acc[-1] <= 1.0

    report = (tmp_path / "results.md").read_text()
    assert "| configuration | test accuracy | train accuracy | train - test gap |" in report
    for name in results:
        assert f"| {name} |" in report
    assert "python examples/train_digits.py --quick" in report
    assert "jax " in report and "machine:" in report
    # One compiled train step per configuration, whatever the schedule's value.
    assert "traces per configuration (1 = no retrace when keep_prob changes): {" in report
    assert report.count(": 1,") + report.count(": 1}") == len(results)

    sizes = {
        # 11 x 4 inches at 100 dpi.
        "curves.png": (400, 1100),
        # The photo at a quarter resolution (107 x 160): panels 160 high and 239 wide; 7 columns.
        "masks.png": (160 + 36, 7 * 239),
        # 6 channels of the 8 x 8 group-3 maps; input, dropout, SpatialDropout, DropBlock 3 and 5,
        # Cutout.
        "feature_masks.png": (6 * 160 + 36, 6 * 160),
    }
    for name, size in sizes.items():
        png = matplotlib.image.imread(tmp_path / name)
        assert png.shape[:2] == size, name
        assert png.min() < png.max(), name  # not blank


def test_quick_run_nnx(tmp_path, example):
    # The NNX twin, on the one configuration that exercises the schedule (kept short: the linen
    # run above covers the reports).
    argv = ["--quick", "--framework", "nnx", "--configs", "scheduled", "--out", str(tmp_path)]
    with jax.numpy_dtype_promotion("standard"):
        results = example.main(argv + ["--epochs", "2", "--evals", "1"])
    (runs,) = results.values()
    assert runs[0].test_acc[-1] > 0.5
    assert "'DropBlock, scheduled': 1}" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("framework", ["linen", "nnx"])
def test_resume_equals_straight(tmp_path, example, framework):
    # 2 epochs straight, with a checkpoint after each; then the same run interrupted after epoch 1
    # (its epoch-2 checkpoint deleted) and resumed. The schedule makes every step's keep_prob
    # differ, so a resumed run that repeated or skipped a mask, a batch or a schedule step would
    # end with different parameters.
    argv = ["--quick", "--framework", framework, "--configs", "scheduled", "--train-size", "100"]
    argv += ["--epochs", "2", "--evals", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    with jax.numpy_dtype_promotion("standard"):
        a = example.main(argv + ["--out", str(tmp_path), "--checkpoint-dir", str(straight)])
    seed_dir = Path("scheduled") / "seed0"
    shutil.copytree(straight / seed_dir / "1", resumed / seed_dir / "1")
    with jax.numpy_dtype_promotion("standard"):
        b = example.main(
            argv + ["--out", str(tmp_path), "--checkpoint-dir", str(resumed), "--resume"]
        )
    assert a == b  # the curves: accuracies and losses at both epochs

    import orbax.checkpoint as ocp

    def leaves(root):
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore((root / seed_dir / "2" / "state").resolve())

    final_a, final_b = leaves(straight), leaves(resumed)
    assert len(final_a) == len(final_b) > 10
    for x, y in zip(final_a, final_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_needs_checkpoint_dir(example):
    with pytest.raises(SystemExit):
        example.parse_args(["--resume"])
