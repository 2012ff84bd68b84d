"""The modules' keyword-only constructors, with an error that says what to write."""

from __future__ import annotations

import functools
import inspect
from typing import Any, TypeVar

from jaxdrop._src.checks import KEEP_PROB_OR_RATE

_T = TypeVar("_T", bound=type)


def by_name(cls: _T) -> _T:
    """Class decorator: a positional argument beyond the class's own is a helpful ``TypeError``.

    The modules take their probability by name (a bare ``Dropout(0.1)`` could mean either
    probability), so their constructors are keyword-only, apart from a wrapper's ``layer``. The
    ``__init__`` that Python generates would raise a bare arity error; this one says what to
    write. ``inspect.signature`` still shows the original signature.
    """
    init = cls.__init__
    # The positional parameters the class accepts (``self`` excluded), up to the probability. A
    # subclass that a Flax transform generates (``nn.remat(DropBlock)``) has positional
    # ``parent`` and ``name`` again, which must not take a bare number either.
    names = [
        p.name
        for p in inspect.signature(init).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ][1:]
    stops = [i for i, n in enumerate(names) if n in ("keep_prob", "rate", "p", "parent", "name")]
    allowed = stops[0] if stops else len(names)
    name = cls.__name__
    parameters = inspect.signature(init).parameters
    if "keep_prob" in parameters:
        hint = KEEP_PROB_OR_RATE
    else:  # RandomErasing's probability of erasing is `p`, as torchvision's.
        hint = "give each by name, e.g. `p=` (the probability of erasing an image)."

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > allowed:
            extra = ", ".join(repr(a) for a in args[allowed:])
            raise TypeError(f"{name} takes its arguments by name, got positional {extra}: " + hint)
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # pyright: ignore[reportAttributeAccessIssue]
    return cls
