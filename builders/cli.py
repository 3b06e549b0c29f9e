"""``jaxcal`` commands implemented in builders (registered through the ``jaxcal.commands`` entry point)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the builders' commands (``build``, ``export``, ``check-h5``) to the ``jaxcal`` parser."""
