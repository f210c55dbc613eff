"""Reads never hang (`--read-timeout` holds while a request stalls), and transient vs permanent
is told from exception types and status codes, never from the words of a path or message.

The stalls are real: an HTTP proxy on 127.0.0.1 in front of the loopback S3 server (moto)
forwards every request, but answers the GETs of chosen keys slowly — a byte every second, or
nothing at all after some bytes — as a throttled or wedged object store does."""

from __future__ import annotations

import errno
import http.client
import io
import json
import socket
import tarfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tests.lake_data import image_bytes, write_shard
from vqpipe.cli import main
from vqpipe.storage import read_quality_table

BRIGHTNESS = ["--scorer", "brightness"]
JOB_LIMIT_S = 60.0
"""A job with stalled reads (``--read-timeout 3``) ends within this, start-up included."""
HUNG_S = 10.0
"""A read with a 0.5–2 s deadline still running after this hangs. The stalls below last far
longer (30 s, forever, or 1 byte/s of a 2 KB file); the margin absorbs a loaded 2-core CI
machine, where a 4 s limit once failed a read that did time out."""


class StallProxy:
    """An HTTP proxy in front of the loopback S3 server. ``stall`` maps ``bucket/key`` to
    ``(from_byte, every_s)``: a GET of that key gets its headers and the body up to byte
    ``from_byte`` of the object at once, then one byte every ``every_s`` seconds (None: no
    more bytes, ever). Every other request is forwarded as it is."""

    def __init__(self, target: int, stall: dict[str, tuple[int, float | None]]) -> None:
        self.target, self.stall, self.closed = target, stall, threading.Event()
        self.stalled: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target, timeout=30)
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                self.send_response_only(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() in ("transfer-encoding", "connection"):
                        continue
                    if name.lower() == "content-length" and self.command != "HEAD":
                        continue
                    self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                key = urllib.parse.unquote(self.path.split("?", 1)[0]).lstrip("/")
                rule = proxy.stall.get(key) if self.command == "GET" else None
                if rule is None or response.status >= 300:
                    self.wfile.write(data)
                    return
                first = 0  # the object's offset of this response's first byte
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    first = int(ranged[len("bytes=") :].split("-", 1)[0] or 0)
                from_byte, every_s = rule
                fast = max(0, min(len(data), from_byte - first))
                proxy.stalled.append(key)
                try:
                    self.wfile.write(data[:fast])
                    self.wfile.flush()
                    for i in range(fast, len(data)):
                        if proxy.closed.wait(3600 if every_s is None else every_s):
                            return
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                except OSError:  # the client gave up and closed the connection
                    return

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stall_proxy(s3_server):
    """Makes a :class:`StallProxy` in front of the loopback S3 server; closes it after."""
    proxies: list[StallProxy] = []
    port = int(s3_server["client_kwargs"]["endpoint_url"].rsplit(":", 1)[1])

    def make(stall: dict[str, tuple[int, float | None]]) -> tuple[StallProxy, dict]:
        proxy = StallProxy(port, stall)
        proxies.append(proxy)
        return proxy, {**s3_server, "client_kwargs": {"endpoint_url": proxy.url}}

    yield make
    for proxy in proxies:
        proxy.close()


def _within(limit_s: float, call, *args):
    """``call(*args)`` in a daemon thread, so that a read that hangs fails the test instead of
    hanging it: (its result, seconds); what it raised is raised here."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = call(*args)
        except BaseException as exc:  # raised below
            result["error"] = exc

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    elapsed = time.monotonic() - start
    assert not thread.is_alive(), f"still running after {limit_s:g} s: a read hangs"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"], elapsed


def _score(argv: list[str]) -> tuple[int, float]:
    """``main(argv)`` as a user types it (in a thread: a hung job fails the test): (exit
    status, seconds)."""
    return _within(JOB_LIMIT_S, main, argv)  # type: ignore[return-value]


# -------------------------------------------------------------------------------------------
# stalled objects through the CLI


def test_stalled_objects_become_transient_rows_and_their_block_mates_are_scored(
    ray_local, s3_bucket, stall_proxy, tmp_path
):
    bucket, s3 = s3_bucket
    names = ["a.png", "b.png", "trickle.png", "c.png", "silent.png", "d.png"]
    for i, name in enumerate(names):
        s3.pipe(f"{bucket}/in/{name}", image_bytes(i, "PNG"))
    s3.invalidate_cache()
    # one byte a second: no socket timeout ever fires, only the read's deadline can stop it;
    # silent: the headers, then nothing
    proxy, options = stall_proxy(
        {f"{bucket}/in/trickle.png": (0, 1.0), f"{bucket}/in/silent.png": (0, None)}
    )
    out = tmp_path / "out"
    argv = ["score", f"s3://{bucket}/in/", "--out", str(out), *BRIGHTNESS, "--read-timeout", "3"]
    status, elapsed = _score([*argv, "--storage-options", json.dumps(options)])
    assert status == 0  # as for any job whose rows carry errors
    assert elapsed < JOB_LIMIT_S
    assert {f"{bucket}/in/trickle.png", f"{bucket}/in/silent.png"} <= set(proxy.stalled)
    table = read_quality_table(str(out)).set_index("uri")
    assert sorted(table.index) == sorted(f"s3://{bucket}/in/{n}" for n in names)  # one row each
    for name in ("trickle.png", "silent.png"):
        row = table.loc[f"s3://{bucket}/in/{name}"]
        assert row["error"].startswith("read: ") and "timed out" in row["error"], row["error"]
        assert row["error_kind"] == "transient"
    # the good files of the same listing (one decode block of 6 rows) are all scored
    good = table.loc[[f"s3://{bucket}/in/{n}" for n in ("a.png", "b.png", "c.png", "d.png")]]
    assert good["error"].isna().all() and good["brightness_score"].notna().all()


def test_a_tar_shard_that_stalls_mid_stream_keeps_the_samples_read_before(
    ray_local, s3_bucket, stall_proxy, tmp_path
):
    from vqpipe.io.records import DEFAULT_BLOCK_SIZE

    bucket, s3 = s3_bucket
    # ~1 MB of noise per sample: the tar spans two of the reader's 8 MiB ranged reads
    samples = [(f"{i:04d}", {"png": image_bytes(i, "PNG", (600, 600))}) for i in range(12)]
    raw = write_shard(tmp_path / "00000.tar", samples).read_bytes()
    assert len(raw) > DEFAULT_BLOCK_SIZE + 2_000_000
    s3.pipe(f"{bucket}/wds/00000.tar", raw)
    s3.invalidate_cache()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        headers = [m.offset for m in tar.getmembers()]
    # a sample is complete once the next one's header is read; the stall is in the 2nd read
    starts = zip(samples, headers[1:], strict=False)
    before = [key for (key, _), nxt in starts if nxt + 512 <= DEFAULT_BLOCK_SIZE]
    assert 3 <= len(before) < len(samples)
    proxy, options = stall_proxy({f"{bucket}/wds/00000.tar": (DEFAULT_BLOCK_SIZE + 100_000, 1.0)})
    out = tmp_path / "out"
    argv = ["score", f"s3://{bucket}/wds/", "--out", str(out), *BRIGHTNESS, "--read-timeout", "3"]
    status, elapsed = _score([*argv, "--storage-options", json.dumps(options)])
    assert status == 0
    assert elapsed < JOB_LIMIT_S and f"{bucket}/wds/00000.tar" in proxy.stalled
    table = read_quality_table(str(out))
    scored = table[table["error"].isna()]
    assert sorted(scored["key"]) == before and scored["brightness_score"].notna().all()
    errors = table[table["error"].notna()]
    assert len(errors) == 1, errors["error"].tolist()
    error = errors.iloc[0]
    assert error["key"] == f"@{len(before)}"
    assert error["error"].startswith(f"read: shard s3://{bucket}/wds/00000.tar after ")
    assert "ReadTimeoutError" in error["error"] and error["error_kind"] == "transient"


# -------------------------------------------------------------------------------------------
# the deadline itself


def test_read_input_gives_up_at_the_deadline_while_a_request_stalls(s3_bucket, stall_proxy):
    from vqpipe.io.reading import ReadTimeoutError, read_input

    bucket, s3 = s3_bucket
    s3.pipe(f"{bucket}/slow.png", image_bytes(0, "PNG"))
    s3.pipe(f"{bucket}/ok.png", image_bytes(1, "PNG"))
    _, options = stall_proxy({f"{bucket}/slow.png": (10, 1.0)})
    with pytest.raises(ReadTimeoutError, match="timed out after 2 s"):
        _within(HUNG_S, lambda: read_input(f"s3://{bucket}/slow.png", options, timeout_s=2))
    assert read_input(f"s3://{bucket}/ok.png", options, timeout_s=2) == image_bytes(1, "PNG")


def test_an_open_shard_stream_that_stalls_ends_with_a_transient_timeout(s3_bucket, stall_proxy):
    from vqpipe.io.fs import is_transient
    from vqpipe.io.reading import ReadTimeoutError
    from vqpipe.io.records import open_input

    bucket, s3 = s3_bucket
    data = bytes(range(256)) * 4096  # 1 MiB
    s3.pipe(f"{bucket}/stream.bin", data)
    s3.pipe(f"{bucket}/other.bin", data)
    _, options = stall_proxy({f"{bucket}/stream.bin": (300_000, None)})
    with open_input(f"s3://{bucket}/stream.bin", options, timeout_s=2, block_size=100_000) as fh:
        assert fh.read(250_000) == data[:250_000]  # three ranged reads, each in time
        with pytest.raises(ReadTimeoutError) as caught:
            _within(HUNG_S, fh.read, 100_000)
    assert is_transient(caught.value)
    with open_input(f"s3://{bucket}/other.bin", options, timeout_s=2) as fh:  # seekable
        fh.seek(-10, io.SEEK_END)
        assert fh.read(10) == data[-10:] and fh.tell() == len(data)


def test_a_local_read_that_blocks_is_abandoned_at_the_deadline(tmp_path, monkeypatch):
    import vqpipe.io.reading as reading

    path = tmp_path / "nfs.png"
    path.write_bytes(b"x" * 100)
    release = threading.Event()
    real = reading._read_stream

    def stuck(fh, *args):  # a read on a hung network mount
        release.wait(30)
        return real(fh, *args)

    monkeypatch.setattr(reading, "_read_stream", stuck)
    try:
        with pytest.raises(reading.ReadTimeoutError):
            _within(HUNG_S, lambda: reading.read_input(str(path), timeout_s=0.5))
    finally:
        release.set()


# -------------------------------------------------------------------------------------------
# transient or permanent: types and status codes, never words


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    body = {"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(body, "GetObject")


def _translated(code: str, status: int) -> OSError:
    """What s3fs raises: its own OSError, the botocore error as the cause."""
    from s3fs.errors import translate_boto_error

    return translate_boto_error(_client_error(code, status))


def _http_status(status: int):
    import aiohttp
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    url = URL("http://127.0.0.1/img_0500.png")
    info = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp.ClientResponseError(info, (), status=status, message="x")


def _refused_http() -> BaseException:
    """What fsspec's HTTP filesystem raises for a refused connection (FileNotFoundError)."""
    import fsspec

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    try:
        fs.info(f"http://127.0.0.1:{port}/x.png")
    except Exception as exc:
        return exc
    raise AssertionError("a closed port answered")


def test_decode_errors_are_permanent_whatever_the_file_is_called():
    from PIL import UnidentifiedImageError

    from vqpipe.io.fs import is_transient
    from vqpipe.media.decode import MediaError

    chained = MediaError("cannot decode timeout_cat.jpg")
    chained.__cause__ = UnidentifiedImageError("cannot identify image file 'img_0500.png'")
    for exc in (
        UnidentifiedImageError("cannot identify image file 'img_0500.png'"),
        MediaError("cannot decode timeout_cat.jpg: truncated"),
        ValueError("img_0500.png: image file is truncated (500 bytes not processed)"),
        OSError("broken data stream when reading image file timeout_cat.jpg"),
        tarfile.ReadError("unexpected end of data in member timeout_cat.jpg (503 bytes)"),
        RuntimeError("decoder failed on s3://bucket/throttled/slowdown_500.mp4: timed out? no"),
        chained,
    ):
        assert not is_transient(exc), exc


def test_connection_and_server_errors_are_transient_by_type_and_status():
    from fsspec.exceptions import FSTimeoutError

    from vqpipe.io.fs import is_transient
    from vqpipe.io.reading import ReadTimeoutError

    wrapped = OSError("could not read")
    wrapped.__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    refused = _refused_http()
    assert isinstance(refused, FileNotFoundError)  # what fsspec says for a refused connection
    for exc in (
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        socket.timeout("timed out"),  # noqa: UP041 (the name a user meets)
        TimeoutError(),
        OSError(errno.ETIMEDOUT, "x"),
        OSError(errno.EPIPE, "x"),
        OSError(errno.ECONNREFUSED, "x"),
        FSTimeoutError(),
        ReadTimeoutError("read timed out after 3 s"),
        _client_error("SlowDown", 503),
        _client_error("Throttling", 400),
        _client_error("RequestTimeout", 400),
        _client_error("InternalError", 500),
        _client_error("Anything", 502),
        _client_error("TooManyRequests", 429),
        _translated("SlowDown", 503),
        _translated("ServiceUnavailable", 503),
        _http_status(504),
        wrapped,
        refused,
    ):
        assert is_transient(exc), repr(exc)
    for exc in (
        _client_error("AccessDenied", 403),
        _client_error("NoSuchKey", 404),
        _translated("AccessDenied", 403),
        _translated("NoSuchKey", 404),
        _http_status(404),
        FileNotFoundError("s3://bucket/img_0500.png"),
        PermissionError("timeout_cat.jpg"),
    ):
        assert not is_transient(exc), repr(exc)


def test_a_refused_http_connection_is_a_transient_read_row_not_not_found():
    from vqpipe.media.decode import MediaLimits
    from vqpipe.pipeline import decode_stage
    from vqpipe.pipeline.config import ScorerOptions

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    batch = {
        "uri": np.array([f"http://127.0.0.1:{port}/img_0500.png"]),
        "media_type": np.array(["image"]),
    }
    limits = MediaLimits(read_timeout_s=10)
    out = decode_stage.decode_batch(batch, [ScorerOptions("brightness")], {}, 1.0, limits)
    assert out["error"][0].startswith("read: ") and "not found" not in out["error"][0]
    assert "ClientConnectorError" in out["error"][0] and out["error_kind"][0] == "transient"


def test_a_blocking_filesystem_stream_is_abandoned_after_the_read_timeout():
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from vqpipe.io.reading import ReadTimeoutError
    from vqpipe.io.records import open_input

    release = threading.Event()

    class Wedged(MemoryFileSystem):
        """A blocking (not async) store whose reads past the first 1000 bytes never return."""

        protocol = "wedged"
        root_marker = "/"

        @classmethod
        def _strip_protocol(cls, path):
            return "/" + str(path).removeprefix("wedged://").lstrip("/")

        def _open(self, path, mode="rb", **kw):
            fh = super()._open(path, mode, **kw)
            read = fh.read

            def stalled(n=-1):
                if fh.tell() >= 1000:
                    release.wait(30)
                return read(n)

            fh.read = stalled
            return fh

    fsspec.register_implementation("wedged", Wedged, clobber=True)
    Wedged().pipe("/t/shard.tar", b"y" * 5000)
    try:
        with open_input("wedged:///t/shard.tar", timeout_s=0.5, block_size=1000) as fh:
            assert fh.read(1000) == b"y" * 1000
            with pytest.raises(ReadTimeoutError):
                _within(HUNG_S, fh.read, 10)
            with pytest.raises(ReadTimeoutError):  # the stream is abandoned, not re-entered
                _within(HUNG_S, fh.read, 10)
    finally:
        release.set()
