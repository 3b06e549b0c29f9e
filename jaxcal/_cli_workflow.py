"""``jaxcal derive``, ``sweep`` and ``gates``: the Microplex workflow commands."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the workflow commands to the ``jaxcal`` parser."""
