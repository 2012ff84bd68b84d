"""The docs and the README say what the code does, and their code runs.

- Every public name has an API page: ``__all__`` of ``jaxdrop``, ``jaxdrop.linen``,
  ``jaxdrop.nnx`` and ``jaxdrop.equinox`` (read with ``ast`` from the sources of the jaxdrop that
  Python would import: the checkout, or the installed wheel in CI) must appear in the
  ``autosummary`` of ``docs/api/<module>.rst`` under ``.. currentmodule:: <module>``, and every
  entry there must be a public name (no stale pages). These parse the sources: no Sphinx build.
- Every ``python`` block of README.md and docs/guide/*.md runs; the drop-rate table of the
  DropBlock guide is the library's; the README's test command is CI's; no public docstring
  mentions ``jaxdrop._src``; every method is in the family tables.
"""

import ast
import importlib
import importlib.util
import inspect
import re
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxdrop

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


# --- The drop-rate table of docs/guide/dropblock.md is the library's ---------------------------


def drop_rate_script():
    path = GUIDE / "drop_rate_table.py"
    spec = importlib.util.spec_from_file_location("drop_rate_table", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.slow  # 72 eager calibrations: about 25 s on 2 shared cores
def test_drop_rate_table_is_the_librarys():
    # The page holds exactly what the script computes from the library's gamma now; after a
    # change to the gamma code, `python docs/guide/drop_rate_table.py --write` updates it.
    script = drop_rate_script()
    assert script.page_table(script.PAGE.read_text()) == script.markdown()


@pytest.mark.parametrize("calibrate", [False, True])
def test_sampled_masks_agree_with_the_drop_rate_table(calibrate):
    # One column of the page, measured: 28 x 28 maps, block 7, keep_prob 0.5, where the paper's
    # gamma is furthest from keep_prob. Maps are independent (each has its own seeds), so the
    # mean kept fraction over N maps has standard error std(per-map fractions) / sqrt(N); 5 of
    # them (a two-sided 6e-7 chance for a fixed key) bound the difference.
    script = drop_rate_script()
    rows = script.page_table(script.PAGE.read_text()).splitlines()
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    label = "any of the above, `calibrate=True`" if calibrate else "28 x 28, 7"
    (row,) = [r for r in rows if r.startswith(f"| {label} |")]
    expected = float(row.strip("|").split("|")[header.index("0.5")])
    x = jax.numpy.ones((2048, 28, 28, 1))
    y = jaxdrop.dropblock(jax.random.key(3), x, 0.5, 7, normalize="none", calibrate=calibrate)
    per_map = np.asarray(y != 0).mean(axis=(1, 2, 3))
    stderr = per_map.std() / np.sqrt(per_map.size)
    assert abs(per_map.mean() - expected) < 5 * stderr, (per_map.mean(), expected, stderr)


# --- The README's test command is CI's ---------------------------------------------------------


def test_readme_runs_the_tests_as_ci_does():
    ci = ROOT / ".ci" / "run"
    if not (ci.exists() and README.exists()):
        pytest.skip("needs .ci/run and README.md")
    lines = ci.read_text().splitlines()
    marker = lines.index("    # The README's test command:")
    command = lines[marker + 1].strip().removesuffix(' "$@"')
    assert command.startswith("python -m pytest ")
    readme = [
        line.split("&&")[-1].strip()
        for language, _, code in fenced_blocks(README)
        if language == "bash"
        for line in code.splitlines()
    ]
    assert command in readme, f"the README's test command is not .ci/run's `{command}`"


# --- Public docstrings teach the public API ------------------------------------------------------


def public_objects():
    import jaxdrop.equinox  # noqa: F401  (a submodule: jaxdrop does not import it)

    for module_name in present_modules():
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue
            yield f"{module_name}.{name}", obj
            for attribute, member in vars(obj).items() if inspect.isclass(obj) else ():
                if callable(member) and (attribute == "__call__" or not attribute.startswith("_")):
                    yield f"{module_name}.{name}.{attribute}", member


def test_no_public_docstring_uses_private_code():
    offenders = [name for name, obj in public_objects() if "_src" in (inspect.getdoc(obj) or "")]
    assert not offenders, f"these docstrings mention jaxdrop._src: {offenders}"


# --- The family is on the landing page and on the family page ----------------------------------


def family_functions() -> list[str]:
    """Public functions that take a key and drop something (not the key check or the figure)."""
    return [
        name
        for name in jaxdrop.__all__
        if inspect.isfunction(fn := getattr(jaxdrop, name))
        and list(inspect.signature(fn).parameters)[:1] == ["rng"]
        and name not in ("check_same_key", "plot_masks")
    ]


@pytest.mark.parametrize("page", [README, GUIDE / "family.md"], ids=lambda p: p.name)
def test_every_method_is_in_the_family_table(page):
    if not page.exists():
        pytest.skip(f"{page.name} is not here")
    rows = [line for line in page.read_text().splitlines() if line.startswith("| `")]
    for name in family_functions():
        assert any(row.startswith(f"| `{name}` / `") for row in rows), f"{page.name}: {name}"


def test_readme_links_resolve():
    # The README links into docs/ by relative paths (GitHub renders them); a moved page fails here.
    if not (ROOT / "CONTRIBUTING.md").exists():  # CI's copy of the tests holds no CONTRIBUTING.md
        pytest.skip("needs a full checkout")
    targets = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", README.read_text())
    assert targets, "the parser found no relative link"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
