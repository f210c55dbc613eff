"""Evaluation: correlation metrics against MOS (reports and plots build on these)."""

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
    "fit_logistic",
    "krcc",
    "logistic4",
    "logistic5",
    "plcc",
    "srcc",
]
