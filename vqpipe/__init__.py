"""vqpipe: distributed batch scoring of visual quality (Q-Align, Compare2Score, Gamma) on Ray."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Scorer": "vqpipe.scoring",
    "UnknownScorerError": "vqpipe.scoring",
    "create_scorer": "vqpipe.scoring",
    "list_scorers": "vqpipe.scoring",
    "register_scorer": "vqpipe.scoring",
    "read_quality_table": "vqpipe.storage.table",
    "DemoCheckpointWarning": "vqpipe.errors",
    "UserError": "vqpipe.errors",
}
"""The public API and the module each name lives in, imported on first use."""

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    """The public API on first use: ``import vqpipe`` (and the CLI's ``--help``) stays free of
    torch until a scorer is needed."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vqpipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
