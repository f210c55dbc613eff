"""The quality math: pure functions that turn model outputs into scores (levels, soft
comparisons, Thurstone MAP, Compare2Score anchor selection); numpy in, numpy out, a torch
tensor in, a tensor out (:mod:`.arrays`). Nothing here imports a model or a scorer."""
