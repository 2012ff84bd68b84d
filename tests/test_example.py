"""The README demo, `examples/train_digits.py --quick`, trains for real and writes sane outputs."""

import importlib.util
import sys
from pathlib import Path

import jax
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.image  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_digits.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_digits"] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run(tmp_path):
    # In-process: the suite's strict rank promotion applies and warnings are errors. Dtype
    # promotion is relaxed around the run only because optax's Adam is not strict-clean (its bias
    # correction raises a float to an int32 count power: TypePromotionError).
    example = load_example()
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


def test_quick_run_nnx(tmp_path):
    # The NNX twin, on the one configuration that exercises the schedule (kept short: the linen
    # run above covers the reports).
    example = load_example()
    argv = ["--quick", "--framework", "nnx", "--configs", "scheduled", "--out", str(tmp_path)]
    with jax.numpy_dtype_promotion("standard"):
        results = example.main(argv + ["--epochs", "2", "--evals", "1"])
    (runs,) = results.values()
    assert runs[0].test_acc[-1] > 0.5
    assert "'DropBlock, scheduled': 1}" in (tmp_path / "results.md").read_text()
