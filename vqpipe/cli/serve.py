"""``vqpipe serve``: an online scoring service (HTTP JSON) on Ray Serve, with dynamic batching."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from vqpipe.cli.options import (
    add_address,
    add_media_limits,
    add_storage_options,
    add_video_fps,
    media_limits,
    storage_options,
)
from vqpipe.errors import JobError, UserError

EPILOG = """\
examples:
  vqpipe serve --scorer gamma --port 8000            # http://127.0.0.1:8000, the demo Gamma
  vqpipe serve --scorer gamma:checkpoint=s3://m/gamma.pth,num_gpus=1,actors=1-4 \\
      --scorer qalign:column=qalign,num_gpus=1 --host 0.0.0.0 --batch-wait-ms 5
  curl -s localhost:8000/healthz
  curl -s localhost:8000/score/gamma -H 'content-type: application/json' \\
      -d '{"items": [{"image": "'$(base64 -w0 cat.jpg)'"}, {"uri": "s3://lake/a.jpg"}]}'
  curl -s localhost:8000/score/gamma -F image=@cat.jpg -F image=@dog.png

POST /score/<column> answers {"scores": [...], "errors": [...], "score_range": [lo, hi],
"higher_better": ...}, one entry per item in order: an item that cannot be read, decoded or
scored has a null score and an error naming the stage ("decode: ..."), never a score of 0.
GET /healthz answers 200 once every scorer has loaded (503 before); GET /stats the batch sizes.
Per scorer: batch_size= (the batch limit), actors=N or MIN-MAX (replicas, autoscaled between),
num_gpus= and num_cpus= per replica; the global flags are their defaults. URIs are read with
the media limits below, from object stores and the --uri-prefix places only. Runs until
Ctrl-C, which shuts the service down. Python client: vqpipe.client.VQClient. See docs/serve.md.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve scorers over HTTP (Ray Serve, dynamic batching)",
        description="Serve one or more scorers over HTTP: POST images (base64 JSON or "
        "multipart) or URIs to /score/<column>, get one score or error per item.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scorer",
        action="append",
        metavar="SPEC",
        help="a scorer and its options, as for vqpipe score (repeatable; default: gamma)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="items per model batch at most (default: the scorer's batch size)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        metavar="MS",
        help="how long a batch waits to fill before it runs (default: %(default)g)",
    )
    parser.add_argument(
        "--replicas",
        default=None,
        metavar="N|MIN-MAX",
        help="replicas per scorer; MIN-MAX autoscales on requests in flight (default: 1)",
    )
    parser.add_argument(
        "--num-gpus", type=float, default=None, help="GPUs per replica (default: 0)"
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=64 * 2**20,
        help="request body size at most; larger ones are answered 413 (default: 64 MiB)",
    )
    parser.add_argument(
        "--max-items",
        type=int,
        default=256,
        help="items per request at most; more are answered 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--uri-prefix",
        action="append",
        metavar="PREFIX",
        default=None,
        help="a local folder or URL prefix URIs may be read from, besides object stores "
        "(s3://, gs://, az://) (repeatable; default: object stores only)",
    )
    add_video_fps(parser)
    add_media_limits(parser)
    add_address(parser)
    add_storage_options(parser)
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="give up when the scorers have not loaded by then (default: %(default)g)",
    )
    parser.set_defaults(func=_cmd_serve)


def service_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The fields of the :class:`~vqpipe.service.config.ServiceConfig` of the arguments, checked
    without Ray and without Ray Serve (the module that imports it comes after)."""
    import os

    from vqpipe.pipeline.config import ScorerOptions
    from vqpipe.pipeline.validate import check_checkpoint, check_scorer
    from vqpipe.service.body import REMOTE_SCHEMES
    from vqpipe.service.column import check_servable

    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: use 1 to 65535")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: use 1 or more")
    if args.batch_wait_ms < 0:
        raise UserError(f"--batch-wait-ms {args.batch_wait_ms:g}: use 0 or more")
    if args.num_gpus is not None and args.num_gpus < 0:
        raise UserError(f"--num-gpus {args.num_gpus:g}: use 0 or more")
    for flag in ("max_request_bytes", "max_items"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: use 1 or more")
    storage = storage_options(args.storage_options)
    defaults = {
        "batch_size": args.batch_size,
        "num_gpus": args.num_gpus,
        "actors": _replicas(args.replicas) if args.replicas else None,
    }
    specs = [ScorerOptions.parse(text, **defaults) for text in args.scorer or ["gamma"]]
    seen: set[str] = set()
    for spec in specs:
        if spec.column in seen:
            raise UserError(f"two scorers serve the column {spec.column!r}: give one column=NAME")
        seen.add(spec.column)
        check_scorer(spec, storage)
        try:
            check_servable(spec)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        check_checkpoint(spec, spec.scorer_class(), storage)
    prefixes = list(REMOTE_SCHEMES)
    for prefix in args.uri_prefix or ():
        if "://" in prefix:
            prefixes.append(prefix)
        elif not os.path.isdir(prefix):
            raise UserError(f"--uri-prefix {prefix}: not a folder")
        else:
            prefixes.append(os.path.realpath(prefix))
    return {
        "scorers": specs,
        "storage_options": storage,
        "limits": media_limits(args),
        "video_fps": args.video_fps,
        "batch_wait_ms": args.batch_wait_ms,
        "max_request_bytes": args.max_request_bytes,
        "max_items": args.max_items,
        "uri_prefixes": tuple(prefixes),
    }


def _replicas(text: str) -> tuple[int, int]:
    from vqpipe.pipeline.config import parse_actors

    try:
        return parse_actors(text)
    except UserError:
        raise UserError(f"--replicas {text}: use N or MIN-MAX with 1 <= MIN <= MAX") from None


def _check_serve_installed() -> None:
    try:
        import ray.serve  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"vqpipe serve needs Ray Serve ({exc.name or exc} is missing): "
            "pip install 'vqpipe[serve]' (or 'ray[serve]')"
        ) from None


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from vqpipe.console import NORMAL, ray_output_kept_out, terminal
    from vqpipe.pipeline.job import demo_notice

    settings = service_settings(args)
    if args.address in (None, "local"):  # the HTTP proxy listens on this machine
        _check_port_free(args.host, args.port)
    _check_serve_installed()
    from vqpipe.service.app import APP_NAME, build_app
    from vqpipe.service.config import ServiceConfig

    config = ServiceConfig(**settings)
    out = terminal()
    for line in demo_notice(config):
        print(f"vqpipe: note: {line}", file=out, flush=True)
    url = f"http://{_client_host(args.host)}:{args.port}"
    connected = started_serve = served = False
    try:
        with ray_output_kept_out(NORMAL, "serve"):  # Ray's and Serve's own lines: to a log
            try:
                import ray
                from ray import serve

                if not ray.is_initialized():
                    ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
                    connected = True
                started_serve = not _serve_running()
                serve.start(http_options={"host": args.host, "port": args.port})
                served = True
                serve.run(build_app(config), name=APP_NAME, route_prefix="/")
                _wait_ready(url, args.ready_timeout)
                columns = ", ".join(spec.column for spec in config.scorers)
                print(f"vqpipe serve: ready at {url} (columns: {columns})", flush=True)
                while True:
                    time.sleep(3600)
            finally:
                _stop(served, started_serve, connected)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (vqpipe.cli turns it into one)
        print("vqpipe: interrupted: the service is shut down", file=sys.stderr, flush=True)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _client_host(host: str) -> str:
    """The address a client on this machine reaches ``host`` at (a wildcard: loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _wait_ready(url: str, timeout_s: float) -> None:
    """Poll ``url``/healthz until it answers 200; a scorer that failed to load, or no answer
    by ``timeout_s``, is a :class:`JobError` naming the scorers' states."""
    deadline = time.monotonic() + timeout_s
    last: Any = "no answer"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # our own address
    while time.monotonic() < deadline:
        try:
            with direct.open(f"{url}/healthz", timeout=10) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            with contextlib.suppress(Exception):
                last = json.loads(exc.read())
            if isinstance(last, dict) and last.get("status") == "failed":
                failed = {c: s for c, s in last.get("columns", {}).items() if s != "ready"}
                raise JobError(f"a scorer failed to load: {failed}") from None
        except (OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise JobError(f"the service was not ready after {timeout_s:g} s (last answer: {last})")


def _serve_running() -> bool:
    """Whether Serve already runs on the cluster (then only this application is ours)."""
    try:
        from ray.serve.context import _get_global_client  # no public "is Serve up?"

        return _get_global_client(raise_if_no_controller_running=False) is not None
    except Exception:  # unknown: leave the other applications alone
        return True


def _stop(served: bool, started_serve: bool, connected: bool) -> None:
    """Shut the service down: Serve itself when this command started it, else only this
    application (the cluster's other Serve applications stay); then leave Ray (a local Ray
    this command started stops with it)."""
    with contextlib.suppress(Exception):
        import ray
        from ray import serve

        if served and started_serve:
            serve.shutdown()
        elif served:
            from vqpipe.service.app import APP_NAME

            serve.delete(APP_NAME)
        if connected:
            ray.shutdown()
