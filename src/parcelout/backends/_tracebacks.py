"""What a worker sends back when an item fails: the exception (or a stand-in
for one that cannot cross) and its traceback, starting at the user's own
frame and naming the user's file and line even for a function that
travelled by value. Process workers (``_child``), sub-interpreters
(``_interpreter``) and cluster tasks (``_remote``) share it; it imports
nothing that a sub-interpreter cannot load.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
import sys
import traceback
import types

import cloudpickle

from parcelout.backends._base import Star, run_batch

# The parent's main script, where this interpreter cannot know it otherwise (a
# sub-interpreter's own __main__ is not the script): set by the worker.
MAIN_FILE: str | None = None
_DYNAMIC = "<dynamic-code>"  # the file name cloudpickle gives the code it carries by value


def locate(fn: object) -> None:
    """Give a function that travelled by value (cloudpickle drops the file
    name of its code) its file back, so that its tracebacks show the
    script's path and source lines, as ``ProcessPoolExecutor``'s do. Looks
    through what wraps the user's function: a bound method, a
    ``functools.partial`` (and the functions among its arguments, as
    ``Pool.map`` sends them) and ``starmap``'s ``Star``."""
    if isinstance(fn, functools.partial):
        for part in (fn.func, *fn.args):
            if callable(part):
                locate(part)
        return
    if isinstance(fn, Star):
        locate(fn.fn)
        return
    fn = getattr(fn, "__func__", fn)  # a bound method: its function carries the code
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType) or code.co_filename != _DYNAMIC:
        return
    path = _module_file(getattr(fn, "__module__", None))
    if path is not None:
        fn.__code__ = _relocated(code, path)  # type: ignore[attr-defined]


def _relocated(code: types.CodeType, path: str) -> types.CodeType:
    consts = tuple(
        _relocated(c, path) if isinstance(c, types.CodeType) and c.co_filename == _DYNAMIC else c
        for c in code.co_consts
    )
    return code.replace(co_filename=path, co_consts=consts)


def _module_file(name: str | None) -> str | None:
    """The file of module ``name`` (the parent's main script for ``__main__``),
    found without running it."""
    if name is None:
        return None
    if name == "__main__":
        if MAIN_FILE is not None and os.path.exists(MAIN_FILE):
            return MAIN_FILE
        for main in ("__mp_main__", "__main__"):
            path = getattr(sys.modules.get(main), "__file__", None)
            if isinstance(path, str) and os.path.exists(path):
                return path
        return None
    module = sys.modules.get(name)
    if module is not None:
        path = getattr(module, "__file__", None)
        return path if isinstance(path, str) else None
    spec = importlib.util.find_spec(name)
    return spec.origin if spec is not None and spec.has_location else None


def transportable(exc: BaseException, own: frozenset[str] = frozenset()) -> tuple[BaseException, str]:
    """The exception, or a ``RemoteError`` standing in for it, and its traceback text.

    The exception is sent back only if it survives a pickle round trip (one
    whose ``__init__`` takes other arguments than it passes to ``super()``
    pickles but fails to unpickle, which breaks the standard library's pool).
    The traceback starts at the user's first frame: those of ``run_batch``'s
    file, and of the files in ``own``, are left out.
    """
    own = own | {_RUN_BATCH_FILE}
    frames = exc.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename in own:
        frames = frames.tb_next  # parcelout's own frames: the user's come first
    tb = "".join(traceback.format_exception(type(exc), exc, frames))
    try:
        pickle.loads(cloudpickle.dumps(exc))
    except BaseException as why:  # a __reduce__ may even exit
        from parcelout.errors import RemoteError

        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        return RemoteError(name, str(exc), f"{type(why).__name__}: {why}"), tb
    return exc, tb


_RUN_BATCH_FILE = run_batch.__code__.co_filename
