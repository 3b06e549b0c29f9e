"""The demo's ``jaxcal`` commands, registered by :func:`register_demo_commands`."""

from __future__ import annotations

import argparse


def register_demo_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``check-h5`` to the ``jaxcal`` parser (``export`` and ``build --demo`` will join it)."""
    from builders.h5_check import register_check_h5

    register_check_h5(subparsers)
