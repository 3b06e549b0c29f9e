"""The ``jaxcal`` command.

Each command module adds its subparser through ``register(subparsers)`` and sets
``run=function(args) -> int``; a command parses and checks its flags, calls ``jaxcal.runs``,
``jaxcal.workflow`` or ``jaxcal.io``, and reports. Registering imports nothing heavy, so that
``jaxcal --help`` and ``jaxcal COMMAND --help`` load no JAX. Commands that live outside the
engine (``build``, ``export``, ``check-h5`` in ``builders``) arrive through the
``jaxcal.commands`` entry point group, so that the engine never imports them. A user mistake
is one line on stderr and a non-zero exit code, never a traceback; so is any other error, which
names its type and points to ``jaxcal --debug``, which shows the traceback of either.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from importlib import metadata

_ENGINE_COMMANDS = ("jaxcal.cli._fit", "jaxcal.cli._package", "jaxcal.cli._diagnose", "jaxcal.cli._workflow")


class CommandError(Exception):
    """A user mistake: printed as ``jaxcal <command>: error: <message>``, exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxcal", description="Differentiable calibration of survey microdata in JAX."
    )
    parser.add_argument("--version", action="version", version=f"jaxcal {metadata.version('jaxcal')}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _ENGINE_COMMANDS:
        importlib.import_module(module).register(subparsers)
    for entry in metadata.entry_points(group="jaxcal.commands"):
        entry.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CommandError as error:
        return _fail(args, str(error), error.code)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as error:
        return _fail(args, str(error), 1)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)
    except OSError as error:
        if error.errno not in _FULL_OR_READ_ONLY:
            return _fail(args, f"{type(error).__name__}: {error} (run with --debug for the traceback)", 1)
        where = f" while writing {error.filename}" if error.filename else ""
        cure = "write elsewhere" if error.errno == errno.EROFS else "free some space"
        return _fail(args, f"{os.strerror(error.errno)}{where}: no file was left half-written; {cure} and rerun", 1)
    except Exception as error:  # a bug, or a failure no check foresaw: still one line, unless --debug
        hint = "" if args.debug else " (run with --debug for the traceback)"
        return _fail(args, f"{type(error).__name__}: {error}{hint}", 1)


_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
"""Write failures that are the disk's, not jaxcal's: said as such, without a traceback hint."""


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    if args.debug:
        traceback.print_exc()
    print(f"jaxcal {args.command}: error: {_one_line(message)}", file=sys.stderr)
    return code


def _one_line(message: object) -> str:
    """``message`` on one line (an exception's text may span several)."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())
