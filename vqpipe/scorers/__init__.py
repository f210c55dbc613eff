"""Scorers: the Scorer protocol (:mod:`.base`, its inputs and transfers), the registry
(:mod:`.registry`) and the built-in scorers, one module each."""
