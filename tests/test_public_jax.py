"""jaxdrop uses public JAX only: no module imports JAX internals (checked on the source)."""

from __future__ import annotations

import ast
import pathlib

import jaxdrop

PACKAGE = pathlib.Path(jaxdrop.__file__).parent
PRIVATE = ("jax._src", "jax.interpreters", "jax.core")


def private_imports(source: str) -> list[str]:
    """The modules or names under ``PRIVATE`` that ``source`` imports or reads as attributes."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute):
            names = [ast.unparse(node)]  # e.g. `jax.core.Tracer` without an import of its own.
        else:
            continue
        found += [n for n in names if any(n == p or n.startswith(p + ".") for p in PRIVATE)]
    return found


def test_the_check_sees_private_imports():
    source = (
        "import jax.interpreters.mlir\n"
        "from jax._src import dispatch\n"
        "from jax import core\n"  # `jax.core` too.
        "from jax.core import Tracer\n"
        "isinstance(x, jax.core.Tracer)\n"
    )
    found = private_imports(source)
    assert "jax.interpreters.mlir" in found and "jax._src" in found
    assert "jax.core" in found and "jax.core.Tracer" in found
    assert private_imports("import jax\nfrom jax import lax\njax.lax.platform_dependent\n") == []


def test_no_module_of_the_package_imports_jax_internals():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10  # The whole package, not an empty directory.
    found = {
        str(f.relative_to(PACKAGE)): private
        for f in files
        if (private := private_imports(f.read_text()))
    }
    assert found == {}
