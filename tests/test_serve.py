"""``vqpipe serve`` and ``vqpipe.client``.

Without Ray Serve: the request parsing, the routes (status codes, the answer's shape), the
column scorer against the batch API, the client over a stdlib HTTP server that runs the same
routes, and the command's one-line refusals before Ray. With Ray Serve installed (the ``serve``
extra), the service itself through the CLI on its own local Ray, over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.server
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqpipe.cli import main
from vqpipe.client import Result, ServiceError, VQClient
from vqpipe.service.body import REMOTE_SCHEMES, Item, RequestError, parse_items, uri_refusal
from vqpipe.service.column import ColumnInfo
from vqpipe.service.replica import ScorerWorker
from vqpipe.service.routes import Routes, answer

ROOT = Path(__file__).resolve().parents[1]
HAS_SERVE = all(importlib.util.find_spec(m) for m in ("starlette", "fastapi", "uvicorn"))
needs_serve = pytest.mark.skipif(not HAS_SERVE, reason="Ray Serve not installed (vqpipe[serve])")
INFO = ColumnInfo("gamma", "gamma", (0.0, 1.0), True)


def _png(seed: int, size: tuple[int, int] = (48, 64), fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    array = (rng.random((*size, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _json(items: list) -> bytes:
    return json.dumps({"items": items}).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _multipart(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    boundary = "vqpipe-test-boundary"
    body = b""
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "application/octet-stream" if filename else "text/plain"
        body += (
            (
                f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                f"Content-Type: {kind}\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# --- request bodies ------------------------------------------------------------------------


def test_json_items_in_order_with_per_item_errors(tmp_path):
    png = _png(0)
    items = parse_items(
        _json(
            [
                {"image": _b64(png)},
                {"uri": str(tmp_path / "a.jpg")},
                {"image": "not base64!"},
                {"neither": 1},
                {"image": "data:image/png;base64," + _b64(png)},
                "a string",
            ]
        ),
        "application/json",
        uri_prefixes=[str(tmp_path)],
    )
    assert items[0] == Item(data=png)
    assert items[1] == Item(uri=str(tmp_path / "a.jpg"))
    assert items[2].error.startswith("request: image is not valid base64")
    assert items[3].error.startswith("request: an item is")
    assert items[4] == Item(data=png)
    assert items[5].error.startswith("request: an item is")


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (_json([{"uri": "s3://b/x.jpg"}]), "application/x-www-form-urlencoded", None),
        (b'{"things": []}', "application/json", 400),
        (b'{"items": []}', "application/json", 400),
        (b"x", "text/plain", 400),
        (_json([{"uri": "s3://b/x.jpg"}] * 5), "application/json", 413),
    ],
)
def test_unreadable_requests_are_refused_whole(body, content_type, status):
    if status is None:  # JSON whatever the header says (curl -d)
        assert parse_items(body, content_type, max_items=4) == [Item(uri="s3://b/x.jpg")]
        return
    with pytest.raises(RequestError) as caught:
        parse_items(body, content_type, max_items=4)
    assert caught.value.status == status


def test_multipart_files_and_uri_fields():
    png, jpg = _png(1), _png(2, fmt="JPEG")
    body, content_type = _multipart(
        [("image", png, "a.png"), ("uri", b"s3://bucket/b.jpg", None), ("file", jpg, "c.jpg")]
    )
    items = parse_items(body, content_type)
    assert items == [Item(data=png), Item(uri="s3://bucket/b.jpg"), Item(data=jpg)]


def test_uris_only_from_object_stores_and_the_allowed_folders(tmp_path):
    allowed = tmp_path / "media"
    allowed.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (allowed / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    prefixes = [*REMOTE_SCHEMES, str(allowed)]
    assert uri_refusal("s3://bucket/a.jpg", prefixes) is None
    assert uri_refusal(str(allowed / "a.jpg"), prefixes) is None
    assert uri_refusal(f"file://{allowed}/a.jpg", prefixes) is None
    for uri in (
        "/etc/passwd",
        str(allowed / ".." / "secret.jpg"),
        str(allowed / "link.jpg"),  # a link out of the folder
        f"{allowed}-evil/a.jpg",
        "http://169.254.169.254/latest/meta-data",
        "media/a.jpg",
    ):
        assert uri_refusal(uri, prefixes) is not None, uri


# --- routes --------------------------------------------------------------------------------


async def _body(chunks):
    for chunk in chunks:
        yield chunk


def _routes(states: dict[str, str] | None = None, **kwargs) -> tuple[Routes, list]:
    calls = []
    states = states if states is not None else {"gamma": "ready"}

    async def score(column, items):
        calls.append((column, items))
        return [(None, i.error) if i.error else (0.5, None) for i in items]

    async def get_states():
        return dict(states)

    async def stats():
        return {"gamma": {"max_batch_size": 3}}

    return Routes({"gamma": INFO}, score, get_states, stats, **kwargs), calls


def _call(routes, method, path, body=b"", headers=None, chunk=1024):
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    return asyncio.run(routes.handle(method, path, headers or {}, _body(chunks)))


def test_score_route_answers_one_entry_per_item_in_order():
    routes, calls = _routes()
    body = _json([{"image": _b64(b"abc")}, {"image": "%%"}, {"image": _b64(b"def")}])
    status, payload = _call(routes, "POST", "/score/gamma", body)
    assert status == 200
    assert payload["scores"] == [0.5, None, 0.5]
    assert payload["errors"][0] is None and payload["errors"][2] is None
    assert payload["errors"][1].startswith("request: ")
    assert payload["score_range"] == [0.0, 1.0] and payload["higher_better"] is True
    assert len(calls) == 1 and len(calls[0][1]) == 3


def test_routes_statuses():
    routes, calls = _routes(max_request_bytes=100)
    big = _json([{"image": _b64(b"x" * 200)}])
    assert _call(routes, "POST", "/score/nope", b"{}")[0] == 404
    assert "gamma" in _call(routes, "POST", "/score/nope", b"{}")[1]["error"]
    assert _call(routes, "GET", "/score/gamma")[0] == 405
    assert _call(routes, "POST", "/score/gamma", b"{bad")[0] == 400
    assert _call(routes, "POST", "/score/gamma", big)[0] == 413  # streamed past the limit
    status, payload = _call(routes, "POST", "/score/gamma", big, {"content-length": "300"})
    assert status == 413 and "limit" in payload["error"]
    assert _call(routes, "GET", "/elsewhere")[0] == 404
    assert _call(routes, "GET", "/stats") == (200, {"columns": {"gamma": {"max_batch_size": 3}}})
    assert _call(routes, "GET", "/columns")[1]["columns"]["gamma"]["score_range"] == (0.0, 1.0)
    assert not calls


def test_healthz_is_503_until_every_column_is_ready_then_stays_200():
    states = {"gamma": "loading"}
    routes, _ = _routes(states)
    status, payload = _call(routes, "GET", "/healthz")
    assert (status, payload["status"]) == (503, "loading")
    states["gamma"] = "ready"
    assert _call(routes, "GET", "/healthz")[0] == 200
    states["gamma"] = "loading"  # a replica added by autoscaling, still loading
    assert _call(routes, "GET", "/healthz")[0] == 200
    states["gamma"] = "failed: OSError: no checkpoint"
    status, payload = _call(routes, "GET", "/healthz")
    assert (status, payload["status"]) == (503, "failed")


def test_answer_never_turns_an_error_into_a_number():
    payload = answer(INFO, [(0.25, None), (None, "decode: truncated")])
    assert payload["scores"] == [0.25, None]
    assert payload["errors"] == [None, "decode: truncated"]


def test_replica_options_fixed_autoscaled_and_gpus():
    from vqpipe.pipeline.config import ScorerOptions
    from vqpipe.service.config import replica_options

    fixed = replica_options(ScorerOptions.parse("gamma:batch_size=32,actors=2"))
    assert fixed["name"] == "scorer_gamma" and fixed["num_replicas"] == 2
    assert fixed["max_ongoing_requests"] >= 32  # a batch can fill from one-item requests
    assert "autoscaling_config" not in fixed
    scaled = replica_options(ScorerOptions.parse("gamma:num_gpus=1,actors=1-4,column=g"))
    assert scaled["autoscaling_config"]["min_replicas"] == 1
    assert scaled["autoscaling_config"]["max_replicas"] == 4
    assert scaled["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert "num_replicas" not in scaled and scaled["name"] == "scorer_g"


# --- the scorer behind a column, and the client -------------------------------------------


@pytest.fixture(scope="module")
def gamma_column():
    from vqpipe.errors import DemoCheckpointWarning
    from vqpipe.pipeline.config import ScorerOptions
    from vqpipe.service.column import ColumnScorer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DemoCheckpointWarning)
        return ColumnScorer(ScorerOptions.parse("gamma:device=cpu"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-images")
    paths = []
    for i in range(6):
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        path = folder / f"img{i}.{ext}"
        path.write_bytes(_png(10 + i, (40 + 8 * i, 72 - 4 * i), fmt))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def expected(gamma_column, images) -> np.ndarray:
    """The batch API's scores of ``images`` (what every served score must equal):
    :meth:`Scorer.score` of the column's scorer, as ``vqpipe.create_scorer("gamma")`` builds
    it (one model load for the module)."""
    return gamma_column.stage.scorer.score([str(p) for p in images])


def test_column_scores_equal_the_batch_api_and_errors_keep_batch_mates(
    gamma_column, images, expected
):
    items = [Item(data=p.read_bytes()) for p in images[:3]]
    items += [Item(data=b"\x89PNG\r\n\x1a\n broken"), Item(uri=str(images[3]))]
    items += [Item(error="request: bad"), Item(data=images[4].read_bytes())]
    results = gamma_column.score([gamma_column.prepare(i) for i in items])
    got = [results[i][0] for i in (0, 1, 2, 4, 6)]
    np.testing.assert_allclose(got, expected[[0, 1, 2, 3, 4]], atol=1e-5, rtol=0)
    assert results[3][0] is None and results[3][1].startswith("decode: ")
    assert results[5] == (None, "request: bad")
    missing = gamma_column.prepare(Item(uri=str(images[0]) + ".gone.jpg"))
    assert missing[0] is None and missing[1].startswith("read: ")


def test_uris_on_s3_are_read_with_the_storage_options(s3_bucket, s3_server, images):
    import vqpipe
    from vqpipe.pipeline.config import ScorerOptions
    from vqpipe.service.column import ColumnScorer

    bucket, fs = s3_bucket
    fs.pipe(f"{bucket}/a/img1.jpg", images[1].read_bytes())
    column = ColumnScorer(ScorerOptions.parse("brightness"), s3_server)
    items = [Item(uri=f"s3://{bucket}/a/img1.jpg"), Item(uri=f"s3://{bucket}/a/gone.jpg")]
    (score, error), missing = column.score([column.prepare(i) for i in items])
    assert error is None
    assert score == pytest.approx(
        vqpipe.create_scorer("brightness").score(str(images[1])), abs=1e-6
    )
    assert missing[0] is None and missing[1].startswith("read: ")


class _Handler(http.server.BaseHTTPRequestHandler):
    """The service's routes behind the standard library's HTTP server (no Ray): the client's
    side of the contract, tested without Serve."""

    routes: Routes

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        data = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload = asyncio.run(
            self.routes.handle(self.command, self.path, headers, _body([data]))
        )
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = _answer  # noqa: N815  (http.server's names)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_service(gamma_column, images):
    async def score(column, items):
        prepared = [gamma_column.prepare(i) for i in items]
        return gamma_column.score(prepared)

    async def states():
        return {"gamma": "ready"}

    async def stats():
        return {}

    handler = type(
        "Handler",
        (_Handler,),
        {
            "routes": Routes(
                {"gamma": INFO}, score, states, stats, 10**6, 16, [str(images[0].parent)]
            )
        },
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_sends_every_image_kind_and_reads_the_answer(local_service, images, expected):
    client = VQClient(local_service)
    assert client.wait_ready(timeout=10)["status"] == "ok"
    pil = Image.open(images[0]).convert("RGB")
    results = client.score(
        "gamma",
        images=[images[0].read_bytes(), str(images[1]), pil, np.asarray(pil), b"junk"],
        uris=[str(images[2]), "/etc/passwd"],
    )
    assert len(results) == 7 and all(isinstance(r, Result) for r in results)
    got = [results[i].score for i in (0, 1, 2, 3, 5)]
    np.testing.assert_allclose(got, expected[[0, 1, 0, 0, 2]], atol=1e-5, rtol=0)
    assert not results[4].ok and results[4].error.startswith("decode: ")
    assert not results[6].ok and "not allowed" in results[6].error
    assert results[0].score_range == (0.0, 1.0) and results[0].higher_better
    with pytest.raises(ServiceError) as caught:
        client.score("nope", images=[b"x"])
    assert caught.value.status == 404


def _routes_server(states: dict[str, str]):
    routes, _ = _routes(states)
    handler = type("Handler", (_Handler,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_the_command_waits_for_healthz_and_stops_on_a_failed_scorer():
    from vqpipe.cli.serve import _wait_ready
    from vqpipe.errors import JobError

    states = {"gamma": "loading"}
    server, url = _routes_server(states)
    try:
        threading.Timer(1.0, states.update, kwargs={"gamma": "ready"}).start()
        _wait_ready(url, timeout_s=30)  # returns once /healthz is 200
        assert states["gamma"] == "ready"
        states["gamma"] = "failed: OSError: no checkpoint"
        with pytest.raises(JobError, match="no checkpoint"):
            _wait_ready(url, timeout_s=30)
    finally:
        server.shutdown()
        server.server_close()


def test_client_reports_a_service_that_is_not_there():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = VQClient(f"http://127.0.0.1:{port}")
    assert client.healthz()["status"] == "unreachable"
    with pytest.raises(TimeoutError):
        client.wait_ready(timeout=0.3, interval=0.1)


class _Worker(ScorerWorker):
    """The replica's logic with a stand-in for ``@serve.batch``: the items that arrive within
    50 ms form one batch."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.pending: list = []

    async def score_batch(self, prepared):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((prepared, future))
        if len(self.pending) == 1:
            await asyncio.sleep(0.05)
            batch, self.pending = self.pending, []
            results = await self.run_batch([p for p, _ in batch])
            for (_, waiting), result in zip(batch, results, strict=True):
                waiting.set_result(result)
        return await future


def test_replica_loads_in_the_background_and_batches_concurrent_requests(monkeypatch, images):
    import vqpipe
    import vqpipe.service.replica as replica
    from vqpipe.pipeline.config import ScorerOptions
    from vqpipe.service.config import ServiceConfig

    release = threading.Event()
    real = replica.ColumnScorer

    def slow_load(*args):
        release.wait(30)
        return real(*args)

    monkeypatch.setattr(replica, "ColumnScorer", slow_load)
    spec = ScorerOptions.parse("brightness:column=light")
    worker = _Worker(spec, ServiceConfig(scorers=[spec], uri_prefixes=(str(images[0].parent),)))
    assert worker.state() == "loading"
    release.set()

    async def requests():
        bodies = [[Item(data=images[k].read_bytes())] for k in range(4)]
        bodies.append([Item(uri=str(images[4])), Item(data=b"no image"), Item(error="request: x")])
        return await asyncio.gather(*(worker.score(items) for items in bodies))

    answers = asyncio.run(requests())
    assert worker.state() == "ready"
    worker.check_health()
    expected = vqpipe.create_scorer("brightness").score([str(p) for p in images[:5]])
    got = [a["results"][0][0] for a in answers]
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert answers[4]["results"][1][0] is None
    assert answers[4]["results"][1][1].startswith("decode: ")
    assert answers[4]["results"][2] == (None, "request: x")
    stats = worker.stats()
    assert stats["max_batch_size"] > 1 and stats["items"] == 5, stats


def test_a_replica_whose_scorer_cannot_load_says_so(monkeypatch):
    import vqpipe.service.replica as replica
    from vqpipe.pipeline.config import ScorerOptions
    from vqpipe.service.config import ServiceConfig

    def missing(*args):
        raise FileNotFoundError("checkpoint /no/such/gamma.pth not found")

    monkeypatch.setattr(replica, "ColumnScorer", missing)
    spec = ScorerOptions.parse("gamma:checkpoint=/no/such/gamma.pth,device=cpu")
    worker = _Worker(spec, ServiceConfig(scorers=[spec]))
    answer = asyncio.run(worker.score([Item(data=b"x")]))
    assert "not available" in answer["unavailable"]
    assert worker.state() == "failed: FileNotFoundError: checkpoint /no/such/gamma.pth not found"
    with pytest.raises(RuntimeError, match="failed to load"):
        worker.check_health()


# --- the command ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scorer", "gama"], "unknown scorer 'gama'"),
        (["--port", "70000"], "--port 70000"),
        (["--scorer", "qalign:tasks=quality,aesthetics"], "serve one column per task"),
        (["--scorer", "gamma", "--scorer", "gamma"], "give one column=NAME"),
        (["--replicas", "4-2"], "--replicas 4-2"),
        (["--batch-wait-ms", "-1"], "--batch-wait-ms"),
        (["--max-request-bytes", "0"], "--max-request-bytes"),
        (["--uri-prefix", "/no/such/folder"], "--uri-prefix"),
        (["--scorer", "gamma:checkpoint=/no/such.pth"], "scorer gamma"),
    ],
)
def test_user_errors_are_one_line_before_ray(argv, message, capsys):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vqpipe: error: ") and message in err[0], err


def test_a_port_in_use_is_a_user_error(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["serve", "--host", "127.0.0.1", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.skipif(HAS_SERVE, reason="Ray Serve is installed")
def test_without_ray_serve_the_command_names_the_extra(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["serve", "--port", str(port)]) == 2
    assert "pip install 'vqpipe[serve]'" in capsys.readouterr().err


# --- the service on Ray Serve --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _loads(data: bytes) -> dict:
    try:
        return json.loads(data)
    except ValueError:  # Serve's proxy answers in text before the application is routed
        return {"text": data.decode("utf-8", "replace")}


def _get(url: str) -> tuple[int | None, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, _loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _loads(exc.read())
    except OSError:
        return None, {}


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, _loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _loads(exc.read())


@pytest.fixture
def served(tmp_path, images, s3_bucket, s3_server):
    """``vqpipe serve`` in a subprocess on its own local Ray: (url, process, /healthz seen)."""
    bucket, fs = s3_bucket
    fs.pipe(f"{bucket}/img5.png", images[5].read_bytes())
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    argv = [
        *("serve", "--scorer", "gamma:device=cpu,batch_size=16", "--host", "127.0.0.1"),
        *("--scorer", "brightness:num_cpus=0.25,column=light"),
        *("--port", str(port), "--address", "local", "--batch-wait-ms", "100"),
        *("--uri-prefix", str(images[0].parent), "--max-request-bytes", "400000"),
        *("--storage-options", json.dumps(s3_server)),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vqpipe.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    seen = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            status, payload = _get(f"{url}/healthz")
            if status is not None:
                seen.append((status, payload.get("status")))
            if status == 200:
                break
            time.sleep(0.2)
        assert seen and seen[-1][0] == 200, (seen, proc.poll())
        yield url, proc, seen, bucket
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its group left behind


@needs_serve
@pytest.mark.slow
def test_served_gamma_over_http(served, images, expected):
    url, proc, seen, bucket = served
    # healthz: 503 (loading) before 200; the proxy may answer 404 before the app is routed
    assert all(status in (503, 404) for status, _ in seen[:-1]), seen
    assert (503, "loading") in seen, seen
    assert _get(f"{url}/healthz")[1]["columns"] == {"gamma": "ready", "light": "ready"}

    # 64 concurrent requests of one or two images, all answered, equal to the batch API
    def one(k: int) -> tuple[int, list[int], dict]:
        picks = [k % 6] if k % 3 else [k % 6, (k + 1) % 6]
        body = _json([{"image": _b64(images[i].read_bytes())} for i in picks])
        status, payload = _post(f"{url}/score/gamma", body)
        return status, picks, payload

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(one, range(64)))
    for status, picks, payload in answers:
        assert status == 200, payload
        assert payload["errors"] == [None] * len(picks)
        np.testing.assert_allclose(payload["scores"], expected[picks], atol=1e-5, rtol=0)
        assert payload["score_range"] == [0.0, 1.0] and payload["higher_better"] is True
    stats = _get(f"{url}/stats")[1]["columns"]["gamma"]
    assert stats["max_batch_size"] > 1, stats
    assert stats["max_batch_size"] <= 16

    # a bad image among good ones; URIs (an allowed folder, S3, a refused path); multipart
    body = _json(
        [
            {"image": _b64(images[0].read_bytes())},
            {"image": _b64(b"\xff\xd8\xff\xe0 not really a jpeg")},
            {"uri": str(images[1])},
            {"uri": f"s3://{bucket}/img5.png"},
            {"uri": "/etc/hostname"},
            {"uri": str(images[1]) + ".missing.jpg"},
        ]
    )
    status, payload = _post(f"{url}/score/gamma", body)
    assert status == 200
    np.testing.assert_allclose(
        [payload["scores"][i] for i in (0, 2, 3)], expected[[0, 1, 5]], atol=1e-5, rtol=0
    )
    assert [payload["scores"][i] for i in (1, 4, 5)] == [None] * 3
    assert payload["errors"][1].startswith("decode: ")
    assert payload["errors"][4].startswith("request: uri not allowed")
    assert payload["errors"][5].startswith("read: ")
    multipart, content_type = _multipart(
        [("image", images[2].read_bytes(), "a.png"), ("uri", str(images[3]).encode(), None)]
    )
    status, payload = _post(f"{url}/score/gamma", multipart, content_type)
    assert status == 200
    np.testing.assert_allclose(payload["scores"], expected[[2, 3]], atol=1e-5, rtol=0)

    # whole-request refusals
    assert _post(f"{url}/score/gamma", _json([{"image": _b64(b"x" * 400_000)}]))[0] == 413
    assert _post(f"{url}/score/nope", _json([{"uri": "s3://b/a.jpg"}]))[0] == 404
    assert _post(f"{url}/score/gamma", b"{nope")[0] == 400

    # a second column, with its own scorer, scale and deployment
    import vqpipe

    light = vqpipe.create_scorer("brightness").score([str(p) for p in images[:2]])
    status, payload = _post(f"{url}/score/light", _json([{"uri": str(p)} for p in images[:2]]))
    assert status == 200 and payload["errors"] == [None, None], payload
    np.testing.assert_allclose(payload["scores"], light, atol=1e-5, rtol=0)

    # the client
    client = VQClient(url)
    assert client.wait_ready(timeout=30)["status"] == "ok"
    results = client.score("gamma", images=[images[4], Image.open(images[5])])
    np.testing.assert_allclose([r.score for r in results], expected[[4, 5]], atol=1e-5, rtol=0)

    # Ctrl-C: one line, exit 130, the service gone
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert f"vqpipe serve: ready at {url} (columns: gamma, light)" in out
    assert err.strip().splitlines()[-1] == "vqpipe: interrupted: the service is shut down", err
    assert "Traceback" not in err
    assert _get(f"{url}/healthz")[0] is None
