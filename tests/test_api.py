"""The public API follows one signature convention, checked on every public function (as dm-pix).

- A function that takes a PRNG key takes it first, positionally, as ``rng``; then the data
  (``x``, or ``params`` for DropConnect), positionally; then the required hyperparameters.
- Every parameter with a default, in every public function, is keyword-only.
- The modules' fields and constructor arguments come in the order of their function's arguments,
  with the same names and defaults (the Equinox modules: the defaults of one channels-first
  example), then the wrapper's own (``inference`` last for Equinox). The probability is
  ``keep_prob=None, rate=None`` (either spelling, or neither when it comes at call time), and a
  module with a probability takes every argument by name, apart from DropConnect's ``layer``.
"""

import dataclasses
import inspect
import pathlib

import pytest

import jaxdrop
import jaxdrop.equinox

P = inspect.Parameter
POSITIONAL = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)

FUNCTIONS = [
    name
    for name in jaxdrop.__all__
    if inspect.isfunction(getattr(jaxdrop, name)) and not name.startswith("_")
]
# A function is key-taking iff its first parameter is `rng` (schedules and helpers over depth
# take no key); the stochastic family must all be key-taking, so the rule is not vacuous.
KEYED = [
    name
    for name in FUNCTIONS
    if list(inspect.signature(getattr(jaxdrop, name)).parameters)[:1] == ["rng"]
]
FAMILY = [
    "dropout",
    "spatial_dropout",
    "dropblock",
    "drop_path",
    "cutout",
    "dropconnect",
    "patch_dropout",
    "random_erasing",
]
MODULES = [
    "Dropout",
    "SpatialDropout",
    "DropBlock",
    "DropPath",
    "Cutout",
    "DropConnect",
    "PatchDropout",
    "RandomErasing",
]
# The names the data may take (second parameter of a key-taking function).
DATA_NAMES = ("x", "params", "tokens", "images")
# Module name -> function name.
MODULE_FUNCTION = dict(zip(MODULES, FAMILY, strict=True))
# The wrapper's own arguments, after the function's.
WRAPPER_ARGS = ("deterministic", "rng_collection")
# Equinox layers see one channels-first example (as eqx.nn.Conv2d), so the layout defaults
# differ from the functions' batched channels-last ones; every other default is the function's.
EQUINOX_DEFAULTS = {"spatial_dims": (-2, -1), "channel_axis": -3, "mode": "batch"}
# The probability each module takes by name: keep_prob (or rate), or RandomErasing's p (the
# probability of erasing, as torchvision's). Optional at construction: it may come at call time.
PROBABILITIES = ("keep_prob", "p")


def test_public_api():
    assert set(FAMILY) | {"drop_path_keep_probs", "linen", "nnx"} <= set(jaxdrop.__all__)
    assert set(FAMILY) <= set(KEYED)
    assert sorted(jaxdrop.linen.__all__) == sorted(MODULES)
    assert sorted(jaxdrop.nnx.__all__) == sorted(MODULES)
    assert sorted(jaxdrop.equinox.__all__) == sorted(MODULES)
    # Equinox is optional: `import jaxdrop.equinox` brings it, `import jaxdrop` does not.
    assert "equinox" not in jaxdrop.__all__
    for module in (jaxdrop, jaxdrop.linen, jaxdrop.nnx, jaxdrop.equinox):
        for name in module.__all__:
            assert hasattr(module, name), name


# Modules of jaxdrop/_src that are not a method of their own name (each method lives in
# `_src/<name>.py` and is exported as `jaxdrop.<name>`), with what they hold.
INFRASTRUCTURE = {
    "checks": "argument checks and canonicalisation",
    "masking": "apply_mask: the shared scale and masking",
    "sampling": "the Bernoulli seed samplers",
    "linen": "the linen modules (jaxdrop.linen)",
    "nnx": "the NNX modules (jaxdrop.nnx)",
    "equinox_modules": "the Equinox modules (jaxdrop.equinox)",
    "schedules": "layer_keep_probs",
    "plotting": "plot_masks",
    "multihost": "check_same_key",
    "by_name": "the modules' keyword-only constructors",
}


def test_every_method_file_is_exported():
    """A new `_src/<name>.py` fails here until `jaxdrop/__init__.py` re-exports `<name>`."""
    source = pathlib.Path(jaxdrop.__file__).parent / "_src"
    stems = {p.stem for p in source.glob("*.py")} - {"__init__"}
    assert set(INFRASTRUCTURE) <= stems, sorted(set(INFRASTRUCTURE) - stems)
    missing = sorted(stems - set(INFRASTRUCTURE) - set(jaxdrop.__all__))
    assert not missing, f"re-export these in jaxdrop/__init__.py (or list them here): {missing}"


def test_the_family_table_lists_every_method():
    """A method exported but missing from FAMILY (and so from MODULES) fails here."""
    assert set(KEYED) - set(FAMILY) == {"check_same_key", "plot_masks"}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_options_with_defaults_are_keyword_only(name):
    for param in inspect.signature(getattr(jaxdrop, name)).parameters.values():
        assert param.kind != P.VAR_POSITIONAL, f"{name}: no *args in a public function"
        if param.default is not P.empty:
            assert param.kind == P.KEYWORD_ONLY, f"{name}: option `{param.name}` is positional"
        elif param.kind != P.KEYWORD_ONLY:
            assert param.kind in POSITIONAL


@pytest.mark.parametrize("name", KEYED)
def test_key_first_then_data(name):
    fn = getattr(jaxdrop, name)
    params = list(inspect.signature(fn).parameters.values())
    rng = params[0]
    assert rng.name == "rng" and rng.kind in POSITIONAL and rng.default is P.empty
    if len(params) == 1:  # A check on the key alone (check_same_key) takes no data.
        return
    data = params[1]
    # The data is `x`, or what it is when a function takes only one kind: the parameter tree of
    # DropConnect, the tokens of PatchDropout, the images of RandomErasing.
    assert data.name in DATA_NAMES and data.kind in POSITIONAL and data.default is P.empty
    if "keep_prob" in [p.name for p in params]:
        assert params[2].name == "keep_prob", f"{name}: keep_prob comes right after the data"
    assert inspect.signature(fn).return_annotation is not P.empty


def _function_args(module_name):
    """The function's arguments after the key, with the data renamed as the module calls it."""
    fn = getattr(jaxdrop, MODULE_FUNCTION[module_name])
    params = list(inspect.signature(fn).parameters.values())[1:]
    if module_name == "DropConnect":
        # DropConnect wraps a layer instead of taking a parameter tree.
        args = [("layer", P.empty)] + [(p.name, p.default) for p in params[1:]]
    else:
        args = [(p.name, p.default) for p in params[1:]]
    # The modules take the probability by name, either spelling, or neither at construction.
    out = []
    for n, d in args:
        if n == "keep_prob":
            out += [("keep_prob", None), ("rate", None)]
        else:
            out += [(n, None if n == "p" else d)]
    return out


def _call_probability(module_name):
    """The call-time probability arguments: ``keep_prob`` and ``rate``, or ``p``, or none."""
    names = [n for n, _ in _function_args(module_name)]
    if "keep_prob" in names:
        return ["keep_prob", "rate"]
    return ["p"] if "p" in names else []


def _check_keyword_only(name, params):
    """A module with a probability takes its arguments by name (DropConnect's ``layer`` aside);
    Cutout, which has none, takes its required ``size`` positionally, as its function."""
    has_probability = any(p.name in PROBABILITIES for p in params)
    for p in params:
        if p.name == "layer" or (not has_probability and p.default is P.empty):
            assert p.kind in POSITIONAL, f"{name}.{p.name}"
        else:
            assert p.kind == P.KEYWORD_ONLY, f"{name}.{p.name}"


@pytest.mark.parametrize("name", MODULES)
def test_linen_fields_follow_the_function(name):
    cls = getattr(jaxdrop.linen, name)
    fields = [
        (f.name, P.empty if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(cls)
        if f.name not in ("parent", "name")
    ]
    assert [n for n, _ in fields[-2:]] == list(WRAPPER_ARGS)
    assert fields[:-2] == _function_args(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    _check_keyword_only(name, [p for p in params if p.name not in ("parent", "name")])


@pytest.mark.parametrize("name", MODULES)
def test_nnx_arguments_follow_the_function(name):
    cls = getattr(jaxdrop.nnx, name)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in params[-3:]] == [*WRAPPER_ARGS, "rngs"]
    args = params[:-3]
    assert [(p.name, p.default) for p in args] == _function_args(name)
    _check_keyword_only(name, params)


@pytest.mark.parametrize("name", MODULES)
def test_equinox_fields_follow_the_function(name):
    cls = getattr(jaxdrop.equinox, name)
    fields = [
        (f.name, P.empty if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(cls)
    ]
    # `inference` last, as eqx.nn.Dropout, so eqx.nn.inference_mode toggles it.
    assert fields[-1] == ("inference", False)
    expected = [(n, EQUINOX_DEFAULTS.get(n, d)) for n, d in _function_args(name)]
    assert fields[:-1] == expected
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in params] == fields
    _check_keyword_only(name, params)
    # Configuration is static (part of the jit cache key, as eqx.nn.Conv's kernel_size); the
    # numeric values (keep_prob, fill), the layer and `inference` are leaves, as in eqx.nn.Dropout.
    static = {f.name for f in dataclasses.fields(cls) if f.metadata.get("static", False)}
    numeric = {"keep_prob", "rate", "p", "fill", "layer", "inference"}
    assert static == {f.name for f in dataclasses.fields(cls)} - numeric, name


@pytest.mark.parametrize("name", MODULES)
def test_equinox_call_signature(name):
    """``__call__(x, *, key=None, inference=None, keep_prob=None, rate=None)``, as
    eqx.nn.Dropout's plus the probability."""
    call = list(inspect.signature(getattr(jaxdrop.equinox, name).__call__).parameters.values())
    options = ["key", "inference"] + _call_probability(name)
    if name == "DropConnect":
        # The layer's own arguments pass through.
        assert [(p.name, p.kind) for p in call[1:2]] == [("args", P.VAR_POSITIONAL)]
        assert [(p.name, p.kind) for p in call[-1:]] == [("kwargs", P.VAR_KEYWORD)]
        call = call[2:-1]
    else:
        assert [p.name for p in call[:2]] == ["self", "x"]
        assert call[1].kind in POSITIONAL and call[1].default is P.empty
        call = call[2:]
    assert [(p.name, p.kind, p.default) for p in call] == [
        (n, P.KEYWORD_ONLY, None) for n in options
    ]


@pytest.mark.parametrize("name", MODULES)
def test_call_time_overrides(name):
    """Every module with a keep_prob takes a call-time `keep_prob=` or `rate=` (a traced schedule
    value), keyword-only; RandomErasing its `p=`."""
    expected = _call_probability(name)
    for cls in (getattr(jaxdrop.linen, name), getattr(jaxdrop.nnx, name)):
        call = inspect.signature(cls.__call__).parameters
        for spelling in ("keep_prob", "rate", "p"):
            assert (spelling in call) == (spelling in expected)
            if spelling in expected:
                assert call[spelling].kind == P.KEYWORD_ONLY
                assert call[spelling].default is None
        assert call["deterministic"].default is None


def test_per_method_tables_cover_every_method():
    """The per-method tables of the property and sharding tests list every method.

    Each is a hand-written table (a method needs its own arguments there), so a new method fails
    here until it has its rows; so does the lowering test's table (tests/test_lowering.py). The
    forwarding table (tests/test_forwarding.py) checks itself.
    """
    import test_lowering
    import test_properties
    import test_sharding

    def names(table):
        return {name.split("-")[0] for name in table}

    # Every function whose second argument is a data array, whatever its name.
    takes_data = {
        name
        for name in FAMILY
        if list(inspect.signature(getattr(jaxdrop, name)).parameters)[1]
        in ("x", "tokens", "images")
    }
    assert {"patch_dropout", "random_erasing"} <= takes_data  # The names are still these.
    # patch_dropout's keep_prob is static (it sets the output's shape): KEEP_PROB_METHODS tests a
    # traced one, which patch_dropout rejects (tests/test_checks.py, STATIC_KEEP_PROB).
    with_keep_prob = {
        name
        for name in FAMILY
        if "keep_prob" in inspect.signature(getattr(jaxdrop, name)).parameters
    } - {"patch_dropout"}
    in_cases = names(test_properties.ALL_CASES) | test_properties.NOT_IN_ALL_CASES
    assert takes_data <= in_cases, takes_data - in_cases
    assert not names(test_properties.ALL_CASES) & test_properties.NOT_IN_ALL_CASES
    assert with_keep_prob <= names(test_properties.KEEP_PROB_METHODS)
    assert takes_data <= names(test_sharding.METHODS), takes_data - names(test_sharding.METHODS)
    # DropBlock has its own cases there (DROPBLOCK_CASES).
    lowering = names(test_lowering.FAMILY) | {"dropblock"}
    assert takes_data <= lowering, takes_data - lowering


@pytest.mark.parametrize("name", [m for m in MODULES if m != "DropConnect"])
def test_linen_call_takes_flax_order(name):
    """``layer(x, deterministic, rng)``, as ``flax.linen.Dropout.__call__(inputs, deterministic,
    rng)``; DropConnect passes its positional arguments to the layer instead."""
    call = list(inspect.signature(getattr(jaxdrop.linen, name).__call__).parameters.values())
    assert [(p.name, p.kind in POSITIONAL) for p in call[:4]] == [
        ("self", True),
        ("x", True),
        ("deterministic", True),
        ("rng", True),
    ]
