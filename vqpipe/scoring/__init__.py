"""Scoring: the math that turns model outputs into scores, the Scorer protocol, the registry."""

from vqpipe.scoring.anchors import select_anchors
from vqpipe.scoring.base import Scorer, resolve_device, resolve_dtype
from vqpipe.scoring.comparison import (
    COMPARISON_LEVELS,
    COMPARISON_WEIGHTS,
    comparison_level,
    comparison_level_index,
    soft_comparison,
)
from vqpipe.scoring.levels import LEVEL_SCORES, LEVELS, level_probs, level_score, mos_to_level
from vqpipe.scoring.registry import (
    ScorerSpec,
    UnknownScorerError,
    create_scorer,
    get_scorer_spec,
    list_scorers,
    register_scorer,
    unregister_scorer,
)
from vqpipe.scoring.thurstone import thurstone_map, thurstone_objective

__all__ = [
    "COMPARISON_LEVELS",
    "COMPARISON_WEIGHTS",
    "LEVELS",
    "LEVEL_SCORES",
    "Scorer",
    "ScorerSpec",
    "UnknownScorerError",
    "comparison_level",
    "comparison_level_index",
    "create_scorer",
    "get_scorer_spec",
    "level_probs",
    "level_score",
    "list_scorers",
    "mos_to_level",
    "register_scorer",
    "resolve_device",
    "resolve_dtype",
    "select_anchors",
    "soft_comparison",
    "thurstone_map",
    "thurstone_objective",
    "unregister_scorer",
]
