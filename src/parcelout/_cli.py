"""The ``parcelout`` command line."""

from __future__ import annotations

import argparse
import sys

import parcelout
from parcelout import _commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parcelout", description="Parcel out work to workers.")
    parser.add_argument("--version", action="version", version=f"parcelout {parcelout.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="time three kinds of work on serial, thread and process workers")
    demo.add_argument("--scale", type=float, default=1.0, help="multiply the number of items")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    _commands.add_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from parcelout import _demo

        _demo.run(scale=args.scale, progress=not args.no_progress)
        return 0
    return _commands.dispatch(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
