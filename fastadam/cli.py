"""The ``fastadam`` command: ``fastadam demo`` and ``fastadam bench``."""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help). Each module has ``add_arguments(parser)``
#: and ``run(args) -> int``.
COMMANDS = {
    "demo": ("fastadam.demo", "train the seed's model with every optimizer and compare them"),
    "bench": ("fastadam.bench", "benchmark fastadam's steps against the peers and the roofline"),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``fastadam`` argument parser, with one subcommand per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="fastadam", description="fused, in-place Adam-family optimizer steps")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"fastadam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (modname, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=modname)
        try:
            importlib.import_module(modname).add_arguments(p)
        except ImportError as e:  # pragma: no cover - broken install
            p.set_defaults(_import_error=str(e))
    return parser


def main(argv=None) -> int:
    """Run the ``fastadam`` command with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_import_error", None):
        print(f"fastadam {args.command}: {args._import_error}", file=sys.stderr)
        return 1
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
