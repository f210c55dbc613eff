"""vqpipe: distributed batch scoring of visual quality (Q-Align, Compare2Score, Gamma) on Ray."""

from vqpipe.scoring import Scorer, create_scorer, list_scorers, register_scorer

__version__ = "0.1.0"

__all__ = ["Scorer", "__version__", "create_scorer", "list_scorers", "register_scorer"]
