"""The journal: a run recorded in SQLite, so that a killed run resumes.

``journal="run.db"`` puts a ``JournalLane`` around a stream's lane. For each
item the feeder hands out it computes the item's key and looks it up:

* done before: its stored result goes back in its place, without running;
* failed before: its stored failure goes back, unless ``retry_failed``;
* otherwise the item is marked running and goes to the lane below.

Every result that comes back is written, and the transaction committed,
before the stream sees it, so whatever the caller was given survives a kill.
One transaction per batch keeps the cost low. The file is SQLite in WAL mode:
another process may read it (``parcelout status``) while the run writes.

A journal belongs to one run at a time (an exclusive ``flock`` on the file,
which the kernel releases when the process dies, however it dies), and to one
function: its qualified name and a fingerprint of its code are stored, and a
journal written by another function, or with another ``key``, is refused
unless forced. The fingerprint holds nothing that changes from process to
process (addresses in reprs, the order of a set), so a resumed run matches.

With ``key=``, a key is one item's: a key that a second item of the run
gives is refused (``JournalError`` naming both), before the second item is
given anything, as is a key that is not a str or an int.

A new journal is made whole (schema and run record) in a file beside it, then
linked into place, so a reader never finds a half-made one. An existing file
is checked, reading only, before anything in it changes: a foreign SQLite
file is refused as it is.

Stored results are pickles, so loading a journal runs code: the file is made
readable by its owner only, and a journal (or write-ahead log) that another
user owns is refused unless ``trust_owner``. A stored value that cannot be
loaded is a ``JournalError`` naming its item.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import pickle
import re
import sqlite3
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any, Literal

from parcelout._core._messages import Batch, BatchResult, Call, Policy
from parcelout._options import RunOptions
from parcelout.backends._wire import dumps
from parcelout.errors import JournalError, RemoteError, RemoteTraceback, describe_item

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock against a second run
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "Journal",
    "JournalError",
    "JournalSummary",
    "StoredOutcome",
    "default_key",
    "read_outcomes",
    "read_summary",
]

SCHEMA_VERSION = 1
Durability = Literal["normal", "full"]
_SQLITE_MAGIC = b"SQLite format 3\x00"
_LOOKUP_CHUNK = 500  # host parameters per query, well under SQLite's limit
_RECENT_SECONDS = 60.0  # the throughput that ``status`` reports is over this much time
_LOCK_PATIENCE = 0.5  # seconds a run waits for a journal's lock that a reader may hold for a moment

_SCHEMA = """
CREATE TABLE run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    function TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    options TEXT NOT NULL,
    total INTEGER,
    created REAL NOT NULL,
    resumed REAL,
    pid INTEGER
);
CREATE TABLE items (
    key TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    seconds REAL,
    worker TEXT,
    result BLOB,
    result_json TEXT,
    error_type TEXT,
    error_message TEXT,
    error_kind TEXT,
    error_traceback TEXT,
    error BLOB
);
CREATE INDEX items_by_index ON items (idx);
"""


# ---------------------------------------------------------------- identity
def default_key(index: int, item: object) -> str:
    """An item's key without ``key=``: its input index and a hash of its
    pickle, so that input changed or reordered since the journal was written
    is noticed rather than given another item's result."""
    blob = pickle.dumps(item, protocol=4) if _plain_data(item) else dumps(item)
    return f"{index}:{hashlib.blake2b(blob, digest_size=8).hexdigest()}"


def _plain_data(item: object) -> bool:
    return type(item) in (int, str, bytes, float, bool, type(None), tuple, list, dict)


def fingerprint(fn: Callable[..., Any]) -> str:
    """A hash of what ``fn`` computes with: its code (and that of the functions
    it defines), constants and names; not its line numbers, so moving a
    function in its file does not change it."""
    digest = hashlib.sha256()
    _feed(digest, fn, depth=0)
    return digest.hexdigest()[:16]


def _feed(digest: Any, obj: object, depth: int) -> None:
    if depth > 8:
        return
    code = getattr(obj, "__code__", None)
    if code is not None:
        _feed_code(digest, code)
        for cell in getattr(obj, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                _feed_value(digest, cell.cell_contents, depth + 1)
    elif hasattr(obj, "func"):  # functools.partial
        _feed(digest, obj.func, depth + 1)
        for arg in getattr(obj, "args", ()):
            _feed_value(digest, arg, depth + 1)
        for name, arg in sorted((getattr(obj, "keywords", None) or {}).items()):
            digest.update(name.encode())
            _feed_value(digest, arg, depth + 1)
    elif callable(obj) and not isinstance(obj, type):
        _feed(digest, type(obj).__call__, depth + 1)
    digest.update(qualified_name(obj).encode())


def _feed_value(digest: Any, value: object, depth: int) -> None:
    """A value a function holds (a closure's cell, a partial's argument): a function by its code, anything else
    by a repr that is the same from run to run."""
    if getattr(value, "__code__", None) is not None or isinstance(value, functools.partial):
        _feed(digest, value, depth)
    else:
        digest.update(stable_repr(value).encode())
    digest.update(b"\x00")


_ADDRESS = re.compile(r"\bat 0x[0-9a-fA-F]+")


def stable_repr(value: object, depth: int = 0) -> str:
    """``repr(value)`` without what changes from one run to the next: memory addresses (``<Client object at
    0x7f...>``), and the order of a set's elements (string hashes are salted per process)."""
    try:
        if depth > 8:
            text = type(value).__qualname__
        elif isinstance(value, set | frozenset):
            text = f"{type(value).__name__}({sorted(stable_repr(v, depth + 1) for v in value)})"
        elif isinstance(value, list | tuple) and type(value) in (list, tuple):
            text = f"{type(value).__name__}({[stable_repr(v, depth + 1) for v in value]})"
        elif isinstance(value, dict) and type(value) is dict:
            text = f"dict({[(stable_repr(k, depth + 1), stable_repr(v, depth + 1)) for k, v in value.items()]})"
        else:
            text = repr(value)
    except Exception:  # a repr that fails: the type is what is stable
        text = type(value).__qualname__
    return _ADDRESS.sub("at 0x", text)


def _feed_code(digest: Any, code: Any) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            _feed_code(digest, const)
        else:
            digest.update(repr(const).encode())


def qualified_name(obj: object) -> str:
    """``module:qualname`` of a function, class or callable instance (of the
    function inside a ``functools.partial``)."""
    obj = getattr(obj, "func", obj)
    target = obj if hasattr(obj, "__qualname__") else type(obj)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}:{getattr(target, '__qualname__', type(target).__name__)}"


def _describe_key(key: Callable[[Any], Any] | None) -> str | None:
    """What names the ``key`` option in the run's identity: a function by its
    name, another callable (``operator.itemgetter("id")``) by its repr, unless
    that repr holds an address, which changes from run to run."""
    if key is None:
        return None
    if inspect.isfunction(key) or inspect.ismethod(key):
        return qualified_name(key)
    text = repr(key)
    return qualified_name(key) if " at 0x" in text else text


# ---------------------------------------------------------------- the journal
@dataclasses.dataclass(frozen=True)
class Journal:
    """Where and how a run is recorded: pass as ``journal=`` to resume a run.

    A path alone (``journal="run.db"``) means ``Journal("run.db")``.

    Args:
        path: the SQLite file; created (readable by its owner only) if it
            does not exist.
        durability: ``"normal"`` (what was committed survives a crash or
            kill of the process; a power loss may take the last few seconds)
            or ``"full"`` (each commit is flushed to the disk: it also
            survives a power loss, at a cost per batch).
        force: use a journal written by another function, or another
            ``key``, as if it were this run's (its done items count as done).
        trust_owner: use a journal that another user owns (or whose
            write-ahead log another user owns). Without it such a journal is
            refused: it holds pickles, and loading a pickle runs code.
    """

    path: str | os.PathLike[str]
    durability: Durability = "normal"
    force: bool = False
    trust_owner: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.path, str | os.PathLike):
            raise TypeError(f"journal must be a path or a parcelout.Journal, not {type(self.path).__name__}")
        if self.durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', not {self.durability!r}")

    @classmethod
    def of(cls, spec: object) -> Journal | None:
        """The ``journal=`` option as a Journal (None for no journal)."""
        if spec is None or isinstance(spec, Journal):
            return spec
        return cls(spec)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Stored:
    """An item's row, as a resume needs it."""

    index: int
    status: str
    attempts: int
    result: bytes | None
    result_json: str | None
    error: bytes | None
    error_type: str | None
    error_message: str | None
    error_kind: str | None
    error_traceback: str | None


class JournalFile:
    """An open journal: the run's lock, its identity, its rows."""

    def __init__(self, spec: Journal, fn: Callable[..., Any], key: Callable[[Any], Any] | None) -> None:
        self.path = os.fspath(spec.path)
        self._lock_fd: int | None = None
        function, fp, options = qualified_name(fn), fingerprint(fn), json.dumps({"key": _describe_key(key)})
        _check_path(self.path)
        if not os.path.lexists(self.path):
            _create(self.path, function, fp, options)
        # Read-only, before anything is changed: whose it is, and that it is an intact journal.
        if not spec.trust_owner:
            _check_owner(self.path)
        _check_file(self.path)
        self._lock()
        try:
            self.db = _connect(self.path)
            self.db.execute(f"PRAGMA synchronous={'FULL' if spec.durability == 'full' else 'NORMAL'}")
            self._check(self.db, function, fp, options, spec.force)
            # The keys of this run's items, to refuse a key given to two of them (in a temporary file, not in memory:
            # a run may be long).
            self.db.execute("CREATE TEMP TABLE seen (key TEXT PRIMARY KEY, idx INTEGER NOT NULL)")
            with self.db:
                self.db.execute("UPDATE run SET resumed = ?, pid = ?", (time.time(), os.getpid()))
        except sqlite3.DatabaseError as exc:
            self.close()
            raise JournalError(f"the journal {self.path} is damaged ({exc}); nothing was run") from exc
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise JournalError(f"the journal {self.path} cannot be opened: {exc.strerror}") from None
        # A reader (``parcelout status``) holds a shared lock for a moment to see whether a run is live; a run
        # holds its lock for its life. So a lock still held after a short while is a run's.
        deadline = time.monotonic() + _LOCK_PATIENCE
        pause = threading.Event()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    pause.wait(0.005)  # a bounded wait for a reader's probe to end
                    continue
                os.close(fd)
                raise JournalError(
                    f"the journal {self.path} is in use by another run{_holder(self.path)}; "
                    "wait for it to end, or use another journal"
                ) from None
            except BaseException:
                os.close(fd)
                raise
        self._lock_fd = fd

    def _check(self, db: sqlite3.Connection, function: str, fp: str, options: str, force: bool) -> None:
        row = db.execute("SELECT version, function, fingerprint, options FROM run").fetchone()
        if row is None:
            raise JournalError(f"the journal {self.path} is damaged: it has no run record")
        version, was_function, was_fp, was_options = row
        if version != SCHEMA_VERSION:
            raise JournalError(f"the journal {self.path} was written by another parcelout (format {version})")
        if force:
            with db:
                db.execute("UPDATE run SET function = ?, fingerprint = ?, options = ?", (function, fp, options))
            return
        if was_function != function:
            why = f"it records a run of {was_function}, not {function}"
        elif was_fp != fp:
            why = f"the code of {function} changed since it was written"
        elif was_options != options:
            why = f"it was written with other options ({was_options}, now {options})"
        else:
            return
        raise JournalError(
            f"the journal {self.path} does not match this run: {why}. Use another journal, or pass "
            f"journal=parcelout.Journal({self.path!r}, force=True) (parcelout run: --force) to resume from it anyway"
        )

    def set_total(self, total: int | None) -> None:
        if total is not None:
            self.db.execute("UPDATE run SET total = ?", (total,))

    def lookup(self, keys: list[str]) -> dict[str, Stored]:
        found: dict[str, Stored] = {}
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            part = keys[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                "SELECT key, idx, status, attempts, result, result_json, error, error_type, error_message, "
                f"error_kind, error_traceback FROM items WHERE key IN ({marks})",
                part,
            )
            for key, *fields in rows:
                found[key] = Stored(*fields)
        return found

    def keys_at(self, indexes: list[int]) -> dict[int, str]:
        """The keys stored at these input positions."""
        found: dict[int, str] = {}
        for start in range(0, len(indexes), _LOOKUP_CHUNK):
            part = indexes[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(part))
            found.update(self.db.execute(f"SELECT idx, key FROM items WHERE idx IN ({marks})", part).fetchall())
        return found

    def claim(self, rows: list[tuple[str, int]]) -> None:
        """Note that these (key, index) are items of this run; refuse a key that another item of the run has: it
        would be given that item's result."""
        try:
            self.db.executemany("INSERT INTO temp.seen (key, idx) VALUES (?, ?)", rows)
        except sqlite3.IntegrityError:  # a key seen before: which one (the rows before it went in)
            for key, index in rows:
                first = self.db.execute("SELECT idx FROM temp.seen WHERE key = ?", (key,)).fetchone()
                if first is not None and first[0] != index:
                    raise _repeated_key(key, first[0], index) from None
            raise

    def mark_running(self, rows: list[tuple[str, int]]) -> None:
        now = time.time()
        self.db.executemany(
            "INSERT INTO items (key, idx, status, started) VALUES (?, ?, 'running', ?) "
            "ON CONFLICT (key) DO UPDATE SET idx = excluded.idx, status = 'running', started = excluded.started",
            [(key, index, now) for key, index in rows],
        )

    def record(
        self,
        done: list[tuple[Any, ...]],
        failed: list[tuple[Any, ...]],
        unstored: list[tuple[Any, ...]],
        worker: str | None,
    ) -> None:
        """Write outcomes and commit. ``done``: (attempts, seconds, result,
        result_json, key); ``failed``: (attempts, seconds, kind, type,
        message, traceback, pickled error, key); ``unstored``: (message, key)
        for results that could not be pickled (they run again on resume)."""
        now = time.time()
        with self.db:
            self.db.executemany(
                "UPDATE items SET status = 'done', attempts = attempts + ?, finished = ?, seconds = ?, worker = ?, "
                "result = ?, result_json = ?, error = NULL, error_type = NULL, error_message = NULL, "
                "error_kind = NULL, error_traceback = NULL WHERE key = ?",
                [(a, now, s, worker, r, j, k) for a, s, r, j, k in done],
            )
            self.db.executemany(
                "UPDATE items SET status = 'failed', attempts = attempts + ?, finished = ?, seconds = ?, worker = ?, "
                "error_kind = ?, error_type = ?, error_message = ?, error_traceback = ?, error = ?, result = NULL, "
                "result_json = NULL WHERE key = ?",
                [(a, now, s, worker, kind, t, m, tb, e, k) for a, s, kind, t, m, tb, e, k in failed],
            )
            self.db.executemany(
                "UPDATE items SET status = 'pending', finished = ?, error_message = ? WHERE key = ?",
                [(now, m, k) for m, k in unstored],
            )

    def close(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.commit()
                db.execute("UPDATE run SET pid = NULL")
                db.commit()
            db.close()
            self.db = None  # type: ignore[assignment]
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        return sqlite3.connect(_read_only_uri(path), uri=True, timeout=10, check_same_thread=False)
    db = sqlite3.connect(path, timeout=10, isolation_level="DEFERRED", check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
    except BaseException:
        db.close()
        raise
    return db


def _read_only_uri(path: str) -> str:
    """A URI that opens ``path`` read-only (quoted: a ``?`` or ``#`` in a file name is the name's)."""
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"


def _check_path(path: str) -> None:
    """Refuse, clearly, a path that cannot be a journal file: a directory, a dangling link, a missing directory."""
    if os.path.isdir(path):
        raise JournalError(f"the journal {path} is a directory, not a journal file")
    if os.path.islink(path) and not os.path.exists(path):
        raise JournalError(
            f"the journal {path} is a symbolic link to {os.readlink(path)}, which does not exist; nothing was run"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise JournalError(f"cannot create the journal {path}: there is no directory {os.path.dirname(path)}")


def _create(path: str, function: str, fp: str, options: str) -> None:
    """Make a new journal at ``path``, complete before it appears there: its schema and run record are written in
    a file beside it, which is then linked into place (never over a journal another run made meanwhile), so a
    reader (``parcelout status``) finds no journal or a whole one, never a half-made one."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".new", dir=directory)  # 0o600
    except OSError as exc:
        raise JournalError(f"cannot create the journal {path}: {exc.strerror}") from None
    os.close(fd)
    try:
        db = sqlite3.connect(temp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
            db.execute(
                "INSERT INTO run (id, version, function, fingerprint, options, created) VALUES (1, ?, ?, ?, ?, ?)",
                (SCHEMA_VERSION, function, fp, options, time.time()),
            )
        finally:
            db.close()  # the last connection: the log is folded into the file and removed
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another run made it first: the lock and the checks decide
        except OSError:  # a file system without hard links: rename, unless one appeared meanwhile
            if not os.path.lexists(path):
                os.replace(temp, path)
    except (OSError, sqlite3.Error) as exc:
        raise JournalError(f"cannot create the journal {path}: {exc}") from None
    finally:
        for name in (temp, temp + "-wal", temp + "-shm", temp + "-journal"):
            with contextlib.suppress(OSError):
                os.unlink(name)


def _check_owner(path: str) -> None:
    """Refuse a journal (or a log SQLite would replay into it) that another user owns: its pickles would run that
    user's code. Root's files, like one's own, are trusted."""
    if not hasattr(os, "geteuid"):  # pragma: no cover - not POSIX
        return
    me = os.geteuid()
    for name in (path, path + "-wal", path + "-journal"):
        try:
            owner = os.stat(name).st_uid
        except OSError:
            continue
        if owner not in (me, 0):
            raise JournalError(
                f"the journal {name} belongs to another user (uid {owner}); it holds pickled results, and loading a "
                "pickle runs code, so it was not opened. If you trust that user, pass "
                f"journal=parcelout.Journal({path!r}, trust_owner=True) (parcelout run and results: --trust-owner), "
                "or use a copy of your own"
            )


def _check_file(path: str) -> None:
    """Refuse, reading only, a file that is not an intact parcelout journal: never start afresh over a journal
    that was damaged, and change nothing in another program's database (not even its journal mode)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise JournalError(f"the journal {path} cannot be read: {exc.strerror}") from None
    if head != _SQLITE_MAGIC:
        what = "empty" if not head else "not a SQLite database"
        raise JournalError(f"the journal {path} is damaged or not a journal ({what}); nothing was run")
    try:
        db = sqlite3.connect(_read_only_uri(path), uri=True, timeout=10)
        try:
            verdict = db.execute("PRAGMA quick_check").fetchone()
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"the journal {path} is damaged ({exc}); nothing was run") from exc
    if verdict is None or verdict[0] != "ok":
        why = verdict[0] if verdict else "no verdict"
        raise JournalError(f"the journal {path} is damaged ({why}); nothing was run")
    if not {"run", "items"} <= tables:
        raise JournalError(f"{path} is a SQLite database but not a parcelout journal; nothing was run")


def _repeated_key(key: str, first: int, then: int) -> JournalError:
    return JournalError(
        f"items {first} and {then} have the same key {key}: the journal would give item {then} the result of item "
        f"{first}. key= must give each item a key of its own"
    )


def _holder(path: str) -> str:
    try:
        db = _connect(path, readonly=True)
        try:
            row = db.execute("SELECT pid FROM run").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return ""
    return f" (process {row[0]})" if row and row[0] else ""


# ---------------------------------------------------------------- the lane
class JournalLane:
    """A lane that skips what the journal has and records what comes back."""

    def __init__(self, inner: Any, journal: JournalFile, options: RunOptions) -> None:
        self._inner = inner
        self._journal = journal
        self._key = options.key
        self._retry_failed = options.retry_failed
        self._ready: deque[BatchResult] = deque()
        self._keys: dict[int, str] = {}  # input index -> key, for items out at the lane below

    @property
    def workers(self) -> int:
        return int(self._inner.workers)

    @property
    def inline(self) -> bool:
        return bool(self._inner.inline)

    @property
    def batch_seconds(self) -> float:
        return float(self._inner.batch_seconds)

    @property
    def plan(self) -> Any:
        return getattr(self._inner, "plan", None)

    def serial_now(self) -> bool:
        return False  # every item goes through the journal

    def cancel(self) -> None:
        self._inner.cancel()

    def wake(self) -> None:
        self._inner.wake()

    def close(self) -> None:
        self._journal.close()

    def submit(self, call: Call, items: list[tuple[int, Any]], policy: Policy) -> None:
        keys: list[str | None] = []
        fates: list[_Fate | None] = []  # None: run it; else what it ended as before
        for index, item in items:
            try:
                keys.append(self._key_of(index, item))
            except JournalError:
                raise
            except Exception as exc:
                exc.add_note(f"parcelout: item {index} ({describe_item(item)}) has no journal key")
                keys.append(None)
                fates.append((None, exc, 1))
            else:
                fates.append(None)
        if self._key is not None:  # a default key holds the item's index: no two can be the same
            self._journal.claim([(key, index) for (index, _), key in zip(items, keys, strict=True) if key is not None])
        stored = self._journal.lookup([k for k in keys if k is not None])
        if self._key is None:
            self._check_unchanged(items, keys, stored)
        for pos, key in enumerate(keys):
            row = stored.get(key) if key is not None else None
            if row is not None and self._settled(row):
                fates[pos] = self._fate(row, key)
        # Contiguous runs of the same fate: the collector wants each batch to
        # cover consecutive positions.
        start = 0
        for end in range(1, len(items) + 1):
            if end == len(items) or (fates[end] is None) != (fates[start] is None):
                if fates[start] is None:
                    self._send(call, items[start:end], keys[start:end], policy)
                else:
                    self._ready.append(_replay(call, items[start:end], fates[start:end], self._ready.append))
                start = end

    def next_result(self) -> BatchResult:
        if self._ready:
            return self._ready.popleft()
        result: BatchResult = self._inner.next_result()
        if result.batch.items:
            self._record(result)
        return result

    # ------------------------------------------------------------ helpers
    def _key_of(self, index: int, item: Any) -> str:
        if self._key is None:
            return default_key(index, item)
        key = self._key(item)
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise JournalError(
                f"the key of item {index} ({describe_item(item)}) is {describe_item(key)}, a {type(key).__name__}: "
                "key= must give each item a str or an int of its own"
            )
        return json.dumps(key)

    def _fate(self, row: Stored, key: str | None) -> _Fate:
        try:
            return _fate(row)
        except Exception as exc:
            raise JournalError(
                f"the journal {self._journal.path} is damaged: the recorded result of item {row.index} (key {key}) "
                f"cannot be loaded ({type(exc).__name__}: {exc}). Use another journal"
            ) from exc

    def _settled(self, row: Stored | None) -> bool:
        if row is None:
            return False
        return row.status == "done" or (row.status == "failed" and not self._retry_failed)

    def _check_unchanged(self, items: list[tuple[int, Any]], keys: list[str | None], stored: dict[str, Stored]) -> None:
        missing = [index for (index, _), key in zip(items, keys, strict=True) if key is not None and key not in stored]
        if not missing:
            return
        for index, was in self._journal.keys_at(missing).items():
            item = items[index - items[0][0]][1]
            raise JournalError(
                f"item {index} ({describe_item(item)}) is not the item the journal {self._journal.path} has at "
                f"position {index} (key {was}): the input changed or was reordered since the journal was written. "
                "Pass key= to name items by something stable, or use another journal"
            )

    def _send(self, call: Call, part: list[tuple[int, Any]], keys: list[str | None], policy: Policy) -> None:
        rows = [(key, index) for (index, _), key in zip(part, keys, strict=True) if key is not None]
        self._keys.update((index, key) for key, index in rows)
        self._journal.mark_running(rows)
        self._inner.submit(call, part, policy)

    def _record(self, result: BatchResult) -> None:
        items = result.batch.items
        seconds = result.elapsed / max(1, len(items))
        done: list[tuple[Any, ...]] = []
        failed: list[tuple[Any, ...]] = []
        unstored: list[tuple[Any, ...]] = []
        for pos, (index, _) in enumerate(items):
            key = self._keys.pop(index, None)
            if key is None:
                continue  # no key: nothing to record
            attempts = result.attempts.get(pos, result.batch.attempt)
            if pos in result.errors:
                failed.append((attempts, seconds, *_describe_error(result.errors[pos]), key))
                continue
            try:
                blob, as_json = _store_result(result.values[pos])
            except Exception as exc:
                unstored.append((f"the result could not be stored: {type(exc).__name__}: {exc}", key))
            else:
                done.append((attempts, seconds, blob, as_json, key))
        self._journal.record(done, failed, unstored, _worker_name(result.worker, self._inner))


def _worker_name(worker: int | None, lane: Any) -> str:
    """What the journal says ran a batch: ``worker 3`` (the pool's numbering:
    a replaced worker gets a new number), or ``caller`` for the calling thread."""
    if worker is not None:
        return f"worker {worker}"
    return "caller" if getattr(lane, "inline", False) else "?"


_Fate = tuple[Any, BaseException | None, int]
"""What a settled item ended as: (value, exception or None, attempts)."""


def _fate(row: Stored) -> _Fate:
    if row.status == "done":
        return _load_result(row), None, row.attempts
    return None, _load_error(row), row.attempts


def _replay(
    call: Call, part: list[tuple[int, Any]], fates: list[_Fate | None], report: Callable[[BatchResult], None]
) -> BatchResult:
    """A batch result for items that do not run again."""
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    attempts: dict[int, int] = {}
    for pos, fate in enumerate(fates):
        assert fate is not None
        value, error, attempts[pos] = fate
        values.append(value)
        if error is not None:
            errors[pos] = error
    return BatchResult(Batch(0, call, part, report), values, errors, 0.0, attempts)


def _store_result(value: Any) -> tuple[bytes | None, str | None]:
    """A result as JSON if it is plain JSON data (and comes back equal), else pickled."""
    try:
        text = json.dumps(value, allow_nan=False)
        if json.loads(text) == value and _json_types(value):
            return None, text
    except (TypeError, ValueError, RecursionError):
        pass
    return dumps(value), None


def _json_types(value: Any) -> bool:
    kind = type(value)
    if kind in (str, int, float, bool, type(None)):
        return True
    if kind is list:
        return all(_json_types(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _json_types(v) for k, v in value.items())
    return False


def _load_result(row: Stored) -> Any:
    if row.result_json is not None:
        return json.loads(row.result_json)
    return pickle.loads(row.result or b"N.")


def _describe_error(error: BaseException) -> tuple[str, str, str, str, bytes | None]:
    """(kind, type, message, traceback, pickled exception or None)."""
    from parcelout._failure import kind_of

    cause = error.__cause__
    tb = cause.tb if isinstance(cause, RemoteTraceback) else "".join(traceback.format_exception(error))
    if isinstance(error, RemoteError):  # the original's type and message, as the caller was told them
        name, message = error.type_name, error.message
    else:
        name, message = type_name(type(error)), str(error)
    blob: bytes | None = None
    with contextlib.suppress(Exception):  # kept only if it loads again
        pickled = dumps(error)
        pickle.loads(pickled)
        blob = pickled
    return kind_of(error), name, message, tb, blob


def type_name(kind: type) -> str:
    """An exception type's name as the journal records it: module-qualified,
    builtins aside (``ValueError``, ``jobs.Oops``)."""
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _load_error(row: Stored) -> BaseException:
    error: BaseException | None = None
    if row.error is not None:
        with contextlib.suppress(Exception):
            error = pickle.loads(row.error)
    if not isinstance(error, BaseException):
        error = RemoteError(row.error_type or "Exception", row.error_message or "", "it was loaded from the journal")
    if row.error_traceback:
        error.__cause__ = RemoteTraceback(row.error_traceback)
    error.add_note("parcelout: recorded in the journal by an earlier run (retry_failed=True runs it again)")
    return error


# ---------------------------------------------------------------- reading
@dataclasses.dataclass(frozen=True)
class StoredOutcome:
    """One item's outcome as the journal has it."""

    index: int
    key: Any
    status: str
    value: Any = None
    error_type: str | None = None
    error_message: str | None = None
    error_kind: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "done"


@dataclasses.dataclass(frozen=True)
class JournalSummary:
    """Where a journaled run stands (``parcelout status``)."""

    path: str
    function: str
    total: int | None
    done: int
    failed: int
    running: int
    pending: int
    live: bool  # a run holds the journal now
    throughput: float | None  # items finished per second, lately
    eta_seconds: float | None
    top_errors: list[tuple[str, str, int]]  # (type, message, count), most common first

    def __str__(self) -> str:
        total = "?" if self.total is None else str(self.total)
        lines = [
            f"journal {self.path}: {self.function} ({'running now' if self.live else 'not running'})",
            f"  {self.done} done, {self.failed} failed, {self.running} running, {self.pending} pending, of {total}",
        ]
        if self.throughput is not None:
            lines.append(f"  {self.throughput:.1f} items/s over the last {_RECENT_SECONDS:.0f} s of work")
        if self.eta_seconds:
            lines.append(f"  about {_duration(self.eta_seconds)} left")
        if self.top_errors:
            lines.append("  most common errors:")
            lines.extend(f"    {count} x {kind}: {message}" for kind, message, count in self.top_errors)
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _open_for_reading(path: str | os.PathLike[str]) -> sqlite3.Connection:
    path = os.fspath(path)
    if os.path.islink(path) and not os.path.exists(path):
        raise JournalError(f"no journal at {path}: it is a symbolic link to {os.readlink(path)}, which does not exist")
    if not os.path.exists(path):
        raise JournalError(f"no journal at {path}")
    if os.path.isdir(path):
        raise JournalError(f"the journal {path} is a directory, not a journal file")
    _check_header(path)
    try:
        db = _connect(path, readonly=True)
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path} is not a readable parcelout journal ({exc})") from exc
    try:
        db.execute("SELECT version FROM run").fetchone()
    except sqlite3.DatabaseError as exc:
        db.close()
        raise JournalError(f"{path} is not a readable parcelout journal ({exc})") from exc
    return db


def _check_header(path: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise JournalError(f"the journal {path} cannot be read: {exc.strerror}") from None
    if head != _SQLITE_MAGIC:
        raise JournalError(f"the journal {path} is damaged or not a journal ({'empty' if not head else 'not SQLite'})")


def read_summary(path: str | os.PathLike[str]) -> JournalSummary:
    """Counts, throughput, ETA and the commonest errors; works while the run
    is going (it reads what was committed)."""
    db = _open_for_reading(path)
    try:
        function, total = db.execute("SELECT function, total FROM run").fetchone()
        by_status = db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall()
        counts: Counter[str] = Counter(dict(by_status))
        latest = db.execute("SELECT MAX(finished) FROM items").fetchone()[0]
        throughput = None
        if latest is not None:
            recent, first = db.execute(
                "SELECT COUNT(*), MIN(finished) FROM items WHERE status IN ('done', 'failed') AND finished >= ?",
                (latest - _RECENT_SECONDS,),
            ).fetchone()
            span = latest - first if first is not None else 0.0
            throughput = recent / span if span > 0 and recent > 1 else None
        errors = db.execute(
            "SELECT error_type, error_message, COUNT(*) AS n FROM items WHERE status = 'failed' "
            "GROUP BY error_type, error_message ORDER BY n DESC LIMIT 5"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"the journal {os.fspath(path)} is damaged ({exc})") from exc
    finally:
        db.close()
    recorded = sum(counts.values())
    pending = counts["pending"] + (max(0, total - recorded) if total is not None else 0)
    left = pending + counts["running"]
    eta = left / throughput if throughput and total is not None else None
    return JournalSummary(
        os.fspath(path),
        function,
        total,
        counts["done"],
        counts["failed"],
        counts["running"],
        pending,
        _in_use(os.fspath(path)),
        throughput,
        eta,
        [(kind or "?", _first_line(message), n) for kind, message, n in errors],
    )


def _first_line(text: str | None) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= 120 else line[:117] + "..."


def _in_use(path: str) -> bool:
    if fcntl is None:  # pragma: no cover
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_outcomes(path: str | os.PathLike[str], *, trust_owner: bool = False) -> Iterator[StoredOutcome]:
    """Every item the journal has, in input order (results loaded: only open
    journals you trust). The journal is opened, and refused if it cannot be
    read or another user owns it (unless ``trust_owner``), at the call."""
    if not trust_owner:
        _check_owner(os.fspath(path))
    _open_for_reading(path).close()  # refused now, not at the first item
    return _outcomes(os.fspath(path))


def _outcomes(path: str) -> Iterator[StoredOutcome]:
    db = _open_for_reading(path)
    try:
        rows = db.execute(
            "SELECT idx, key, status, attempts, result, result_json, error_type, error_message, error_kind "
            "FROM items ORDER BY idx"
        )
        for index, key, status, attempts, result, result_json, etype, message, kind in rows:
            value = None
            if status == "done":
                try:
                    value = json.loads(result_json) if result_json is not None else pickle.loads(result or b"N.")
                except Exception as exc:
                    raise JournalError(
                        f"the journal {path} is damaged: the recorded result of item {index} (key {key}) cannot be "
                        f"loaded ({type(exc).__name__}: {exc})"
                    ) from exc
            yield StoredOutcome(index, _public_key(key), status, value, etype, message, kind, attempts)
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"the journal {path} is damaged ({exc})") from exc
    finally:
        db.close()


def _public_key(key: str) -> Any:
    """A key as the user gave it (``key=``), or the default ``index:hash``."""
    try:
        return json.loads(key)
    except ValueError:
        return key


def open_journal(
    spec: Journal, fn: Callable[..., Any], key: Callable[[Any], Any] | None, total: int | None
) -> JournalFile:
    """Open (or create) the journal for a run of ``fn``; refuse a bad one."""
    journal = JournalFile(spec, fn, key)
    journal.set_total(total)
    return journal
