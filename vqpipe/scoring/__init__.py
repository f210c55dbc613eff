"""The public scoring API, re-exported: the quality math from :mod:`vqpipe.quality_math`,
the Scorer protocol and the registry from :mod:`vqpipe.scorers`."""

from vqpipe.models.devices import resolve_device, resolve_dtype
from vqpipe.quality_math.anchor_selection import select_anchors
from vqpipe.quality_math.comparison import (
    COMPARISON_LEVELS,
    COMPARISON_WEIGHTS,
    comparison_level,
    comparison_level_index,
    soft_comparison,
)
from vqpipe.quality_math.levels import LEVEL_SCORES, LEVELS, level_probs, level_score, mos_to_level
from vqpipe.quality_math.thurstone import thurstone_map, thurstone_objective
from vqpipe.scorers.base import Scorer
from vqpipe.scorers.registry import (
    ScorerSpec,
    UnknownScorerError,
    create_scorer,
    get_scorer_spec,
    list_scorers,
    register_scorer,
    unregister_scorer,
)

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
