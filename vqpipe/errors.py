"""Errors that vqpipe reports to its users."""


class UserError(Exception):
    """A mistake of the user's: the CLI prints it as one line `vqpipe: error: …` and exits 2."""


class JobError(Exception):
    """A job that cannot go on for a reason outside the inputs (a node without CUDA, ...): the
    CLI prints it as one line `vqpipe: error: …` and exits 1."""
