"""The quality math: pure numpy functions that turn model outputs into scores (levels,
soft comparisons, Thurstone MAP, Compare2Score anchor selection). No torch, no scorer."""
