"""Every public name has an API page: parse the docs sources (no Sphinx build, so this is fast).

A name in ``__all__`` of ``jaxdrop``, ``jaxdrop.linen``, ``jaxdrop.nnx`` or ``jaxdrop.equinox``
must appear in the ``autosummary`` of ``docs/api/<module>.rst`` under ``.. currentmodule::
<module>``; every entry there must be a public name (no stale pages). ``__all__`` is read with
``ast`` from the sources of the jaxdrop that Python would import (the checkout, or the installed
wheel in CI), so this needs neither Equinox nor Sphinx installed.
"""

import ast
import importlib.util
import re
import sys
import types
from pathlib import Path

import jax
import pytest

API = Path(__file__).resolve().parent.parent / "docs" / "api"
MODULES = ("jaxdrop", "jaxdrop.linen", "jaxdrop.nnx", "jaxdrop.equinox")
# The folder that holds the jaxdrop package, found without importing it.
_SPEC = importlib.util.find_spec("jaxdrop")
assert _SPEC is not None and _SPEC.origin is not None
PACKAGE_PARENT = Path(_SPEC.origin).parent.parent

pytestmark = pytest.mark.skipif(not API.is_dir(), reason="needs docs/ next to tests/")


def module_source(module: str) -> Path:
    path = PACKAGE_PARENT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def public_names(module: str) -> set[str]:
    """``__all__`` of a module, read statically, less its submodules (they have their own pages)."""
    tree = ast.parse(module_source(module).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            names = set(ast.literal_eval(node.value))
            return {n for n in names if not module_source(f"{module}.{n}").exists()}
    raise AssertionError(f"{module_source(module)} has no literal `__all__`.")


def autosummary_entries(text: str) -> dict[str, set[str]]:
    """``{currentmodule: names}`` from the ``.. autosummary::`` blocks of one reST file."""
    entries: dict[str, set[str]] = {}
    module = None
    in_block = False
    for line in text.splitlines():
        if m := re.match(r"\.\. currentmodule:: (\S+)", line):
            module, in_block = m.group(1), False
        elif line.startswith(".. autosummary::"):
            in_block = True
        elif in_block and line.strip() and not line.startswith(" "):
            in_block = False
        elif in_block and (name := line.strip()) and not name.startswith(":"):
            assert module is not None, "an autosummary before any currentmodule"
            entries.setdefault(module, set()).add(name)
    return entries


def documented() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for page in sorted(API.glob("*.rst")):
        for module, names in autosummary_entries(page.read_text()).items():
            out.setdefault(module, set()).update(names)
    return out


def present_modules() -> list[str]:
    return [m for m in MODULES if module_source(m).exists()]


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_has_a_page(module):
    if not module_source(module).exists():
        pytest.skip(f"{module} is not in this checkout")
    missing = public_names(module) - documented().get(module, set())
    assert not missing, f"add {sorted(missing)} to an autosummary in docs/api/{module}.rst"


def test_no_page_for_a_name_that_is_not_public():
    for module, names in documented().items():
        assert module in MODULES, f"docs/api documents {module}, which is not a public module"
        if not module_source(module).exists():
            continue  # docs/conf.py leaves the page out of a checkout without the module
        stale = names - public_names(module)
        assert not stale, f"docs/api documents {sorted(stale)} of {module}, not in its __all__"


def test_each_module_has_its_page():
    for module in present_modules():
        assert (API / f"{module}.rst").exists(), f"docs/api/{module}.rst is missing"


def test_parser_sees_a_missing_name():
    # The checks above are only as good as the parser: an entry removed from a page must show.
    text = (API / "jaxdrop.rst").read_text()
    assert "dropblock" in autosummary_entries(text)["jaxdrop"]
    without = autosummary_entries(text.replace("   dropblock\n", ""))
    assert "dropblock" not in without["jaxdrop"]
    assert "dropout" in without["jaxdrop"]


# --- The code of the README and of the guides runs ---------------------------------------------
#
# `{doctest}` blocks of docs/ are run by Sphinx's doctest builder (.ci/run). Plain ```python blocks
# of README.md and docs/guide/*.md are run here, each page's blocks in order in one namespace (a
# block may use what an earlier block of its page defined), from an empty working directory. A
# block that cannot run here (several processes, a real cluster) starts with the ILLUSTRATIVE
# marker, which the reader sees too; there should be very few.

ROOT = API.parent.parent
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide"
ILLUSTRATIVE = "# Illustrative only (not run):"
# Every fenced block has one of these languages, so that Python code cannot hide from the run
# below under another tag (```py, ```python3, an untagged fence).
LANGUAGES = {"python", "bash", "bibtex", "{doctest}", "{figure}", "{toctree}", "{include}"}
FENCE = re.compile(
    r"^```(?P<language>\S*)[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL
)


def fenced_blocks(page: Path) -> list[tuple[str, int, str]]:
    """``(language, line of the opening fence, code)`` of every fenced block of a Markdown page."""
    text = page.read_text()
    return [
        (m["language"], text.count("\n", 0, m.start()) + 1, m["code"]) for m in FENCE.finditer(text)
    ]


def pages_with_code() -> list[Path]:
    pages = [README] if README.exists() else []
    return pages + (sorted(GUIDE.glob("*.md")) if GUIDE.is_dir() else [])


# Each page's blocks compile models: 20 to 40 s per page on 2 shared cores.
@pytest.mark.slow
@pytest.mark.parametrize("page", pages_with_code(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, tmp_path, monkeypatch):
    blocks = [(line, code) for language, line, code in fenced_blocks(page) if language == "python"]
    run = [(line, code) for line, code in blocks if not code.startswith(ILLUSTRATIVE)]
    # A page's blocks run as one module, registered so that dataclasses (Flax, Equinox) find it.
    module = types.ModuleType(f"docs_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.chdir(tmp_path)
    # Readers run this code with JAX's default promotion rules, not the suite's strict ones (under
    # which optax's Adam, for one, does not trace).
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        for line, code in run:
            name = f"{page.relative_to(ROOT)}, block at line {line}"
            exec(compile(code, name, "exec"), vars(module))


def test_blocks_have_known_languages():
    for page in [*pages_with_code(), *sorted((ROOT / "docs").glob("*.md"))]:
        for language, line, _ in fenced_blocks(page):
            assert language in LANGUAGES, f"{page.name}:{line}: a ```{language} block"


def test_few_blocks_are_illustrative():
    illustrative = [
        f"{page.name}:{line}"
        for page in pages_with_code()
        for language, line, code in fenced_blocks(page)
        if language == "python" and code.startswith(ILLUSTRATIVE)
    ]
    # Each needs several processes or a real cluster; raise this only with such a reason.
    assert len(illustrative) <= 2, illustrative
    assert not [
        page.name
        for page in pages_with_code()
        for language, _, code in fenced_blocks(page)
        if language == "python" and ILLUSTRATIVE in code and not code.startswith(ILLUSTRATIVE)
    ], "the marker goes on a block's first line"


def test_the_fence_parser_sees_every_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```python\na = 1\n```\n\n```{doctest}\n>>> 1\n1\n```\n```bash\nls\n```\n"
    )
    assert fenced_blocks(page) == [
        ("python", 2, "a = 1\n"),
        ("{doctest}", 6, ">>> 1\n1\n"),
        ("bash", 10, "ls\n"),
    ]
