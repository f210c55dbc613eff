"""Defaults that the library, the pipeline and the CLI share, in a module that imports nothing
(so ``vqpipe --help`` can show them without loading torch)."""

DEFAULT_BATCH_SIZE = 64
"""Model inputs per forward pass (images; frames scored as images; video sequences for
video-native scorers) unless a job or caller says otherwise: the one default."""
