"""The ViT of `examples/digits/vit.py`, `examples/evaluate_patch_dropout.py --quick` and the figures
of `examples/plot_vision_masks.py`."""

import importlib
import json
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("sklearn")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.image  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def examples(monkeypatch):
    # The scripts run with their own directory on the import path, as `python examples/x.py`.
    monkeypatch.syspath_prepend(str(EXAMPLES))


def tiny_vit(examples, keep_prob):
    from digits.vit import ViT

    return ViT(10, keep_prob=keep_prob, width=16, depth=1, heads=2)


@pytest.mark.slow  # four gradients of a ViT, each traced and run eagerly
def test_vit_drops_tokens_after_position_embeddings(examples):
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 1))
    params = tiny_vit(examples, None).init(jax.random.key(1), x, False)["params"]

    def grad_pos(keep_prob, train=True):
        def loss(params):
            model = tiny_vit(examples, keep_prob)
            return model.apply({"params": params}, x, train, rngs={"dropout": jax.random.key(2)})[
                0, 3
            ]

        return np.asarray(jax.grad(loss)(params)["pos_embed"][0])

    # One example at keep_prob 0.25: 16 of the 64 patch tokens reach the blocks, with their own
    # position embeddings; the 48 others get exactly no gradient. The CLS token always stays.
    g = grad_pos(0.25)
    live = np.any(g != 0, axis=-1)
    assert live[0] and live[1:].sum() == 16
    # Evaluation, and keep_prob 1.0 through patch_dropout, see every token: exactly the
    # unmodified model's gradient.
    full = grad_pos(None)
    assert np.all(np.any(full != 0, axis=-1))
    np.testing.assert_array_equal(grad_pos(1.0), full)
    np.testing.assert_array_equal(grad_pos(0.25, train=False), full)


def test_kept_tokens(examples):
    from digits.vit import kept_tokens

    # timm's max(1, int(L * keep_prob)), as jaxdrop.patch_dropout's output shape has it.
    assert [kept_tokens(64, k) for k in (1.0, 0.75, 0.5, 0.25, 0.01)] == [64, 48, 32, 16, 1]


@pytest.mark.slow
def test_patch_dropout_quick_run(tmp_path, examples):
    pytest.importorskip("tqdm")
    pytest.importorskip("scipy")
    evaluation = importlib.import_module("evaluate_patch_dropout")
    # Dtype promotion relaxed for optax's AdamW, as in test_example.py.
    with jax.numpy_dtype_promotion("standard"):
        out = evaluation.main(["--quick", "--out", str(tmp_path)])
    runs = out["runs"]
    assert sorted(runs) == ["0.5", "1.0"]
    for records in runs.values():
        assert sorted(r["seed"] for r in records) == [0, 1]
        for r in records:
            assert 0.0 <= r["test"] <= 1.0 and 0.0 <= r["train"] <= 1.0
            assert r["step_s"] > 0 and np.isfinite(r["loss"])
    assert json.loads((tmp_path / "runs.json").read_text())["runs"] == runs
    report = (tmp_path / "results.md").read_text()
    assert "| 1.0 | 64 of 64 |" in report and "| 0.5 | 32 of 64 |" in report
    assert "python examples/evaluate_patch_dropout.py --quick" in report
    assert "wall time:" in report and "jax " in report and "scipy " in report
    # Rerunning the command continues from runs.json: nothing is trained again (a new training
    # would time its steps anew).
    with jax.numpy_dtype_promotion("standard"):
        again = evaluation.main(["--quick", "--out", str(tmp_path)])
    assert again["runs"] == runs


@pytest.mark.slow  # 5 to 8 s in the quick loop on 2 idle cores: the full run only
def test_patch_dropout_figure(tmp_path, examples):
    figures = importlib.import_module("plot_vision_masks")
    path = tmp_path / "patch_dropout.png"
    figures.patch_dropout_figure(path, seed=0)
    png = matplotlib.image.imread(path)
    # 3 digits x (input + 3 keep_probs) panels of 160 px, plus 36 px of titles.
    assert png.shape[:2] == (3 * 160 + 36, 4 * 160)
    # The grey of dropped patches is there.
    assert np.any(np.all(np.abs(png[..., :3] - figures.DROPPED_GREY) < 0.01, axis=-1))


@pytest.mark.slow  # random_erasing compiled for four fills, eagerly
def test_random_erasing_figure(tmp_path, examples):
    figures = importlib.import_module("plot_vision_masks")
    path = tmp_path / "random_erasing.png"
    figures.random_erasing_figure(path, seed=0)
    png = matplotlib.image.imread(path)
    # 4 photographs x (input + 4 fills) panels of 160 px, plus 36 px of titles.
    assert png.shape[:2] == (4 * 160 + 36, 5 * 160)
    assert png.min() < 0.5 < png.max()
