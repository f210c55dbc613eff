"""Dataset utilities for ``vqpipe`` (synthetic quality data): the public names of
:mod:`vqpipe.data.synthetic`, listed once there."""

from vqpipe.data import synthetic
from vqpipe.data.synthetic import *  # noqa: F403  (its __all__ is the list)

__all__ = list(synthetic.__all__)
