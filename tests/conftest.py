"""Shared fixtures: one local Ray for the whole session (started only when a test asks)."""

import os

import pytest

os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")


@pytest.fixture(scope="session", autouse=True)
def vqpipe_cache(tmp_path_factory):
    """Checkpoint downloads and computed anchor matrices go to a per-session cache."""
    path = tmp_path_factory.mktemp("vqpipe-cache")
    os.environ["VQPIPE_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's server mode) on 127.0.0.1; yields storage options."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
    }
    yield options
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the loopback S3 server; yields (bucket name, s3fs filesystem)."""
    import re

    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    fs.mkdir(bucket)
    yield bucket, fs
    fs.rm(bucket, recursive=True)


@pytest.fixture(scope="session")
def qalign_checkpoint(tmp_path_factory):
    """A tiny random mPLUG-Owl2 checkpoint directory in the official layout (float32)."""
    from vqpipe.models.mplug_owl2.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("qalign") / "tiny", seed=3)
