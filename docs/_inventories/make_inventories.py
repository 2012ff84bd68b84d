"""Writes the small intersphinx inventories that docs/conf.py reads instead of the network.

The documentation build is offline (CI and this project's machines reach only the package
registries), so instead of downloading each project's ``objects.inv`` this script writes one per
project with just the names jaxdrop's docs refer to. The addresses follow each project's own
documentation layout; they were written by hand, not checked online. Regenerate after adding a
name:

    python docs/_inventories/make_inventories.py
"""

import pathlib
import zlib

from sphinx.util.inventory import InventoryFile

HERE = pathlib.Path(__file__).parent

# project -> (version, {(domain:role, name): relative URI})
INVENTORIES = {
    "python": (
        "3",
        {
            ("py:class", "int"): "library/functions.html#int",
            ("py:class", "float"): "library/functions.html#float",
            ("py:class", "bool"): "library/functions.html#bool",
            ("py:class", "str"): "library/stdtypes.html#str",
            ("py:class", "tuple"): "library/stdtypes.html#tuple",
            ("py:class", "dict"): "library/stdtypes.html#dict",
            ("py:data", "None"): "library/constants.html#None",
            ("py:exception", "ValueError"): "library/exceptions.html#ValueError",
            ("py:exception", "TypeError"): "library/exceptions.html#TypeError",
            ("py:exception", "RuntimeError"): "library/exceptions.html#RuntimeError",
            ("py:class", "collections.abc.Sequence"): (
                "library/collections.abc.html#collections.abc.Sequence"
            ),
            ("py:class", "collections.abc.Callable"): (
                "library/collections.abc.html#collections.abc.Callable"
            ),
            ("py:data", "typing.Any"): "library/typing.html#typing.Any",
            ("py:data", "typing.Literal"): "library/typing.html#typing.Literal",
            ("py:class", "os.PathLike"): "library/os.html#os.PathLike",
        },
    ),
    "numpy": (
        "2",
        {
            ("py:class", "numpy.ndarray"): "reference/generated/numpy.ndarray.html#numpy.ndarray",
            ("py:class", "numpy.number"): "reference/arrays.scalars.html#numpy.number",
            ("py:class", "numpy.bool"): "reference/arrays.scalars.html#numpy.bool",
        },
    ),
    "jax": (
        "0.10",
        {
            ("py:class", "jax.Array"): "_autosummary/jax.Array.html#jax.Array",
            # What autodoc writes for a `jax.Array` annotation (the class's real module).
            ("py:class", "jax.jaxlib._jax.Array"): "_autosummary/jax.Array.html#jax.Array",
            ("py:class", "jax.typing.ArrayLike"): "jax.typing.html#jax.typing.ArrayLike",
            ("py:data", "jax.typing.ArrayLike"): "jax.typing.html#jax.typing.ArrayLike",
            ("py:function", "jax.jit"): "_autosummary/jax.jit.html#jax.jit",
            ("py:function", "jax.vmap"): "_autosummary/jax.vmap.html#jax.vmap",
            ("py:function", "jax.grad"): "_autosummary/jax.grad.html#jax.grad",
            ("py:function", "jax.shard_map"): "_autosummary/jax.shard_map.html#jax.shard_map",
            ("py:function", "jax.random.key"): "_autosummary/jax.random.key.html#jax.random.key",
            ("py:function", "jax.random.PRNGKey"): (
                "_autosummary/jax.random.PRNGKey.html#jax.random.PRNGKey"
            ),
            ("py:function", "jax.random.split"): (
                "_autosummary/jax.random.split.html#jax.random.split"
            ),
            ("py:function", "jax.random.fold_in"): (
                "_autosummary/jax.random.fold_in.html#jax.random.fold_in"
            ),
            ("py:function", "jax.lax.stop_gradient"): (
                "_autosummary/jax.lax.stop_gradient.html#jax.lax.stop_gradient"
            ),
            ("py:class", "jax.sharding.NamedSharding"): (
                "jax.sharding.html#jax.sharding.NamedSharding"
            ),
        },
    ),
    "flax": (
        "0.12",
        {
            ("py:class", "flax.linen.Module"): (
                "api_reference/flax.linen/module.html#flax.linen.Module"
            ),
            ("py:class", "flax.linen.Dropout"): (
                "api_reference/flax.linen/layers.html#flax.linen.Dropout"
            ),
            ("py:class", "flax.nnx.Module"): ("api_reference/flax.nnx/module.html#flax.nnx.Module"),
            ("py:class", "flax.nnx.Dropout"): (
                "api_reference/flax.nnx/nn/stochastic.html#flax.nnx.Dropout"
            ),
            ("py:class", "flax.nnx.Rngs"): "api_reference/flax.nnx/rnglib.html#flax.nnx.Rngs",
            (
                "py:class",
                "flax.nnx.rnglib.Rngs",
            ): "api_reference/flax.nnx/rnglib.html#flax.nnx.Rngs",
            ("py:class", "flax.nnx.rnglib.RngStream"): (
                "api_reference/flax.nnx/rnglib.html#flax.nnx.RngStream"
            ),
            ("py:class", "flax.linen.module.Module"): (
                "api_reference/flax.linen/module.html#flax.linen.Module"
            ),
            ("py:class", "flax.nnx.module.Module"): (
                "api_reference/flax.nnx/module.html#flax.nnx.Module"
            ),
            ("py:class", "flax.nnx.RngStream"): (
                "api_reference/flax.nnx/rnglib.html#flax.nnx.RngStream"
            ),
            ("py:class", "flax.nnx.Param"): (
                "api_reference/flax.nnx/variables.html#flax.nnx.Param"
            ),
        },
    ),
    "optax": (
        "0.2",
        {
            ("py:data", "optax.Schedule"): "api/optimizer_schedules.html#optax.Schedule",
            ("py:function", "optax.linear_schedule"): (
                "api/optimizer_schedules.html#optax.linear_schedule"
            ),
            ("py:function", "optax.cosine_decay_schedule"): (
                "api/optimizer_schedules.html#optax.cosine_decay_schedule"
            ),
        },
    ),
    "equinox": (
        "0.13",
        {
            ("py:class", "equinox.Module"): "api/module/module/#equinox.Module",
            ("py:class", "equinox.nn.Dropout"): "api/nn/dropout/#equinox.nn.Dropout",
            ("py:class", "equinox.nn.Linear"): "api/nn/linear/#equinox.nn.Linear",
            ("py:class", "equinox.nn.Conv"): "api/nn/conv/#equinox.nn.Conv",
            ("py:function", "equinox.nn.inference_mode"): (
                "api/nn/inference/#equinox.nn.inference_mode"
            ),
            ("py:function", "equinox.filter_jit"): "api/transformations/#equinox.filter_jit",
        },
    ),
}


def _dump(path: pathlib.Path, project: str, version: str, entries: dict) -> None:
    # The objects.inv v2 format: a plain header, then zlib-compressed "name domain:role prio uri
    # dispname" lines ("$" in the URI stands for the name, "-" for "same as the name").
    lines = []
    for (role, name), uri in sorted(entries.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if uri.endswith("#" + name):
            uri = uri[: -len(name)] + "$"
        lines.append(f"{name} {role} 1 {uri} -")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = zlib.compress(("\n".join(lines) + "\n").encode())
    path.write_bytes(header.encode() + body)


def main() -> None:
    for project, (version, entries) in INVENTORIES.items():
        path = HERE / f"{project}.inv"
        _dump(path, project, version, entries)
        # Read it back with Sphinx's own reader, so a malformed file fails here, not in a build.
        with path.open("rb") as f:
            InventoryFile.load(f, "https://example.invalid", lambda base, uri: base + "/" + uri)
        print(f"wrote {path} ({len(entries)} names)")


if __name__ == "__main__":
    main()
