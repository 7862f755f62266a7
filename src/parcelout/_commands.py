"""``parcelout run``, ``parcelout status`` and ``parcelout results``: the command line over ``imap`` and the journal.

``run`` is one pass of data, in this order::

    --input FILE / - / --range N -> items -> imap(Apply(fn), on_error="return") -> one JSON line per item -> summary
                                      |                                                ^
                                      +-- Remembered: each item kept until its line ---+ (for its key)

Output lines come in input order, each written and flushed as its outcome arrives, so a killed run leaves whole
lines. A bad input line (invalid JSON, not UTF-8, no ``--key`` field) does not stop the run: it becomes a
``BadInput`` that ``Apply`` raises for in the worker, so it fails as its own item, naming its line, and the journal
records it like any other failure. ``Apply`` also fails an item whose result JSON cannot write, so every output
line stays valid JSON.

Exit status: 0 when every item succeeded, 1 when some failed (a summary on standard error), 2 for a usage error
(bad arguments, a function that cannot be found, an unreadable file or journal, a backend whose extra is not
installed): one line on standard error, never a traceback for a user's mistake. Ctrl-C (130) and SIGTERM (143) stop
the run the same way: workers stopped, what finished kept in the journal, a line saying how far it got.

The command line never destroys data: an ``--output`` that is the input file, or the journal (or SQLite's files
beside it), is refused, compared as files (links, other spellings), before anything is opened for writing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import itertools
import json
import os
import signal
import stat
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TextIO

import cloudpickle

import parcelout
from parcelout._api import _batches
from parcelout._journal import Journal, StoredOutcome, default_key, read_outcomes, read_summary, type_name
from parcelout._stream import flatten
from parcelout.errors import JournalError, RemoteError, describe_item

Key = str | int
KeyOf = Callable[[int, Any], Key]
TOP_ERRORS = 5  # error types named in the failure summary
BACKEND_CHOICES = ("auto", "serial", "thread", "process", "interpreter", "dask", "ray")
FLAG_OPTIONS = ("workers", "chunksize", "task_timeout", "retries")  # imap's keywords that are also flags of run
TRUST_OWNER_HELP = "use a journal that another user owns (its pickles run code when loaded: trust its owner)"
SIDE_FILES = ("-wal", "-shm", "-journal")  # SQLite's files beside a database


class UsageError(Exception):
    """A mistake in how the command was called: printed as one line, exit status 2."""


# ---------------------------------------------------------------- the commands


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``run``, ``status`` and ``results``; each sets ``handler``, which ``dispatch`` calls."""
    _add_run(commands)
    status = commands.add_parser("status", help="summarise a journal: done, failed, pending, rate, ETA, errors")
    status.add_argument("journal", metavar="JOURNAL", help="the journal file of a run (--journal)")
    status.set_defaults(handler=status_command)
    results = commands.add_parser("results", help="export a journal's outcomes as JSON lines, in input order")
    results.add_argument("journal", metavar="JOURNAL", help="the journal file of a run (--journal)")
    results.add_argument("--output", metavar="FILE", help="write here, not to standard output")
    results.add_argument("--trust-owner", action="store_true", help=TRUST_OWNER_HELP)
    results.set_defaults(handler=results_command)


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="apply MODULE:FUNC to each input item; write one JSON line per item",
        description="Apply MODULE:FUNC to each input item, on workers; write one JSON line per item, in input "
        "order: {index, key, value} or {index, key, error: {type, message, kind}}. Exit status: 0 when every "
        "item succeeded, 1 when some failed, 2 for a usage error.",
    )
    run.add_argument("function", metavar="MODULE:FUNC", help="the function, imported from the current directory first")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="FILE", help="JSON lines, one item a line; '-' for standard input")
    source.add_argument("--range", type=count, metavar="N", help="the items 0, 1, ..., N-1")
    run.add_argument("--lines", action="store_true", help="with --input: each line is one string item, not JSON")
    run.add_argument("--output", metavar="FILE", help="write here, not to standard output")
    run.add_argument("--workers", type=int, metavar="N", help="how many workers (default: chosen)")
    run.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="where items run (default: auto)")
    run.add_argument(
        "--address",
        metavar="URL",
        help="with --backend dask or ray: the cluster to run on (tcp://host:8786 for Dask, host:6379 for Ray)",
    )
    run.add_argument("--chunksize", type=int, metavar="N", help="items per batch (default: adaptive)")
    run.add_argument(
        "--task-timeout",
        type=float,
        metavar="SECONDS",
        help="fail an item that runs longer than this (its worker is stopped)",
    )
    run.add_argument("--timeout", type=float, metavar="SECONDS", help=argparse.SUPPRESS)  # the old --task-timeout
    run.add_argument("--retries", type=int, default=0, metavar="N", help="run a failed item up to N more times")
    run.add_argument("--journal", metavar="PATH", help="record outcomes in this SQLite file; a rerun resumes")
    run.add_argument("--retry-failed", action="store_true", help="with --journal: run the failed items again")
    run.add_argument(
        "--force", action="store_true", help="with --journal: resume from a journal written by another function"
    )
    run.add_argument("--trust-owner", action="store_true", help=TRUST_OWNER_HELP)
    run.add_argument("--key", metavar="FIELD", help="JSON-object items: the field that names each item")
    run.add_argument("--verbose", "-v", action="store_true", help="print what backend='auto' chose, and why")
    run.set_defaults(handler=run_command)


def dispatch(args: argparse.Namespace) -> int:
    """Run the command ``args`` names and return its exit status."""
    try:
        status: int = args.handler(args)
    except (UsageError, JournalError) as error:
        print(f"parcelout: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as `cat` does
        _silence_stdout()
        return 1
    except KeyboardInterrupt as stop:  # the workers are already torn down; whole lines are written
        print(f"parcelout: {stop_reason(stop)}", file=sys.stderr)
        return stop_status(stop)
    return status


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, systemd, Kubernetes): the run stops as on Ctrl-C, and exits with status 143."""


def stop_reason(stop: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"


def stop_status(stop: KeyboardInterrupt) -> int:
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


@contextlib.contextmanager
def sigterm_stops_like_ctrl_c() -> Iterator[None]:
    """While in this block, SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``) in the main thread, so the
    run stops as on Ctrl-C: workers stopped, what was committed in the journal kept. A second SIGTERM while it
    stops is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        if not stopping:
            signal.signal(signal.SIGTERM, previous)


def run_command(args: argparse.Namespace) -> int:
    """``parcelout run``: read the items, run them through ``imap``, write a line each, summarise."""
    _check_run_arguments(args)
    check_output(args.output, inputs=[args.input] if args.input is not None else [], journal=args.journal)
    fn = find_function(args.function)
    if args.backend in ("dask", "ray"):
        check_backend_installed(args.backend)
        # The cluster's workers may not have the user's module: send its code with the function.
        cloudpickle.register_pickle_by_value(sys.modules[args.function.partition(":")[0]])
    options = imap_options(args)
    tally = Tally()
    with sigterm_stops_like_ctrl_c():
        try:
            with contextlib.ExitStack() as files:
                items = read_input(args, files)
                outcomes = files.enter_context(
                    contextlib.closing(start(Apply(fn), items, options, verbose=args.verbose))
                )
                first = list(itertools.islice(outcomes, 1))  # the journal is checked, and workers start, here
                out = open_output(args.output, files)  # so a journal that cannot be used leaves the output as it was
                write_outcomes(itertools.chain(first, outcomes), items, key_function(args.key), out, tally)
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the workers are stopped, whole lines written
            print(f"parcelout: {stop_reason(stop)} after {stopped_summary(tally, args.journal)}", file=sys.stderr)
            return stop_status(stop)
    return summarize(tally)


def stopped_summary(tally: Tally, journal: str | None) -> str:
    failed = sum(tally.failures.values())
    text = f"{tally.items} {'item' if tally.items == 1 else 'items'} ({failed} failed)"
    if journal is not None:
        text += f"; the journal {journal} has what finished: run the same command again to resume"
    return text


def check_backend_installed(backend: str) -> None:
    """Refuse ``--backend dask`` or ``ray`` without its extra installed, as a usage error."""
    if backend == "dask":
        from parcelout.backends._dask import _distributed as need
    else:
        from parcelout.backends._ray import _ray as need
    try:
        need()
    except ImportError as error:
        raise UsageError(str(error)) from None


def check_output(output: str | None, *, inputs: list[str], journal: str | None) -> None:
    """Refuse an ``--output`` that is an input file or the journal (or one of SQLite's files beside it): opening
    it for writing would empty it. Compared as files (a link, another spelling of the path), before anything is
    opened for writing."""
    if output is None:
        return
    for path in inputs:
        if path == "-":
            if _is_file(sys.stdin.fileno(), output):
                raise UsageError(f"--output {output} is the file standard input reads: writing it would empty it")
        elif same_file(output, path):
            raise UsageError(f"--output {output} is the input file {path}: writing it would empty it first")
    if journal is not None:
        for suffix in ("", *SIDE_FILES):
            if same_file(output, journal + suffix) or same_file(output, os.path.realpath(journal) + suffix):
                what = "journal" if not suffix else f"journal's {suffix.lstrip('-')} file"
                raise UsageError(f"--output {output} is the {what} {journal + suffix}: writing it would destroy it")


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name the same file: the same device and inode when both exist (links
    included), else the same path once symbolic links and ``.`` are resolved."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _is_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(here.st_mode) and (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def status_command(args: argparse.Namespace) -> int:
    """``parcelout status``: the journal's summary, as its ``str()`` reports it."""
    print(read_summary(args.journal))
    return 0


def results_command(args: argparse.Namespace) -> int:
    """``parcelout results``: the journal's outcomes, one line each in input order, as ``run`` writes them.

    Items still running or pending (the run is going, or was killed) have no outcome yet: they are counted
    on standard error, not exported. The journal is opened (and checked) before the output is."""
    check_output(args.output, inputs=[], journal=args.journal)
    unsettled = 0
    outcomes = read_outcomes(args.journal, trust_owner=args.trust_owner)
    with contextlib.ExitStack() as files:
        out = open_output(args.output, files)
        for stored in outcomes:
            line = stored_line(stored)
            if line is None:
                unsettled += 1
            else:
                out.write(line + "\n")
    if unsettled:
        print(f"parcelout: {unsettled} items have no outcome yet (running or pending): not exported", file=sys.stderr)
    return 0


def stored_line(stored: StoredOutcome) -> str | None:
    """The line ``run`` wrote for this outcome; None for an item with none yet."""
    if stored.ok:
        line, _ = value_line(stored.index, stored.key, stored.value)
        return line
    if stored.status != "failed":
        return None
    type_name, message, kind = stored.error_type or "?", stored.error_message or "", stored.error_kind or "error"
    return error_line(stored.index, stored.key, type_name, message, kind)


def _check_run_arguments(args: argparse.Namespace) -> None:
    if args.lines and args.input is None:
        raise UsageError("--lines reads --input: give --input FILE (or - for standard input)")
    if args.key is not None and (args.input is None or args.lines):
        raise UsageError("--key FIELD names a field of JSON-object items: give --input FILE without --lines")
    if args.retry_failed and args.journal is None:
        raise UsageError("--retry-failed reruns the failed items of a journal: give --journal PATH")
    if args.address is not None and args.backend not in ("dask", "ray"):
        raise UsageError("--address names a cluster: give --backend dask or --backend ray too")
    if args.force and args.journal is None:
        raise UsageError("--force resumes from a journal that does not match: give --journal PATH")
    if args.trust_owner and args.journal is None:
        raise UsageError("--trust-owner uses a journal another user owns: give --journal PATH")


def count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {n}")
    return n


# ---------------------------------------------------------------- the function


def find_function(spec: str) -> Callable[[Any], Any]:
    """The callable ``MODULE:FUNC`` names (``FUNC`` may be dotted: ``jobs:Parser.parse``)."""
    module_name, colon, path = spec.partition(":")
    if not colon or not module_name or not path:
        raise UsageError(f"expected MODULE:FUNC, as in jobs:square, not {spec!r}")
    found: Any = import_user_module(module_name)
    for name in path.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no function {path!r}") from None
    if not callable(found):
        raise UsageError(f"{spec} is not callable: it is {describe_item(found)} ({type(found).__name__})")
    fn: Callable[[Any], Any] = found
    return fn


def import_user_module(name: str) -> Any:
    """Import ``name`` as ``python -m`` finds modules: the current directory first.

    Process workers are started with this ``sys.path``, so they find the module too.
    """
    here = os.getcwd()
    if sys.path[:1] != [here]:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
            raise UsageError(f"no module named {name!r} in the current directory or on sys.path") from None
        raise UsageError(f"importing module {name!r} failed: {error}") from None  # a module it imports is missing
    except Exception as error:
        raise UsageError(f"importing module {name!r} failed: {type(error).__name__}: {error}") from None


class Apply:
    """``fn(item)`` for a worker, checked at both ends: a ``BadInput`` raises instead of reaching ``fn``, and a
    result JSON cannot write raises ``TypeError``, so both fail as their item. Module-level, so process workers
    import it by reference. It wraps ``func`` as ``functools.wraps`` does, and names it ``func`` as
    ``functools.partial`` does, so the journal names, fingerprints and checks on resume the user's function,
    not ``Apply``."""

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, item: Any) -> Any:
        if isinstance(item, BadInput):
            raise ValueError(f"input line {item.line}: {item.reason}")
        result = self.func(item)
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise TypeError(not_json(error)) from None
        return result


def not_json(error: Exception) -> str:
    return f"the result is not JSON serializable: {error}"


# ---------------------------------------------------------------- input


@dataclass(frozen=True)
class BadInput:
    """Stands in the input for a line that is not an item: ``Apply`` raises for it, so only its item fails."""

    line: int  # 1-based
    reason: str


class Remembered:
    """The input items as ``imap`` takes them, each kept (in ``taken``) until its line is written: ``imap`` yields
    in input order, so the oldest item taken is the one whose outcome comes next. Memory stays within ``imap``'s
    window. Has a length when the input has one (``len()`` raises ``TypeError`` otherwise, as for a generator)."""

    def __init__(self, items: Iterable[Any], length: int | None) -> None:
        self.taken: deque[Any] = deque()
        self._items = items
        self._length = length

    def __iter__(self) -> Iterator[Any]:
        for item in self._items:
            self.taken.append(item)
            yield item

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("input of unknown length")
        return self._length


def read_input(args: argparse.Namespace, files: contextlib.ExitStack) -> Remembered:
    """The items: ``range(N)``, or the lines of a file or of standard input, parsed one by one as ``imap``
    pulls them. A regular file (standard input too, when redirected from one) is counted first, so the
    progress bar has a total and ``backend="auto"`` knows the run's length."""
    if args.range is not None:
        return Remembered(range(args.range), args.range)
    stream = sys.stdin.buffer if args.input == "-" else open_input(args.input, files)
    if args.lines:
        return Remembered(text_lines(stream), count_lines(stream, lambda raw: True))
    return Remembered(json_lines(stream, args.key), count_lines(stream, lambda raw: not is_blank(raw)))


def open_input(path: str, files: contextlib.ExitStack) -> IO[bytes]:
    try:
        return files.enter_context(open(path, "rb"))
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None


def count_lines(stream: IO[bytes], counts: Callable[[bytes], bool]) -> int | None:
    """How many lines ``counts``, reading a regular file through once and back; None for a pipe or terminal."""
    try:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return None
        start = stream.tell()
    except (OSError, ValueError):
        return None
    n = sum(1 for raw in stream if counts(raw))
    stream.seek(start)
    return n


def json_lines(stream: IO[bytes], key_field: str | None) -> Iterator[Any]:
    """One item per JSON line; blank lines are skipped (and counted: line numbers are the file's)."""
    for number, raw in enumerate(stream, start=1):
        if not is_blank(raw):
            yield parse_json_line(number, raw, key_field)


def parse_json_line(number: int, raw: bytes, key_field: str | None) -> Any:
    try:
        item = json.loads(decode(number, raw))
    except UnicodeDecodeError as error:
        return BadInput(number, f"not UTF-8: {error.reason} at byte {error.start}")
    except json.JSONDecodeError as error:
        return BadInput(number, f"invalid JSON: {error.msg} (column {error.colno})")
    if key_field is None:
        return item
    if not isinstance(item, dict) or key_field not in item:
        return BadInput(number, f"no field {key_field!r} (--key) in {describe_item(item)}")
    key = item[key_field]
    if isinstance(key, bool) or not isinstance(key, str | int):
        return BadInput(number, f"field {key_field!r} (--key) is not a string or an integer: {describe_item(key)}")
    return item


def text_lines(stream: IO[bytes]) -> Iterator[Any]:
    """One string item per line, without its line ending; an empty line is the item ``""``."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield decode(number, raw).removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError as error:
            yield BadInput(number, f"not UTF-8: {error.reason} at byte {error.start}")


def decode(number: int, raw: bytes) -> str:
    return raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark can open a file


def is_blank(raw: bytes) -> bool:
    return not raw.strip()


# ---------------------------------------------------------------- imap


def imap_options(args: argparse.Namespace) -> dict[str, Any]:
    """``imap``'s keyword options from the flags (``on_error`` aside)."""
    options: dict[str, Any] = {
        "workers": args.workers,
        "backend": args.backend,
        "chunksize": args.chunksize,
        "task_timeout": args.task_timeout,
        "retries": args.retries,
        "progress": sys.stderr.isatty(),
    }
    if args.address is not None:
        options["address"] = args.address
    if args.journal is not None:
        journal = Journal(args.journal, force=args.force, trust_owner=args.trust_owner)
        options.update(journal=journal, retry_failed=args.retry_failed)
        if args.key is not None:
            options["key"] = ItemField(args.key)
    if args.timeout is not None:
        if args.task_timeout is not None:
            raise UsageError("give --task-timeout, not both it and --timeout (its old name)")
        print("parcelout: --timeout is now spelt --task-timeout; --timeout will stop working", file=sys.stderr)
        options["task_timeout"] = args.timeout
    return options


def start(
    fn: Apply, items: Remembered, options: dict[str, Any], *, verbose: bool = False
) -> Generator[Any, None, None]:
    """``imap(fn, items, on_error="return", ...)``, as ``imap`` makes it (with ``verbose``, the plan
    ``backend="auto"`` makes is printed), with its option errors (raised at the call, before any
    worker starts) as usage errors."""
    try:
        on_plan = print_plan if verbose else None
        stream = _batches(fn, items, ordered=True, on_error="return", where="run", options=options, on_plan=on_plan)
        return flatten(stream)
    except (TypeError, ValueError) as error:
        message = str(error)
        first = message.split(" ", 1)[0]
        if first in FLAG_OPTIONS:  # imap names a keyword; the user typed a flag
            message = f"--{first.replace('_', '-')} {message.split(' ', 1)[1]}"
        raise UsageError(message) from None


def print_plan(plan: parcelout.Plan) -> None:
    print(plan, file=sys.stderr, flush=True)


class ItemField:
    """``item[field]``, the key ``--key FIELD`` gives an item (a bad line's is its line number). Module-level,
    so it pickles."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"--key {self.name}"  # what the journal records: another field is another run

    def __call__(self, item: Any) -> Key:
        if isinstance(item, BadInput):
            return f"line {item.line}"
        key: Key = item[self.name]
        return key


def key_function(key_field: str | None) -> KeyOf:
    """The ``key`` an output line shows for item ``index``: its ``--key`` field, else the journal's default key."""
    if key_field is not None:
        by_field = ItemField(key_field)
        return lambda index, item: by_field(item)
    return default_key


# ---------------------------------------------------------------- output


@dataclass
class Tally:
    """How many items were written, and the failures among them by error type."""

    items: int = 0
    failures: Counter[str] = field(default_factory=Counter)


def open_output(path: str | None, files: contextlib.ExitStack) -> TextIO:
    if path is None:
        return sys.stdout
    try:
        return files.enter_context(open(path, "w", encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror}") from None


def write_outcomes(outcomes: Iterable[Any], items: Remembered, key_of: KeyOf, out: TextIO, tally: Tally) -> None:
    """Write one line per outcome as it comes, flushed, so a killed run leaves whole lines; count them, and the
    failures, in ``tally``."""
    for index, outcome in enumerate(outcomes):
        key = key_of(index, items.taken.popleft())
        line, failed = outcome_line(index, key, outcome)
        out.write(line + "\n")
        out.flush()
        tally.items += 1
        if failed is not None:
            tally.failures[failed] += 1


def outcome_line(index: int, key: Key, outcome: Any) -> tuple[str, str | None]:
    """The line for a result or a ``Failure``, and the error type it reports (None for a result)."""
    if isinstance(outcome, parcelout.Failure):
        type_name, message = error_fields(outcome.error)
        return error_line(index, key, type_name, message, outcome.kind), type_name
    return value_line(index, key, outcome)


def value_line(index: int, key: Key, value: Any) -> tuple[str, str | None]:
    """The line for a result, and None; or, for a result JSON cannot write, an error line and ``"TypeError"``."""
    try:
        return json.dumps({"index": index, "key": key, "value": value}, allow_nan=False), None
    except (TypeError, ValueError) as error:
        return error_line(index, key, "TypeError", not_json(error), "error"), "TypeError"


def error_line(index: int, key: Key, type_name: str, message: str, kind: str) -> str:
    return json.dumps({"index": index, "key": key, "error": {"type": type_name, "message": message, "kind": kind}})


def error_fields(error: BaseException) -> tuple[str, str]:
    """The error's type name (qualified, builtins aside) and message; for one that could not travel back from
    a worker, the original's."""
    if isinstance(error, RemoteError):
        return error.type_name, error.message
    return type_name(type(error)), str(error)  # named as the journal names it: ``results`` writes the same


def summarize(tally: Tally) -> int:
    """The exit status; when some items failed, a line on standard error says how many, and of what."""
    if not tally.failures:
        return 0
    failed = sum(tally.failures.values())
    kinds = ", ".join(f"{name} ({count})" for name, count in tally.failures.most_common(TOP_ERRORS))
    if len(tally.failures) > TOP_ERRORS:
        kinds += f", and {len(tally.failures) - TOP_ERRORS} more types"
    noun = "item" if tally.items == 1 else "items"
    print(f"parcelout: {failed} of {tally.items} {noun} failed: {kinds}", file=sys.stderr)
    return 1


def _silence_stdout() -> None:
    """Point standard output at the null device, so the interpreter's last flush finds no broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
