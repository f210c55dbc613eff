"""Evaluation: correlation metrics against MOS (reports and plots build on these)."""

from vqpipe.eval.evaluate import evaluate, join_predictions, median_over_splits
from vqpipe.eval.metrics import (
    LogisticFit,
    MetricWarning,
    fit_logistic,
    krcc,
    logistic4,
    logistic5,
    plcc,
    srcc,
)

__all__ = [
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
    "srcc",
]
