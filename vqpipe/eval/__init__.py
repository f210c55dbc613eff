"""Evaluation: correlation metrics against MOS (reports and plots build on these)."""

from vqpipe.eval.evaluate import SMALL_N, evaluate, join_predictions, median_over_splits
from vqpipe.eval.metrics import (
    LogisticFit,
    MetricWarning,
    fit_logistic,
    krcc,
    logistic4,
    logistic5,
    plcc,
    plcc_with_fit,
    srcc,
)

__all__ = [
    "SMALL_N",
    "LogisticFit",
    "MetricWarning",
    "evaluate",
    "fit_logistic",
    "join_predictions",
    "krcc",
    "logistic4",
    "logistic5",
    "median_over_splits",
    "plcc",
    "plcc_with_fit",
    "srcc",
]
