"""Interpreter workers: one thread per worker, each owning one sub-interpreter
(PEP 734) with its own GIL, so pure-Python work runs in parallel in one process.

The module is Python 3.14's ``concurrent.interpreters``, or on 3.13 the
``backports.interpreters`` package (``pip install 'parcelout[interpreters]'``);
elsewhere ``load()`` raises an ``ImportError`` that says what to install.

Interpreters share no objects, so a batch crosses as bytes. The worker
thread puts the batch into the interpreter's ``__main__``: the function
pickled by cloudpickle (by value where it must be: lambdas, closures,
``__main__`` functions), sent once per token and cached there, and the items
encoded one by one by ``_wire``. ``Runner`` (this module, imported once in
each interpreter: it imports nothing heavy) runs them with ``run_batch`` and
puts its reply, results and failures encoded one by one, on a
cross-interpreter queue, which the thread reads once the call has returned
(it never waits on the queue). So a value that cannot cross fails only its
own item, as with process workers. While an interpreter runs, its thread
holds that interpreter's GIL, not the main one.

What an interpreter cannot do, and what happens instead:

* It cannot be stopped. ``kill_worker`` abandons the worker, as a thread is
  abandoned: it takes nothing more, and its thread ends, closing its
  interpreter, when the item it runs returns. A batch with a per-item timeout
  runs one item per call, so that the thread reports each item's start and
  looks for a kill between items.
* It cannot survive a crash: a segfault in an item ends the whole process.
  Process workers are the choice for isolation.
* It cannot import an extension module that has only single-phase
  initialisation (NumPy, among others): the item fails with that
  ``ImportError``, with a note that says so and names ``backend="process"``.
* An interpreter that has not started, or has not started its first batch,
  ``START_DEADLINE`` seconds after it began, is reported dead before it was
  ready (its batch goes to another worker, and a few such deaths in a row
  break the pool) and its thread is abandoned, rather than waited for.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from parcelout._core._messages import Batch, BatchDone, Event, InitFailed, ItemStarted, WorkerExited
from parcelout.backends import _wire as wire
from parcelout.backends._base import run_batch
from parcelout.backends._namespaces import settle
from parcelout.backends._tracebacks import locate, transportable

# Seconds an interpreter may take to start, and to start its first batch.
START_DEADLINE = 30.0
# The functions an interpreter keeps; the thread, knowing which it sent, forgets them alike.
FN_CACHE_SIZE = 64
INSTALL = "pip install 'parcelout[interpreters]'"
_log = logging.getLogger("concurrent.futures")

# Run once in each new interpreter: the parent's import path, then the runner.
_BOOT = """\
import sys
sys.path[:] = _parcelout_path
from parcelout.backends import _tracebacks
_tracebacks.MAIN_FILE = _parcelout_main  # the parent's script, for tracebacks of its functions
from parcelout.backends._interpreter import Runner
_parcelout = Runner(_parcelout_results)
del _parcelout_path, _parcelout_results, _parcelout_main
"""


def load() -> Any:
    """The PEP 734 module (``concurrent.interpreters`` or its backport).

    Raises:
        ImportError: this Python has no interpreters module; the message says
            what to install.
    """
    if sys.version_info >= (3, 14):
        from concurrent import interpreters

        return interpreters
    if sys.version_info >= (3, 13):
        try:
            from backports import interpreters
        except ImportError as exc:
            raise ImportError(
                "backend='interpreter' on Python 3.13 needs the PEP 734 backport, which is not installed: "
                f"{INSTALL} (or use Python 3.14+)"
            ) from exc
        return interpreters
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    raise ImportError(
        f"backend='interpreter' needs Python 3.14 or later, or Python 3.13 with {INSTALL}; this is Python {version}"
    )


# What ``probe`` runs in a new interpreter: start as a worker starts, then load
# the function and a sample item and result, as a batch would bring them.
_PROBE = """\
import pickle, sys
sys.path[:] = _parcelout_path
from parcelout.backends._interpreter import Runner
pickle.loads(_parcelout_fn)
pickle.loads(_parcelout_sample)
"""


def probe(fn: Callable[..., Any], sample: tuple[object, object] | None) -> tuple[float | None, str | None]:
    """How long a new sub-interpreter takes to start as a worker and load
    ``fn`` and a sample item and its result (nothing is run): the seconds,
    or None and why it cannot (a module of the function's that cannot load
    in a sub-interpreter, such as NumPy)."""
    start = time.perf_counter()
    try:
        api = load()
        fn_bytes = cloudpickle.dumps(fn)
        sample_bytes = cloudpickle.dumps(sample)
        interp = api.create()
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    try:
        interp.prepare_main(_parcelout_path=tuple(sys.path), _parcelout_fn=fn_bytes, _parcelout_sample=sample_bytes)
        interp.exec(_PROBE)
    except Exception as exc:  # the interpreter's exception, as text (ExecutionFailed)
        return None, str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    finally:
        with contextlib.suppress(Exception):
            interp.close()
    return time.perf_counter() - start, None


def available() -> bool:
    """Whether ``backend="interpreter"`` can run here."""
    try:
        load()
    except ImportError:
        return False
    return True


@dataclass(eq=False)
class _Worker:
    id: int
    inbox: queue.SimpleQueue[Batch | None]
    path: tuple[str, ...]
    known: set[int] = field(default_factory=set)  # the function tokens its interpreter holds
    abandoned: bool = False  # takes nothing more
    gone: bool = False  # its WorkerExited was reported (it missed a deadline)
    ready: bool = False  # its first batch started


class InterpreterBackend:
    def __init__(
        self,
        report: Callable[[Event], None],
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        name_prefix: str = "parcelout-interpreter",
    ) -> None:
        self._api = load()
        self._report = report
        self._init: bytes | BaseException | None = None
        if initializer is not None:
            try:
                self._init = bytes(cloudpickle.dumps((initializer, initargs)))
            except Exception as exc:
                exc.add_note("parcelout: the initializer or its initargs could not be pickled to send them to a worker")
                self._init = exc
        self._prefix = name_prefix
        self._lock = threading.Lock()
        self._workers: dict[int, _Worker] = {}
        self._threads: dict[int, threading.Thread] = {}

    # ------------------------------------------------------------ the Backend protocol
    def start_worker(self, worker: int) -> None:
        state = _Worker(worker, queue.SimpleQueue(), tuple(sys.path))
        thread = threading.Thread(target=self._work, args=(state,), name=f"{self._prefix}_{worker}", daemon=True)
        self._workers[worker] = state
        self._threads = {w: t for w, t in self._threads.items() if t.is_alive()}
        self._threads[worker] = thread
        thread.start()

    def send(self, worker: int, batch: Batch) -> None:
        state = self._workers.get(worker)
        if state is not None:  # else it missed a deadline: its WorkerExited is on the way
            state.inbox.put(batch)

    def stop_worker(self, worker: int) -> None:
        state = self._workers.pop(worker, None)
        if state is not None:
            state.inbox.put(None)

    def kill_worker(self, worker: int, grace: float = 0.0) -> None:
        state = self._workers.get(worker)
        if state is not None:
            state.abandoned = True  # it takes nothing more
        self._threads.pop(worker, None)  # and nobody waits for it
        self.stop_worker(worker)

    def close(self) -> None:
        for state in self._workers.values():
            state.inbox.put(None)
        self._workers.clear()
        current = threading.current_thread()
        for thread in self._threads.values():
            if thread is not current:
                thread.join()
        self._threads.clear()

    # ------------------------------------------------------------ the worker thread
    def _work(self, state: _Worker) -> None:
        interp = None
        try:
            try:
                with self._deadline(state, "start"):
                    interp, results = self._open(state.path)
            except Exception as exc:
                self._gone(state, f"its interpreter could not start: {type(exc).__name__}: {exc}")
                return
            if state.gone or not self._initialize(state, interp, results):
                return
            while (batch := state.inbox.get()) is not None and not state.abandoned:
                self._run(state, interp, results, batch)
                del batch  # keep no item, function or result while idle
                if state.gone:
                    return
        finally:
            if interp is not None:
                with contextlib.suppress(Exception):  # it is gone with its thread either way
                    interp.close()
            if not state.gone:
                self._report(WorkerExited(state.id, 0))

    def _open(self, path: tuple[str, ...]) -> tuple[Any, Any]:
        """A new interpreter with the runner in its ``__main__``, and its reply queue."""
        interp = self._api.create()
        try:
            results = self._api.create_queue()
            main = getattr(sys.modules.get("__main__"), "__file__", None)
            main = main if isinstance(main, str) else None
            interp.prepare_main(_parcelout_path=path, _parcelout_results=results, _parcelout_main=main)
            interp.exec(_BOOT)
        except BaseException:
            interp.close()
            raise
        return interp, results

    def _initialize(self, state: _Worker, interp: Any, results: Any) -> bool:
        if self._init is None:
            return True
        error: BaseException
        if isinstance(self._init, BaseException):
            error = self._init
        else:
            try:
                interp.prepare_main(_parcelout_in=self._init)
                interp.exec("_parcelout.initialize(_parcelout_in)\ndel _parcelout_in")
                reply: bytes = results.get_nowait()
            except Exception as exc:
                error = exc
            else:
                if not reply:
                    return True
                error = wire.decode_failures(reply, [0])[0]
        _log.critical("Exception in initializer:", exc_info=error)  # as the other workers log it
        self._report(InitFailed(state.id, error))
        return False

    def _run(self, state: _Worker, interp: Any, results: Any, batch: Batch) -> None:
        call, n = batch.call, len(batch.items)
        if batch.cancelled:  # as a thread: a batch cancelled before it started runs nothing
            self._report(BatchDone(state.id, batch.id, [], {}, 0.0))
            return
        fn_bytes = wire.function_bytes(call)
        if isinstance(fn_bytes, BaseException):
            self._report(BatchDone(state.id, batch.id, [None] * n, dict.fromkeys(range(n), fn_bytes), 0.0))
            return
        payload, unsent = wire.encode_items(batch, None)
        if call.token not in state.known and len(state.known) >= FN_CACHE_SIZE:
            state.known.clear()  # as the runner clears its cache when this function comes
        header = (call.token, None if call.token in state.known else fn_bytes, call.star, n, sorted(unsent))
        try:
            interp.prepare_main(_parcelout_in=pickle.dumps((header, payload), protocol=pickle.HIGHEST_PROTOCOL))
            with contextlib.nullcontext() if state.ready else self._deadline(state, "start its first batch", batch.id):
                interp.exec("_parcelout.load(_parcelout_in)\ndel _parcelout_in")
            if state.gone:
                return
            state.ready = True
            state.known.add(call.token)
            if batch.policy.timeout is None:
                interp.exec("_parcelout.run_all()")
            else:
                for pos in range(n):
                    if batch.cancelled or state.abandoned:
                        break
                    self._report(ItemStarted(state.id, batch.id, pos))
                    interp.exec(f"_parcelout.run_one({pos})")
            interp.exec("_parcelout.finish()")
            values, errors, elapsed = _decode_reply(results.get_nowait())
        except Exception as exc:  # the interpreter failed outside the items' runs: they fail with it
            values, errors, elapsed = [None] * n, dict.fromkeys(range(n), exc), 0.0
        errors.update((pos, exc) for pos, exc in unsent.items() if pos < len(values))
        self._report(BatchDone(state.id, batch.id, values, errors, elapsed))

    @contextlib.contextmanager
    def _deadline(self, state: _Worker, what: str, batch_id: int = -1) -> Iterator[None]:
        """Report the worker dead if ``what`` has not happened within ``START_DEADLINE``."""
        met = False

        def expire() -> None:
            self._gone(state, f"its interpreter did not {what} within {START_DEADLINE:g} s", batch_id, lambda: met)

        timer = threading.Timer(START_DEADLINE, expire)
        timer.name, timer.daemon = f"{self._prefix}-deadline_{state.id}", True
        timer.start()
        try:
            yield
        finally:
            with self._lock:
                met = True  # too late if it is gone: the thread then looks at ``state.gone``
            timer.cancel()

    def _gone(self, state: _Worker, why: str, batch_id: int = -1, met: Callable[[], bool] = bool) -> None:
        """Report the worker dead before it was ready (once, and not once
        ``met()``), and abandon its thread."""
        with self._lock:
            if state.gone or met():
                return
            state.gone = state.abandoned = True
        self._report(WorkerExited(state.id, None, batch_id, -1, started=False, detail=why))


def _decode_reply(reply: bytes) -> tuple[list[Any], dict[int, BaseException], float]:
    elapsed, blob, positions, failures = pickle.loads(reply)
    values, errors = wire.decode(
        blob, lambda _: "parcelout: the item's result could not be unpickled in the main interpreter"
    )
    errors.update(wire.decode_failures(failures, positions))
    return values, errors, elapsed


# ---------------------------------------------------------------- inside the interpreter


class Runner:
    """The interpreter's side: runs what its thread loaded, replies on ``results``.

    Each method is one ``exec`` call from the thread, and raises nothing: a
    failure becomes the outcome of the items it concerns.
    """

    def __init__(self, results: Any) -> None:
        self._results = results
        self._fns: dict[int, Callable[..., Any] | BaseException] = {}
        self._clear(0)

    def _clear(self, n: int) -> None:
        self._fn: Callable[..., Any] | BaseException = _no_function
        self._star = False
        self._todo: dict[int, Any] = {}
        self._values: list[Any] = [None] * n
        self._errors: dict[int, BaseException] = {}
        self._elapsed = 0.0
        self._ran = 0  # the positions before this one have their outcome

    def initialize(self, blob: bytes) -> None:
        try:
            initializer, initargs = pickle.loads(blob)
            settle(initializer)(*initargs)  # its script's globals, shared with the functions
        except BaseException as exc:
            explain_import_error(exc)
            failure, _ = wire.encode([transportable(exc, _OWN_FILES)], lambda _: "")
            self._results.put_nowait(failure)
        else:
            self._results.put_nowait(b"")

    def load(self, message: bytes) -> None:
        (token, fn_bytes, star, n, unsent), payload = pickle.loads(message)
        self._clear(n)
        try:
            if fn_bytes is not None:
                if len(self._fns) >= FN_CACHE_SIZE:
                    self._fns.clear()
                self._fns[token] = _load_function(fn_bytes)
            self._fn, self._star = self._fns[token], star
            if isinstance(self._fn, BaseException):
                self._errors = dict.fromkeys(range(n), self._fn)
                return
            items, self._errors = wire.decode(
                payload, lambda _: "parcelout: the item could not be unpickled in the worker's interpreter"
            )
        except BaseException as exc:
            self._errors = dict.fromkeys(range(n), exc)
            return
        skip = set(self._errors).union(unsent)  # the unsent failed to pickle: their thread keeps the error
        self._todo = {pos: item for pos, item in enumerate(items) if pos not in skip}

    def run_all(self) -> None:
        positions = sorted(self._todo)
        self._run(positions)
        self._ran = len(self._values)

    def run_one(self, pos: int) -> None:
        self._run([pos] if pos in self._todo else [])
        self._ran = pos + 1

    def _run(self, positions: list[int]) -> None:
        fn = self._fn
        if not positions or isinstance(fn, BaseException):
            return
        values, errors, elapsed = run_batch(fn, self._star, [self._todo.pop(pos) for pos in positions])
        for at, pos in enumerate(positions):
            self._values[pos] = values[at]
            if at in errors:
                self._errors[pos] = errors[at]
        self._elapsed += elapsed

    def finish(self) -> None:
        """Reply ``(seconds, values, failed positions, failures)`` for the
        positions that ran, each value and failure encoded apart."""
        ran = self._ran
        try:
            values, errors = self._values[:ran], {p: e for p, e in self._errors.items() if p < ran}
            blob, unpicklable = wire.encode(
                values, lambda _: "parcelout: the item's result could not be pickled to send it back from the worker"
            )
            errors.update(unpicklable)
            positions = sorted(errors)
            for pos in positions:
                explain_import_error(errors[pos])
            failures, _ = wire.encode([transportable(errors[pos], _OWN_FILES) for pos in positions], lambda _: "")
            reply = pickle.dumps((self._elapsed, blob, positions, failures), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # even the encoding failed: every item that ran fails with it
            failures, _ = wire.encode([transportable(exc, _OWN_FILES)] * ran, lambda _: "")
            blank, _ = wire.encode([None] * ran, lambda _: "")
            reply = pickle.dumps((self._elapsed, blank, list(range(ran)), failures))
        finally:
            self._clear(0)  # keep no item, function or result while idle
        self._results.put_nowait(reply)


def _no_function(*args: Any) -> None:
    raise RuntimeError("parcelout: no batch was loaded in this interpreter")


def _load_function(fn_bytes: bytes) -> Callable[..., Any] | BaseException:
    try:
        fn: Callable[..., Any] = settle(pickle.loads(fn_bytes))  # sees what the initializer set
    except BaseException as exc:  # kept for the token's later batches, even a SystemExit
        exc.add_note("parcelout: the function could not be unpickled in the worker's interpreter")
        explain_import_error(exc)
        return exc
    with contextlib.suppress(Exception):  # only tracebacks are at stake
        locate(fn)  # a function sent by value: its tracebacks name the user's file and line
    return fn


_SINGLE_PHASE = re.compile(r"module (\S+) does not support loading in subinterpreters")


def explain_import_error(exc: BaseException) -> None:
    """Add a note to an exception caused by a module that cannot be imported
    in a sub-interpreter, saying so and what to do instead."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        found = _SINGLE_PHASE.search(str(cause)) if isinstance(cause, ImportError) else None
        if found:
            note = (
                f"parcelout: the module {found.group(1)} cannot be imported in a sub-interpreter (an extension "
                'module without multi-phase initialisation, as NumPy\'s are): use backend="process" (or "thread")'
            )
            if note not in getattr(exc, "__notes__", ()):
                exc.add_note(note)
            return
        cause = cause.__cause__ or cause.__context__


_OWN_FILES = frozenset({__file__})  # with run_batch's: the frames a traceback leaves out
