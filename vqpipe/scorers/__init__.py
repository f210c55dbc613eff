"""Built-in scorers, one module each; they register in :mod:`vqpipe.scoring.registry`."""
