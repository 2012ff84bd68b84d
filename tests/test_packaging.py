"""The package as users get it: one version, and a wheel with the package, py.typed, no more.

CI (``.ci/run``) builds the sdist and the wheel once and passes their folder in
``JAXDROP_DIST``; without it the wheel is built here from the source tree (slow: an isolated
build). The sdist is the reference for what the package holds: every module of ``jaxdrop/`` in it
must be in the wheel, so a file left out of the package fails here, not on a user's machine.
"""

import importlib.metadata
import importlib.resources
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import jaxdrop

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


def test_version_is_single_sourced():
    if not PYPROJECT.exists():
        pytest.skip("needs pyproject.toml next to tests/")
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert jaxdrop.__version__ == declared == importlib.metadata.version("jaxdrop")


def test_installed_package_is_typed():
    assert importlib.resources.files("jaxdrop").joinpath("py.typed").is_file()


@pytest.fixture(scope="module")
def dist() -> Path:
    if folder := os.environ.get("JAXDROP_DIST"):
        return Path(folder)
    if not (PYPROJECT.exists() and (ROOT / "jaxdrop").is_dir()):
        pytest.skip("needs JAXDROP_DIST or the source tree")
    pytest.importorskip("build")
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"jaxdrop-dist-{os.getpid()}"
    command = [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)]
    subprocess.run(command, check=True, capture_output=True)
    return out


def only(paths: list[Path], what: str) -> Path:
    assert len(paths) == 1, f"expected one {what}, found {[p.name for p in paths]}"
    return paths[0]


@pytest.mark.slow
def test_wheel_holds_the_package_and_nothing_else(dist):
    wheel = only(sorted(dist.glob("jaxdrop-*.whl")), "wheel")
    sdist = only(sorted(dist.glob("jaxdrop-*.tar.gz")), "sdist")
    assert wheel.name.startswith(f"jaxdrop-{jaxdrop.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        files = set(z.namelist())
        metadata = z.read(f"jaxdrop-{jaxdrop.__version__}.dist-info/METADATA").decode()
    assert "Classifier: Typing :: Typed" in metadata.splitlines()
    package = {f for f in files if not f.startswith("jaxdrop-")}  # less the .dist-info
    assert "jaxdrop/py.typed" in package
    assert {"jaxdrop/__init__.py", "jaxdrop/linen.py", "jaxdrop/nnx.py"} <= package
    outside = sorted(f for f in package if not f.startswith("jaxdrop/"))
    assert not outside, f"the wheel holds files outside the package: {outside}"
    # Every module of the source package (as the sdist carries it) made it into the wheel.
    with tarfile.open(sdist) as t:
        top = f"jaxdrop-{jaxdrop.__version__}/"
        sources = {
            name.removeprefix(top)
            for name in t.getnames()
            if name.startswith(top + "jaxdrop/") and name.endswith((".py", "py.typed"))
        }
    assert sources, "the sdist holds no jaxdrop/ sources"
    assert sources <= package, f"missing from the wheel: {sorted(sources - package)}"
