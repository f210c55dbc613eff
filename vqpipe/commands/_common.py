"""What the reward-data commands share: storage options and running on Ray quietly."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=None, help="Ray cluster to use (default: RAY_ADDRESS, else local)"
    )
    parser.add_argument("--storage-options", help="JSON storage options for fsspec (default: none)")


def on_ray(args: argparse.Namespace, command: str, work: Callable[[], Any]) -> Any:
    """Run ``work()`` on Ray (started here unless it is up, and then stopped), with Ray's own
    output kept in its log file unless ``--verbose``."""
    from vqpipe.cli import _verbosity
    from vqpipe.console import ray_output_kept_out
    from vqpipe.rewards.table import ensure_ray

    with ray_output_kept_out(_verbosity(args), command):
        started = ensure_ray(args.address)
        try:
            return work()
        finally:
            if started:
                import ray

                ray.shutdown()
