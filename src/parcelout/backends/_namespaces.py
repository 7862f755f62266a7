"""In a worker, the functions of one script share one namespace.

cloudpickle sends a function defined in a script (``__main__``), or in a
module registered to travel by value, together with the globals it uses, in
a fresh dict for each pickle. The initializer and the function then arrive
with two dicts, and a global the initializer sets (a model it loads, a
connection it opens) is not seen by the function. ``ProcessPoolExecutor``'s
workers import the script again as one module, where the two share it.

``settle`` gives that back: in a worker, the by-value functions of each
module are rebound to one dict per module. What the dict holds already (the
initializer's state) is kept; what a function brings that is not there yet
is added. A function imported by reference (its module importable in the
worker) is left as it is: it already lives in the real module.

Only for workers that belong to one pool, of one program (process workers,
sub-interpreters): a cluster's worker runs the functions of many programs,
whose scripts are all ``__main__``.
"""

from __future__ import annotations

import functools
import sys
import types
from typing import Any

from parcelout.backends._base import Star

_SHARED: dict[str, dict[str, Any]] = {}  # module name -> the namespace its by-value functions share here


def settle(fn: Any) -> Any:
    """``fn`` (a function, a ``functools.partial`` of one, or ``Star``),
    sharing its module's namespace in this worker."""
    if isinstance(fn, functools.partial):
        func = settle(fn.func)
        args = tuple(settle(arg) if isinstance(arg, types.FunctionType) else arg for arg in fn.args)
        if func is fn.func and all(a is b for a, b in zip(args, fn.args, strict=True)):
            return fn
        return functools.partial(func, *args, **fn.keywords)
    if isinstance(fn, Star):
        inner = settle(fn.fn)
        return fn if inner is fn.fn else Star(inner)
    if not isinstance(fn, types.FunctionType):
        return fn
    module = sys.modules.get(fn.__module__)
    own = fn.__globals__
    if module is not None and own is vars(module):
        return fn  # imported by reference: it lives in the real module
    shared = _SHARED.setdefault(fn.__module__, own)
    if shared is own:
        return fn  # the first of its module here: its namespace is the module's
    return _move(fn, own, shared)


def _move(fn: types.FunctionType, own: dict[str, Any], shared: dict[str, Any]) -> types.FunctionType:
    """Rebind ``fn``, and every function that came in the same pickle (they
    share ``own``), to ``shared``; add to ``shared`` the globals it lacks."""
    moved = {
        name: _rebound(value, shared)
        for name, value in own.items()
        if isinstance(value, types.FunctionType) and value.__globals__ is own
    }
    for name, value in own.items():
        shared.setdefault(name, moved.get(name, value))
    same = moved.get(fn.__name__)
    if same is not None and same.__code__ is fn.__code__:
        return same
    return _rebound(fn, shared)


def _rebound(fn: types.FunctionType, namespace: dict[str, Any]) -> types.FunctionType:
    """A copy of ``fn`` whose globals are ``namespace``."""
    new = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    new.__annotations__ = fn.__annotations__
    new.__dict__.update(fn.__dict__)
    return new
