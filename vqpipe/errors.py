"""Errors that are the user's to fix, reported without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake of the user's: the CLI prints it as one line `vqpipe: error: …` and exits 2."""
