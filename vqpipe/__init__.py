"""vqpipe: distributed batch scoring of visual quality (Q-Align, Compare2Score, Gamma) on Ray."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Scorer", "__version__", "create_scorer", "list_scorers", "register_scorer"]


def __getattr__(name: str) -> Any:
    """The scoring API on first use: ``import vqpipe`` (and the CLI's ``--help``) stays free of
    torch until a scorer is needed."""
    if name in __all__:
        from vqpipe import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module 'vqpipe' has no attribute {name!r}")
