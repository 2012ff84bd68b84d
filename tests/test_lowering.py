"""No data-dependent control flow in what an accelerator would run (deterministic, no device).

XLA:GPU runs a ``stablehlo.case`` / ``if`` / ``while`` on a run-time value by copying its
predicate to the host and waiting for the device, and under ``vmap`` a batched predicate becomes
a select that runs every branch. A ``case`` on a constant index is different: it is what
``jax.lax.platform_dependent`` (which picks DropBlock's sampler) emits, and XLA's conditional
simplifier folds it away. So ``jax.export(jax.jit(f), platforms=[...])`` of every public
function, forward and forward+backward, may hold ``case`` / ``if`` ops only on an index or
predicate computed from constants, and no ``while`` at all; and the compiled CPU program holds
no conditional.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import jaxdrop
from jaxdrop._src import dropblock as dropblock_src

X = jnp.ones((2, 28, 28, 8))  # A 26 x 26 x 8 seed grid per example at block 3: sparse on CPU.
KEEP = jnp.float32(0.9)

_DEF = re.compile(r"^\s*(%[\w]+)(?::\d+)?\s*=\s*(.*)$")
_USE = re.compile(r"%[\w]+")
_BRANCH = re.compile(r'"stablehlo\.(case|if)"\((%[\w]+)')


def _uses(text: str) -> set[str]:
    """The SSA values an op reads (``%7#1`` is a result of ``%7``), locations left out."""
    text = re.sub(r"loc\(.*$", "", text)
    return {u.split("#")[0] for u in _USE.findall(text)}


def data_dependent_control_flow(module: str) -> list[str]:
    """The control-flow ops of a lowered module whose index or predicate depends on data.

    A value is static when computed from constants only: a ``stablehlo.constant``, an op with
    no region whose operands are all static, or a ``case`` / ``if`` on a static index whose
    branches return static values (``platform_dependent`` nests two such cases). Every
    ``while`` is reported (its predicate is recomputed each iteration). Block arguments and
    function arguments are data.
    """
    found = []
    static: set[str] = set()
    depth = 0
    frames: list[dict] = []  # Open case / if ops: their results, index, depth, branch returns.
    for line in module.splitlines():
        stripped = line.strip()
        if stripped.startswith("func.func"):
            static = set()
        opens = line.count("{") - line.count("}")
        define = _DEF.match(line)
        branch = _BRANCH.search(line)
        if "stablehlo.while" in line:
            found.append(stripped[:120])
        if branch:
            index_static = branch.group(2) in static
            if not index_static:
                found.append(stripped[:120])
            frames.append(
                {
                    "result": define.group(1) if define else None,
                    "static": index_static,
                    "depth": depth,
                }
            )
        elif stripped.startswith("stablehlo.return") and frames:
            if depth == frames[-1]["depth"] + 1 and not _uses(stripped) <= static:
                frames[-1]["static"] = False
        elif define and opens == 0:
            name, rhs = define.groups()
            if "stablehlo.constant" in rhs or _uses(rhs) <= static:
                static.add(name)
        depth += opens
        if frames and depth == frames[-1]["depth"] and not branch:
            frame = frames.pop()
            if frame["static"] and frame["result"]:
                static.add(frame["result"])
    return found


def lowered(fn, args, platform: str) -> str:
    return jax.export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module()


def forward_and_backward(fn):
    """``fn(key, x, *rest)`` and the gradient of its sum with respect to ``x``."""
    return jax.value_and_grad(lambda x, key, *rest: fn(key, x, *rest).sum())


def _dropblock(keep, calibrate, normalize):
    min_keep_prob = 0.8 if keep == "traced-min" else None

    def fn(key, x, *keep_prob):
        p = keep_prob[0] if keep_prob else 0.9
        return jaxdrop.dropblock(
            key, x, p, 3, normalize=normalize, calibrate=calibrate, min_keep_prob=min_keep_prob
        )

    return fn, () if keep == "python" else (KEEP,)


# The sparse-eligible bounds (a Python keep_prob, or a traced one with min_keep_prob), the
# dense draw (traced, no bound), calibrate and both scales, in few cases.
DROPBLOCK_CASES = [
    ("python", False, "actual"),
    ("python", True, "expected"),
    ("traced", False, "actual"),
    ("traced-min", False, "expected"),
    ("traced-min", True, "actual"),
]


def test_the_cases_are_sparse_on_cpu():
    for keep in (0.9, 0.8):  # The Python keep_prob, then the bound.
        cap = dropblock_src.seed_cap(X.shape, (1, 2), (3, 3), False, keep, None)
        assert cap is not None


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize(("keep", "calibrate", "normalize"), DROPBLOCK_CASES)
def test_dropblock_has_no_data_dependent_control_flow(platform, keep, calibrate, normalize):
    fn, extra = _dropblock(keep, calibrate, normalize)
    key = jax.random.key(0)
    forward = lowered(fn, (key, X, *extra), platform)
    assert data_dependent_control_flow(forward) == []
    # The accelerators use the dense draw: the CPU branch (a scatter of seed positions) is not
    # even in a single-platform lowering.
    assert "stablehlo.scatter" not in forward
    backward = lowered(forward_and_backward(fn), (X, key, *extra), platform)
    assert data_dependent_control_flow(backward) == []


FAMILY = {
    "dropout": lambda k, x, p: jaxdrop.dropout(k, x, p),
    "spatial_dropout": lambda k, x, p: jaxdrop.spatial_dropout(k, x, p),
    "drop_path": lambda k, x, p: jaxdrop.drop_path(k, x, p),
    "drop_path-batch": lambda k, x, p: jaxdrop.drop_path(k, x, p, mode="batch"),
    "cutout": lambda k, x, p: jaxdrop.cutout(k, x, 9, num_patches=2) * p,
    "dropconnect": lambda k, x, p: jaxdrop.dropconnect(k, {"w": x}, p)["w"],
    # keep_prob is static (it sets the number of tokens): the traced p scales the output.
    "patch_dropout": lambda k, x, p: jaxdrop.patch_dropout(k, x, 0.5) * p,
    "random_erasing": lambda k, x, p: jaxdrop.random_erasing(k, x, p, max_count=2),
}


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("name", FAMILY)
def test_family_has_no_data_dependent_control_flow(platform, name):
    fn = FAMILY[name]
    key = jax.random.key(0)
    forward = lowered(fn, (key, X, KEEP), platform)
    assert data_dependent_control_flow(forward) == []
    backward = lowered(forward_and_backward(fn), (X, key, KEEP), platform)
    assert data_dependent_control_flow(backward) == []


# random_erasing compiles for about 13 s here (forward and forward+backward): the full run only.
@pytest.mark.parametrize(
    "name", ["patch_dropout", pytest.param("random_erasing", marks=pytest.mark.slow)]
)
def test_family_compiles_with_no_conditional_on_cpu(name):
    fn = FAMILY[name]
    key = jax.random.key(0)
    for f, args in ((fn, (key, X, KEEP)), (forward_and_backward(fn), (X, key, KEEP))):
        compiled = jax.jit(f).lower(*args).compile().as_text()
        assert "conditional(" not in compiled


def _vmapped(keys, x):
    # One key per example, as in an Equinox model.
    return jax.vmap(lambda k, x: jaxdrop.dropblock(k, x, 0.9, 3, normalize="expected"))(keys, x)


def _jaxprs(jaxpr):
    """``jaxpr`` and every jaxpr nested in its equations (jit, cond branches, custom rules)."""
    yield jaxpr
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # A ClosedJaxpr's jaxpr.
                if hasattr(sub, "eqns"):
                    yield from _jaxprs(sub)


def test_vmap_keeps_the_platform_case_on_an_unbatched_constant():
    keys = jax.random.split(jax.random.key(0), 2)
    conds = []
    for jaxpr in _jaxprs(jax.make_jaxpr(_vmapped)(keys, X).jaxpr):
        platform_indices = [
            v for e in jaxpr.eqns if e.primitive.name == "platform_index" for v in e.outvars
        ]
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "cond":
                index = eqn.invars[0]
                conds.append((any(index is v for v in platform_indices), index.aval.shape))
    # One cond, the sampler's, on the platform index itself: a scalar that vmap did not batch,
    # so the cond was not turned into a select that runs both samplers.
    assert conds == [(True, ())]
    for platform in ("cuda", "tpu"):
        assert data_dependent_control_flow(lowered(_vmapped, (keys, X), platform)) == []
    cpu = lowered(_vmapped, (keys, X), "cpu")
    assert "stablehlo.case" in cpu and "stablehlo.scatter" in cpu  # The sparse sampler.
    compiled = jax.jit(_vmapped).lower(keys, X).compile().as_text()
    assert "conditional(" not in compiled


@pytest.mark.parametrize("keep", ["python", "traced-min"])
def test_cpu_compiles_the_sparse_sampler_with_no_conditional(keep):
    fn, extra = _dropblock(keep, False, "actual")
    key = jax.random.key(0)
    module = lowered(fn, (key, X, *extra), "cpu")
    assert "stablehlo.scatter" in module  # The sparse sampler, not the dense draw ...
    assert "stablehlo.case" in module  # ... chosen by the platform case ...
    for f, args in ((fn, (key, X, *extra)), (forward_and_backward(fn), (X, key, *extra))):
        compiled = jax.jit(f).lower(*args).compile().as_text()
        assert "conditional(" not in compiled  # ... which XLA folds away.


def test_a_lowering_for_several_platforms_holds_each_sampler():
    # One module for CPU and CUDA: the case picks on the platform index, an argument of the
    # exported module (the caller's choice); a single-platform lowering has only its branch.
    fn, _ = _dropblock("python", False, "actual")
    module = jax.export.export(jax.jit(fn), platforms=["cpu", "cuda"])(jax.random.key(0), X)
    text = module.mlir_module()
    assert "stablehlo.scatter" in text  # The CPU sampler is there ...
    assert "stablehlo.case" in text  # ... beside the dense one, behind the platform case.
    assert module.platforms == ("cpu", "cuda")


def test_the_check_sees_data_dependent_control_flow():
    # What the 0.1 sampler had: a data-dependent cond and switch, and a bisection fori_loop.
    def fn(x):
        x = jax.lax.cond(x.sum() > 0, lambda x: x * 2, lambda x: x, x)
        x = jax.lax.switch((x.sum() > 1).astype(jnp.int32), [lambda x: x, lambda x: -x], x)
        return jax.lax.fori_loop(0, x.shape[0], lambda i, x: x + i, x)

    for platform in ("cuda", "tpu"):
        found = data_dependent_control_flow(lowered(fn, (jnp.ones(3),), platform))
        assert sum("stablehlo.case" in op for op in found) == 2, found
        assert sum("stablehlo.while" in op for op in found) == 1, found


def test_the_check_allows_a_platform_case():
    def fn(x):
        return jax.lax.platform_dependent(x, cpu=lambda x: x + 1, default=lambda x: x * 2)

    module = lowered(fn, (jnp.ones(3),), "cuda")
    assert module.count("stablehlo.case") == 2  # platform_dependent's two nested cases ...
    assert data_dependent_control_flow(module) == []  # ... both on constants.
    # The same case on a value computed from data is reported.
    data_case = module.replace('"stablehlo.case"(%c', '"stablehlo.case"(%arg0', 1)
    assert data_case != module and len(data_dependent_control_flow(data_case)) == 2
