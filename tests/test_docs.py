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
from pathlib import Path

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
