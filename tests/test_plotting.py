"""plot_masks renders a PNG of the stated size, and explains what to install without matplotlib."""

import sys

import jax
import numpy as np
import pytest

import jaxdrop

matplotlib = pytest.importorskip("matplotlib")
# plot_masks never touches pyplot: its Figure renders PNGs with the Agg canvas whatever the
# backend. Select Agg anyway, as a headless CI machine needs.
matplotlib.use("Agg")
import matplotlib.image  # noqa: E402


@pytest.mark.slow
def test_image_layout_png_size(tmp_path):
    x = np.asarray(jax.random.uniform(jax.random.key(1), (24, 36, 3)) * 255).astype(np.uint8)
    path = tmp_path / "masks.png"
    fig = jaxdrop.plot_masks(jax.random.key(0), x, block_sizes=(3, 5), panel_px=40, path=path)
    png = matplotlib.image.imread(path)
    # (2 block sizes + 4) columns of round(40 * 36 / 24) = 60 px; 1 row of 40 px + 36 px titles.
    assert png.shape[:2] == (40 + 36, 6 * 60)
    assert png.dtype == np.float32 and png.min() < 0.5 < png.max()
    assert [round(v) for v in fig.get_size_inches() * fig.dpi] == [360, 76]
    assert len(fig.axes) == 6


@pytest.mark.slow
def test_feature_layout_png_size(tmp_path):
    x = jax.random.normal(jax.random.key(1), (16, 16, 8))
    path = tmp_path / "features.png"
    jaxdrop.plot_masks(jax.random.key(0), x, channels=(0, 5, -1), panel_px=50, path=path)
    png = matplotlib.image.imread(path)
    # Default 3 block sizes: 7 columns of 50 px; 3 channel rows of 50 px + 36 px of titles.
    assert png.shape[:2] == (3 * 50 + 36, 7 * 50)
    # Dropped units are painted pure red, which a normalised grey map never is.
    red = (png[..., 0] > 0.8) & (png[..., 1] < 0.2) & (png[..., 2] < 0.2)
    assert red.any()


@pytest.mark.slow
def test_grey_2d_input():
    fig = jaxdrop.plot_masks(jax.random.key(0), np.ones((12, 12), np.float32), block_sizes=(3,))
    assert (
        len(fig.axes) == 5
    )  # one channel row: input, dropout, SpatialDropout, 1 DropBlock, Cutout


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x": np.ones((2, 8, 8, 3))}, "`x`"),
        ({"keep_prob": 1.5}, "keep_prob"),
        ({"block_sizes": (3, 0)}, "block_sizes"),
        ({"cutout_size": -1}, "cutout_size"),
        ({"channels": (9,)}, "channels"),
    ],
)
def test_errors(kwargs, match):
    kwargs = {"x": np.ones((8, 8, 4), np.float32), **kwargs}
    with pytest.raises(ValueError, match=match):
        jaxdrop.plot_masks(jax.random.key(0), **kwargs)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"jaxdrop\[plot\]"):
        jaxdrop.plot_masks(jax.random.key(0), np.ones((8, 8, 3), np.float32))


def test_src_modules_never_import_the_public_package():
    # The module graph points one way: jaxdrop/__init__.py re-exports jaxdrop._src, and nothing
    # under _src (plot_masks included) imports jaxdrop, jaxdrop.linen or jaxdrop.nnx back.
    import ast
    import pathlib

    from jaxdrop._src import checks

    for path in pathlib.Path(checks.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name == "jaxdrop" or name.startswith("jaxdrop."):
                    assert name.startswith("jaxdrop._src"), (path.name, name)
