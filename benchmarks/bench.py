#!/usr/bin/env python3
"""bench.py: parcelout with all defaults against its peers, on the shared workloads.

    make bench                                                    # everything, ~15 min
    .venv/bin/python benchmarks/bench.py --scale 0.1 --repeat 1   # a quick pass
    .venv/bin/python benchmarks/bench.py --only tiny skewed --lib serial parcelout joblib
    .venv/bin/python benchmarks/bench.py --list

Options: --only WORKLOAD.. --lib NAME.. (a name or a prefix: 'parcelout' is
all three parcelout rows) --repeat 3 --scale 1.0 (multiplies every N but
startup's) --timeout 240 (one cell) --out benchmarks/results.md (also writes
results.json beside it; '' writes nothing) --plot (default: ratios.png beside
--out).

This reuses ../shared/bench/peers.py (its method, libraries, plan and
tables) and ../shared/bench/workloads.py by import, and adds at run time:
* rows `parcelout` (all defaults: `parcelout.map(f, items)`, plus
  `initializer=` in init_per_worker, as the other pools get it), and
  `parcelout-thread` / `parcelout-process` (`backend=`, `workers=w`);
* workloads `skewed` and `one_slow_item` (benchmarks/workloads.py).
Every cell runs in its own child process, `bench.py --child SPEC`, which
registers these additions and then runs `peers.child(SPEC)`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "benchmarks"
SHARED = REPO.parent / "shared" / "bench"


def _setup_path() -> None:
    """Put ../shared/bench (peers, workloads) and the repository (benchmarks.workloads) on sys.path.

    The script's own folder comes off it: its workloads.py would otherwise
    shadow the shared one. Workers that start a fresh interpreter (loky,
    forkserver) inherit this sys.path.
    """
    missing = [f for f in ("peers.py", "workloads.py") if not (SHARED / f).is_file()]
    if missing:
        sys.exit(
            f"bench.py: the peers' harness is missing: no {', '.join(missing)} in {SHARED}.\n"
            f"It lives in ../shared/bench/ beside the repository ({REPO}); check it out there."
        )
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    for p in (str(REPO), str(SHARED)):
        if p not in sys.path:
            sys.path.insert(0, p)


_setup_path()

import peers  # noqa: E402  (../shared/bench/peers.py)

from benchmarks import workloads as bw  # noqa: E402

Row = dict[str, Any]

PARCELOUT = "parcelout"  # the row under test: all defaults
PARCELOUT_ROWS = (PARCELOUT, "parcelout-thread", "parcelout-process")
INTERPRETER = "parcelout-interpreter"  # where sub-interpreters exist (3.13 with the extra, 3.14+)
# The workloads whose functions a sub-interpreter can run (pure Python; the
# others' modules import NumPy, which cannot load there).
INTERPRETER_WORKLOADS = ("startup", "tiny", "cpu_py", "init_per_worker", "skewed", "one_slow_item")
DEFAULT_WORKLOADS = [
    "startup",
    "tiny",
    "cpu_py",
    "gil_release",
    "io",
    "big_arg",
    "init_per_worker",
    "skewed",
    "one_slow_item",
]  # init_rebuild is left out (run it with --only)
TARGET_RATIO = 1.05  # parcelout / best peer, every workload
TINY_TARGET = 1.5  # tiny: parcelout / the plain serial loop
STARTUP_LIMIT_S = 0.020  # startup: pool start + stop for 2 items
EXPLAIN_TIMEOUT_S = 60.0
DEFAULT_OUT = HERE / "results.md"


# ---------------------------------------------------------------- additions to peers' tables
def r_parcelout(backend: str | None) -> Callable[[Any, list[Any], Any], list[Any]]:
    def run(wl: Any, items: list[Any], w: Any) -> list[Any]:
        import parcelout

        kw: dict[str, Any] = {}
        if backend is not None:
            kw.update(backend=backend, workers=w)
        if wl.init is not None:
            kw["initializer"] = wl.init
        return parcelout.map(wl.fn, items, **kw)

    return run


def register() -> None:
    """Add parcelout's rows and the two new workloads to peers' tables (idempotent)."""
    if PARCELOUT in peers.LIBS:
        return
    for wl in [
        peers.Workload(
            "skewed",
            bw.skewed,
            1000,
            "pure Python, Pareto(1.5) durations (seed 5): mean 1 cpu_py item, the largest ~20-80x the median",
            items=bw.skewed_items,
        ),
        peers.Workload(
            "one_slow_item",
            bw.one_slow_item,
            400,
            f"pure Python, 1 cpu_py item each, but item {bw.SLOW_AT} is {bw.SLOW_UNITS}x longer",
            items=bw.one_slow_items,
        ),
    ]:
        peers.WORKLOADS[wl.name] = wl
    calls = {
        PARCELOUT: "parcelout.map(f, items)  (all defaults: backend, workers and chunksize 'auto')",
        "parcelout-thread": "parcelout.map(f, items, backend='thread', workers=w)",
        "parcelout-process": "parcelout.map(f, items, backend='process', workers=w)",
    }
    backends = {PARCELOUT: None, "parcelout-thread": "thread", "parcelout-process": "process"}
    for name in PARCELOUT_ROWS:
        peers.LIBS[name] = peers.Lib(name, r_parcelout(backends[name]), calls[name], ["parcelout"])
    try:
        from parcelout.backends._interpreter import available
    except ImportError:  # a parcelout without the backend (comparing with an older one)
        return
    if available():
        call = "parcelout.map(f, items, backend='interpreter', workers=w)  (pure-Python workloads)"
        peers.LIBS[INTERPRETER] = peers.Lib(INTERPRETER, r_interpreter, call, ["parcelout"])


def r_interpreter(wl: Any, items: list[Any], w: Any) -> list[Any]:
    """The interpreter row (the workloads' modules import nothing a
    sub-interpreter cannot load; the worker gets this process's path)."""
    import parcelout

    kw: dict[str, Any] = {"backend": "interpreter", "workers": w}
    if wl.init is not None:
        kw["initializer"] = wl.init
    return parcelout.map(wl.fn, items, **kw)


register()


def all_libs() -> list[str]:
    """Row order: serial, the parcelout rows, then peers' rows."""
    ours = [*PARCELOUT_ROWS, *([INTERPRETER] if INTERPRETER in peers.LIBS else [])]
    return ["serial", *ours, *(n for n in peers.LIBS if n != "serial" and n not in ours)]


def is_peer(lib: str, workload: str) -> bool:
    """Whether a row competes as 'best peer': not parcelout; serial only in tiny."""
    return not lib.startswith(PARCELOUT) and (lib != "serial" or workload == "tiny")


# ---------------------------------------------------------------- child: one cell
def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def explain(spec: Row) -> Row:
    """The plan parcelout's auto mode picks for this workload, outside the clock.

    Returns {"plan": "backend/workers/chunksize", "text": str(plan), "seconds": ...},
    or {"plan": "n/a"} while parcelout has no explain().
    """
    import parcelout

    if not hasattr(parcelout, "explain"):
        return {"plan": "n/a", "text": "this parcelout has no explain()"}
    wl = peers.WORKLOADS[spec["workload"]]
    wl.reset()
    items = list(wl.items(spec["n"]))
    kw: dict[str, Any] = {}
    if wl.init is not None and _accepts(parcelout.explain, "initializer"):
        kw["initializer"] = wl.init
    box: Row = {}

    def go() -> None:
        t0 = time.perf_counter()
        try:
            p = parcelout.explain(wl.fn, items, **kw)
            box.update(plan=f"{p.backend}/{p.workers}/{p.chunksize}", text=str(p)[:4000])
        except Exception as e:
            box.update(plan=f"explain failed: {type(e).__name__}", text=f"{type(e).__name__}: {e}"[:4000])
        box["seconds"] = time.perf_counter() - t0

    t = threading.Thread(target=go, name="explain", daemon=True)
    t.start()
    t.join(EXPLAIN_TIMEOUT_S)
    if t.is_alive():
        return {"plan": "explain timed out", "text": f"no plan after {EXPLAIN_TIMEOUT_S:.0f} s", "hung": True}
    return box


def child_main(spec: Row) -> None:
    res = peers.child(spec)
    print("@@RESULT " + json.dumps(res), flush=True)
    if spec["lib"] == PARCELOUT:
        plan = explain(spec)
        print("@@PLAN " + json.dumps(plan), flush=True)
        if plan.get("hung"):
            os._exit(0)  # do not wait for a hung explain's threads; the parent kills what is left


# ---------------------------------------------------------------- driver
def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_cell(spec: Row, timeout: float) -> Row:
    """peers.run_cell, but through this script's --child (which knows the additions)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    error = None
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(p.pid)  # the child and the workers it started
        out, err = p.communicate()
        error = f"timeout: killed after {timeout:g} s"
    _kill_group(p.pid)  # any worker a finished child left behind
    res: Row | None = None
    plan: Row | None = None
    for line in out.splitlines():
        if line.startswith("@@RESULT "):
            res = json.loads(line[len("@@RESULT ") :])
        elif line.startswith("@@PLAN "):
            plan = json.loads(line[len("@@PLAN ") :])
    if res is None:
        if error is None:
            tail = (err.strip().splitlines() or ["(no output)"])[-1]
            error = f"exit {p.returncode}: {tail[:160]}"
        res = {"error": error}
    if spec["lib"] == PARCELOUT and plan is None:
        plan = {"plan": "no plan: " + (error or f"exit {p.returncode}")}
    if plan is not None:
        res["plan"] = plan
    res["cell_s"] = time.perf_counter() - t0
    return res


def plan_cells(only: Sequence[str], libs: Sequence[str], scale: float, repeat: int) -> list[Row]:
    """peers.plan, plus one cell per workload for parcelout with workers='auto'."""
    cells = []
    for wname in only:
        n = peers.plan([wname], ["serial"], scale, repeat)[0]["n"]
        for lib in libs:
            if lib == INTERPRETER and wname not in INTERPRETER_WORKLOADS:
                continue
            if lib == PARCELOUT:
                cells.append({"workload": wname, "lib": lib, "workers": "auto", "n": n, "repeat": repeat})
            else:
                cells += peers.plan([wname], [lib], scale, repeat)
    return cells


def median(r: Row) -> float:
    return statistics.median(r["times"])


def ideal_workers(r: Row) -> int:
    """The workers behind 'x ideal': the cores for serial, the most the workload uses for 'auto'."""
    if r["lib"] == "serial":
        return peers.W
    if r["workers"] == "auto":
        return max(peers.WORKLOADS[r["workload"]].workers)
    return int(r["workers"])


def full_table(results: list[Row]) -> str:
    """peers.table's columns, for rows whose workers may be 'auto'."""
    rows = [
        "| workload | library | workers | N | median s | min s | max s | cpu s | x serial | x ideal | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    serial = {r["workload"]: r for r in results if r["lib"] == "serial" and "times" in r}
    for r in results:
        head = f"| {r['workload']} | {r['lib']} | {r['workers']} | {r['n']} |"
        if "error" in r:
            rows.append(f"{head} **{r['error']}** | | | | | | |")
            continue
        med = median(r)
        xs = xi = None
        note = r.get("note", "")
        s = serial.get(r["workload"])
        if s:
            sm = median(s)
            xs, xi = med / sm, med / (sm / ideal_workers(r))
            if r["digest"] != s["digest"]:
                note = (note + "; " if note else "") + "RESULT DIFFERS FROM SERIAL"
        if r["workload"] == "startup":
            xs = xi = None
        rows.append(
            f"{head} {peers.fmt(med)} | {peers.fmt(min(r['times']))} | {peers.fmt(max(r['times']))} | "
            f"{peers.fmt(statistics.median(r['cpus']), 2)} | {peers.ratio(xs)} | {peers.ratio(xi)} | {note} |"
        )
    return "\n".join(rows)


def summarize(results: list[Row]) -> list[Row]:
    """Per workload: parcelout (defaults), the best peer row, the ratio, the target and whether it holds."""
    out = []
    for wname in dict.fromkeys(r["workload"] for r in results):
        rows = [r for r in results if r["workload"] == wname]
        ok = [r for r in rows if "times" in r]
        po = next((r for r in rows if r["lib"] == PARCELOUT), None)
        serial = next((r for r in ok if r["lib"] == "serial"), None)
        contenders = [r for r in ok if is_peer(r["lib"], wname)]
        best = min(contenders, key=median) if contenders else None
        s: Row = {
            "workload": wname,
            "n": rows[0]["n"],
            "plan": po.get("plan", {}).get("plan", "n/a") if po else "",
            "parcelout_s": median(po) if po and "times" in po else None,
            "parcelout_error": po.get("error") if po else "no parcelout row",
            "best": f"{best['lib']} w={best['workers']}" if best else None,
            "best_s": median(best) if best else None,
            "serial_s": median(serial) if serial else None,
            "ratio": None,
            "holds": None,
        }
        if wname == "tiny":
            s["target"] = f"<= {TINY_TARGET:.2f}x serial"
        elif wname == "startup":
            s["target"] = f"<= {TARGET_RATIO:.2f}x best peer, <= {STARTUP_LIMIT_S * 1000:.0f} ms"
        else:
            s["target"] = f"<= {TARGET_RATIO:.2f}x best peer"
        pt = s["parcelout_s"]
        if pt is not None and s["best_s"]:
            s["ratio"] = pt / s["best_s"]
        if pt is not None:
            if wname == "tiny":
                s["holds"] = s["serial_s"] is not None and pt / s["serial_s"] <= TINY_TARGET
            elif s["ratio"] is not None:
                s["holds"] = s["ratio"] <= TARGET_RATIO and (wname != "startup" or pt <= STARTUP_LIMIT_S)
            if serial and po and po["digest"] != serial["digest"]:
                s["holds"] = False
                s["parcelout_error"] = "results differ from serial"
        elif po is not None:
            s["holds"] = False
        out.append(s)
    return out


def summary_table(summary: list[Row]) -> str:
    rows = [
        "| workload | N | auto plan (backend/workers/chunksize) | parcelout s | best peer | peer s | "
        "parcelout / best peer | serial s | target | holds |",
        "|---|---:|---|---:|---|---:|---:|---:|---|---|",
    ]
    for s in summary:
        pt = peers.fmt(s["parcelout_s"]) if s["parcelout_s"] is not None else f"**{s['parcelout_error']}**"
        holds = {True: "yes", False: "**no**", None: "?"}[s["holds"]]
        if s["holds"] is False and s["parcelout_error"] and s["parcelout_s"] is not None:
            holds += f" ({s['parcelout_error']})"
        ratio = f"{s['ratio']:.2f}x" if s["ratio"] is not None else ""
        rows.append(
            f"| {s['workload']} | {s['n']} | {s['plan']} | {pt} | {s['best'] or ''} | {peers.fmt(s['best_s'])} | "
            f"{ratio} | {peers.fmt(s['serial_s'])} | {s['target']} | {holds} |"
        )
    return "\n".join(rows)


def plans_section(results: list[Row]) -> str:
    parts = []
    for r in results:
        if r["lib"] != PARCELOUT or "plan" not in r:
            continue
        p = r["plan"]
        took = f" (explain took {p['seconds']:.3f} s)" if "seconds" in p else ""
        parts.append(f"**{r['workload']}**: `{p['plan']}`{took}")
        if p.get("text") and p["plan"] != "n/a":
            parts += ["", "```", p["text"], "```"]
        parts.append("")
    return "\n".join(parts).strip() or "(no parcelout row)"


def plot(summary: list[Row], path: Path, title: str) -> bool:
    """Bar plot of parcelout / best peer per workload, with a line at 1.0."""
    rows = [s for s in summary if s["ratio"] is not None]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    ratios = [s["ratio"] for s in rows]
    colors = {True: "tab:green", False: "tab:red", None: "tab:gray"}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2.5), 5.2))
    bars = ax.bar([s["workload"] for s in rows], ratios, color=[colors[s["holds"]] for s in rows])
    if max(ratios) / min(ratios) > 20:
        ax.set_yscale("log")
        label = FuncFormatter(lambda y, _: f"{y:g}x" if f"{y:.0e}"[0] in "125" else "")
        ax.yaxis.set_major_formatter(label)
        ax.yaxis.set_minor_formatter(label)
        ax.set_ylim(min(*ratios, 1.0) / 1.3, max(*ratios, TARGET_RATIO) * 1.3)
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
        ax.set_ylim(0, max(*ratios, TARGET_RATIO) * 1.12)
    ax.axhline(1.0, color="black", linewidth=1.2)
    ax.axhline(TARGET_RATIO, color="gray", linestyle="--", linewidth=0.8)
    for bar, r in zip(bars, ratios):
        ax.annotate(f"{r:.2f}x", (bar.get_x() + bar.get_width() / 2, r), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("parcelout (defaults) / best peer\n(median seconds)")
    ax.set_title(title, fontsize=10)
    ax.legend(
        handles=[
            Patch(color="tab:green", label="target holds"),
            Patch(color="tab:red", label="target missed"),
            Line2D(
                [],
                [],
                color="gray",
                linestyle="--",
                label=f"{TARGET_RATIO:.2f}x (tiny's target: {TINY_TARGET:g}x serial)",
            ),
        ],
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.28),
        ncol=3,
        frameon=False,
    )
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def machine_facts() -> Row:
    facts: Row = peers.machine_facts()
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("parcelout", "matplotlib"):
        try:
            facts["versions"][pkg] = version(pkg)
        except PackageNotFoundError:
            facts["versions"][pkg] = "absent"
    import parcelout

    facts["parcelout_explain"] = hasattr(parcelout, "explain")
    return facts


def command_line(argv: Sequence[str]) -> str:
    def rel(p: str) -> str:
        try:
            return os.path.relpath(p)
        except ValueError:
            return p

    return shlex.join([rel(sys.executable), rel(str(Path(__file__).resolve())), *argv])


def markdown(
    results: list[Row],
    summary: list[Row],
    facts: Row,
    *,
    argv: Sequence[str],
    started: Any,
    elapsed: float,
    png: Path | None,
    out: Path,
) -> str:
    v = facts["versions"]
    image = f"![parcelout / best peer]({os.path.relpath(png, out.parent)})" if png else "(no plot)"
    method = peers.__doc__.split("Method\n", 1)[1].strip()
    lines = [
        "# parcelout against its peers",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} min in all. Command: `{command_line(argv)}`"
        + ("  (what `make bench` runs)" if not argv else ""),
        "",
        f'Machine: nproc {facts["nproc"]}, CPU "{facts["cpu_model"]}" ({facts["cpu_mhz"]} MHz), '
        f"{facts['mem_gib']} GiB RAM, Linux {facts['kernel']}. Python {facts['python']}; multiprocessing default "
        f"start method `{facts['mp_start_method']}` (cf, mp, mpire, pebble fork; loky starts fresh interpreters; "
        "parcelout uses its own default).",
        "",
        "Libraries: " + ", ".join(f"{k} {x}" for k, x in v.items()) + ".",
        "",
        "## parcelout (all defaults) against the best peer",
        "",
        summary_table(summary),
        "",
        f"Best peer: the row with the lowest median among every peer configuration below (every library, every "
        f"worker count the workload runs), not counting the parcelout rows; the plain serial loop counts as a peer "
        f"only in tiny. Targets (issue 4): parcelout with all defaults at most {TARGET_RATIO:.2f}x the best peer; "
        f"tiny at most {TINY_TARGET:.1f}x the serial loop; startup also at most {STARTUP_LIMIT_S * 1000:.0f} ms. "
        "A target also fails when parcelout's results differ from serial's. The auto plan is "
        "`parcelout.explain(f, items)`, run in the parcelout cell after the timed repeats ('n/a': no explain() yet); "
        "it is not necessarily what each timed run chose, if parcelout re-tunes as it goes.",
        "",
        image,
        "",
        "## Method",
        "",
        "As `../shared/bench/peers.py` (its own words follow), with each cell run as `bench.py --child SPEC`, "
        "which adds the parcelout rows and the skewed and one_slow_item workloads to peers' tables first. "
        "The `parcelout` row's workers are 'auto': its x ideal uses the most workers the workload's peers use "
        "(io: 32).",
        "",
        method,
        "",
        "## Workloads",
        "",
        "| workload | N | what |",
        "|---|---:|---|",
    ]
    for s in summary:
        lines.append(f"| {s['workload']} | {s['n']} | {peers.WORKLOADS[s['workload']].desc} |")
    lines += ["", "## Libraries (rows)", "", "| row | call |", "|---|---|"]
    for name in dict.fromkeys(r["lib"] for r in results):
        lines.append(f"| {name} | `{peers.LIBS[name].call}` |")
    lines += [
        "",
        "In init_per_worker the pools get `initializer=ensure_table` (parcelout, cf, mp, pebble, cf-threads), "
        "mpire gets `use_worker_state=True` + `worker_init=`, joblib relies on the lazy per-process global "
        "(Parallel has no documented initializer).",
        "",
        "## All rows",
        "",
        full_table(results),
        "",
        "## Fastest peer per workload (computed, parcelout rows left out)",
        "",
        peers.best_lines([r for r in results if not r["lib"].startswith(PARCELOUT)]),
        "",
        "## parcelout's plans",
        "",
        plans_section(results),
        "",
    ]
    return "\n".join(lines)


def run_all(cells: list[Row], timeout: float) -> list[Row]:
    """Run every cell in turn; report each on stderr as it ends."""
    t0 = time.perf_counter()
    results: list[Row] = []
    for i, spec in enumerate(cells, 1):
        res = run_cell(spec, timeout)
        res.update(spec)
        results.append(res)
        if "times" in res:
            msg = f"median {median(res):.3f} s ({len(res['times'])} runs) {res.get('note', '')}"
        else:
            msg = res["error"]
        if "plan" in res:
            msg += f"  plan {res['plan']['plan']}"
        print(
            f"[{i}/{len(cells)} {time.perf_counter() - t0:6.0f} s] {spec['workload']:15} {spec['lib']:18} "
            f"w={spec['workers']!s:<4} {msg}",
            file=sys.stderr,
            flush=True,
        )
    return results


def write_report(
    results: list[Row], summary: list[Row], *, argv: list[str], started: Any, elapsed: float, out: Path, png: Path
) -> None:
    """results.md (and results.json) at out, the ratio plot at png."""
    out.parent.mkdir(parents=True, exist_ok=True)
    png.parent.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    title = f"parcelout / best peer, {started:%Y-%m-%d %H:%M} UTC, nproc {facts['nproc']}, Python {facts['python']}"
    drawn = plot(summary, png, title)
    out.write_text(
        markdown(
            results, summary, facts, argv=argv, started=started, elapsed=elapsed, png=png if drawn else None, out=out
        )
    )
    with open(out.with_suffix(".json"), "w") as f:
        record = {"facts": facts, "argv": argv, "started": started.isoformat(), "elapsed_s": elapsed}
        json.dump({**record, "summary": summary, "results": results}, f, indent=1)
    print(f"wrote {out}" + (f" and {png}" if drawn else ""), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--only", nargs="+", default=DEFAULT_WORKLOADS, choices=list(peers.WORKLOADS), metavar="WORKLOAD")
    ap.add_argument("--lib", nargs="+", default=None, metavar="NAME", help="names or prefixes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="Markdown report ('' for none); default %(default)s")
    ap.add_argument("--plot", default=None, help="PNG of the ratios (default: ratios.png beside --out)")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args(argv)

    if a.child:
        child_main(json.loads(a.child))
        return 0
    if a.list:
        for wl in peers.WORKLOADS.values():
            print(f"{wl.name:16} N={wl.n:<7} workers={wl.workers}  {wl.desc}")
        for name in all_libs():
            print(f"{name:18} {peers.LIBS[name].call}")
        return 0
    if a.repeat < 1 or a.scale <= 0:
        ap.error("--repeat must be at least 1 and --scale above 0")
    names = all_libs()
    libs = names if a.lib is None else [n for n in names if any(n == p or n.startswith(p) for p in a.lib)]
    if not libs:
        ap.error(f"no library matches {a.lib}; see --list")

    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    results = run_all(plan_cells(a.only, libs, a.scale, a.repeat), a.timeout)
    elapsed = time.perf_counter() - t0
    summary = summarize(results)

    print("## parcelout (all defaults) against the best peer\n")
    print(summary_table(summary))
    print("\n## All rows\n")
    print(full_table(results))
    print("\n## Fastest peer per workload\n")
    print(peers.best_lines([r for r in results if not r["lib"].startswith(PARCELOUT)]))
    print(f"\n{elapsed / 60:.1f} min in all", file=sys.stderr)
    if a.out:
        out = Path(a.out)
        png = Path(a.plot) if a.plot else out.parent / "ratios.png"
        write_report(results, summary, argv=argv, started=started, elapsed=elapsed, out=out, png=png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
