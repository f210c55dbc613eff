"""``vqpipe train``: fine-tune a method with Ray Train, Ctrl-C and a failed worker in one line."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from vqpipe.cli.options import RAW, add_console_flags, add_no_resume, verbosity
from vqpipe.cli.runtime import sigterm_interrupts
from vqpipe.errors import JobError, UserError

EPILOG = """\
examples:
  vqpipe train --method gamma --config gamma.yaml
  vqpipe train --method qalign --config qalign.yaml --num-workers 4 --use-gpu \\
      --storage-path s3://runs/ --name qalign-koniq
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "train",
        help="fine-tune a method with Ray Train (TorchTrainer)",
        description="Fine-tune a method on MOS datasets with Ray Train; checkpoints load as "
        "the scorer's checkpoint=.",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    add_train_arguments(parser)
    add_console_flags(parser, on_subcommand=True)
    parser.set_defaults(func=_cmd_train)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a training run."""
    # METHODS: a dict in a module that imports torch only inside its functions (--help stays
    # torch-free; tests/test_cli.py checks it)
    from vqpipe.train.trainer import METHODS

    parser.add_argument(
        "--method", required=True, choices=sorted(METHODS), help="the method to fine-tune"
    )
    parser.add_argument(
        "--config",
        required=True,
        help="YAML of the config keys (examples: configs/<method>.yaml; every key and "
        "default: docs/training.md)",
    )
    parser.add_argument(
        "--num-workers", type=int, default=1, help="Ray Train workers (default: %(default)s)"
    )
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    parser.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default: %(default)s)"
    )
    parser.add_argument(
        "--storage-path",
        default=None,
        help="run storage, local or a URI (default: ~/vqpipe-runs)",
    )
    parser.add_argument(
        "--name", default="vqpipe-train", help="run name, the resume key (default: %(default)s)"
    )
    add_no_resume(parser, "start over", "resume from the newest checkpoint of --name")


def _cmd_train(args: argparse.Namespace) -> int:
    import yaml

    from vqpipe.console import StatusLine, ray_output_kept_out, terminal
    from vqpipe.train.config import check_config, setting
    from vqpipe.train.progress import epoch_line
    from vqpipe.train.trainer import fit

    try:
        with open(args.config, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())  # YAML errors span lines: keep the message one line
        raise UserError(f"cannot read the training config {args.config}: {reason}") from None
    level = verbosity(args)
    check_config(args.method, config)  # a bad config: one line, before Ray starts
    epochs = setting(config, args.method, "epochs")
    started_ray = False
    try:
        with sigterm_interrupts(), StatusLine(terminal(), level) as status:
            status.update(f"training {args.method} with Ray Train")

            def progress(metrics: dict[str, Any]) -> None:
                status.notice(epoch_line(metrics, epochs))
                status.update(f"training {args.method}: epoch {int(metrics['epoch']) + 1} done")

            with ray_output_kept_out(level, "train"):
                started_ray = _start_train_ray(level)
                result = _train_failure_in_one_line(
                    lambda: fit(
                        args.method,
                        config,
                        num_workers=args.num_workers,
                        use_gpu=args.use_gpu,
                        cpus_per_worker=args.cpus_per_worker,
                        storage_path=args.storage_path,
                        name=args.name,
                        resume=not args.no_resume,
                        progress=progress,
                        notice=status.notice,
                    )
                )
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see sigterm_interrupts)
        if started_ray:
            with contextlib.suppress(Exception):  # the run's workers go with this Ray
                sys.modules["ray"].shutdown()
        print(
            f"vqpipe: interrupted: training stopped; rerun the same command to resume from "
            f"the last checkpoint of --name {args.name}",
            file=sys.stderr,
            flush=True,
        )
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    if result.error is not None:
        print(f"training failed: {result.error}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "checkpoint": result.checkpoint.path if result.checkpoint else None,
                "metrics": result.metrics,
            },
            indent=2,
            default=str,
        )
    )
    return 0


def _start_train_ray(verbosity: int) -> bool:
    """Start a Ray for ``train`` (RAY_ADDRESS's cluster, else local) on the main thread unless
    one is up, keeping our SIGTERM handler over ``ray.init``'s; True when this started it."""
    import ray

    from vqpipe.console import VERBOSE

    if ray.is_initialized():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    ray.init(include_dashboard=False, log_to_driver=verbosity >= VERBOSE)
    if threading.current_thread() is threading.main_thread() and previous is not None:
        signal.signal(signal.SIGTERM, previous)
    return True


def _train_failure_in_one_line(call: Callable[[], Any]) -> Any:
    """:func:`_off_main_thread`, a failed run (an error in a training worker) raised as a
    :class:`JobError` whose line is the worker's exception (the full traceback stays in Ray's
    output, whose file is named)."""
    import ray.train

    try:
        return _off_main_thread(call)
    except ray.train.TrainingFailedError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise JobError(f"training failed: {lines[-1] if lines else type(exc).__name__}") from exc


def _off_main_thread(call: Callable[[], Any]) -> Any:
    """``call()`` on a thread of its own while this one waits. Ray Train's ``fit()`` on the
    main thread replaces the Ctrl-C handler with one that aborts the run and returns as if it
    had ended (exit 1, no word of the interrupt); off it, Ctrl-C and SIGTERM reach ours."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # re-raised on the calling thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="vqpipe-train", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # short waits: a signal handler runs between them
    if "error" in box:
        raise box["error"]
    return box["result"]
