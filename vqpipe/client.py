"""A small client of ``vqpipe serve`` (standard library only: it runs in any training loop).

>>> client = VQClient("http://127.0.0.1:8000")
>>> client.wait_ready(timeout=300)
>>> results = client.score("gamma", images=["a.jpg", pil_image, uint8_array, jpeg_bytes])
>>> [r.score for r in results]          # None where r.error says why (never a 0)
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class ServiceError(RuntimeError):
    """The service answered a request as a whole with an error (``status``: the HTTP code)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Result:
    """One item's answer: its ``score`` or, when it could not be scored, ``error`` (the stage
    and why: ``"decode: ..."``); ``score_range`` and ``higher_better`` are the column's."""

    score: float | None
    error: str | None
    score_range: tuple[float, float]
    higher_better: bool

    @property
    def ok(self) -> bool:
        return self.error is None


class VQClient:
    """The HTTP API of one ``vqpipe serve`` at ``url`` (``http://host:port``)."""

    def __init__(self, url: str, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def score(
        self,
        column: str,
        images: Sequence[Any] | None = None,
        uris: Sequence[str] | None = None,
    ) -> list[Result]:
        """Score ``images`` (bytes of an encoded file, a path, a PIL image or a uint8 HxWx3
        array) and ``uris`` (read by the service) with ``column``'s scorer: one
        :class:`Result` per item, images first, each in its order."""
        items = [{"image": base64.b64encode(_encoded(x)).decode("ascii")} for x in images or ()]
        items += [{"uri": str(uri)} for uri in uris or ()]
        body = json.dumps({"items": items}).encode()
        status, answer = self._request(
            f"/score/{column}", body, {"Content-Type": "application/json"}
        )
        if status != 200:
            raise ServiceError(status, str(answer.get("error", answer)))
        low, high = answer["score_range"]
        return [
            Result(score, error, (float(low), float(high)), bool(answer["higher_better"]))
            for score, error in zip(answer["scores"], answer["errors"], strict=True)
        ]

    def healthz(self) -> dict[str, Any]:
        """The health answer (``status``: ``ok``, ``loading`` or ``failed``; ``columns``: each
        scorer's state); ``{"status": "unreachable", ...}`` when nothing answers."""
        try:
            return self._request("/healthz")[1]
        except OSError as exc:
            return {"status": "unreachable", "error": str(exc)}

    def stats(self) -> dict[str, Any]:
        """Per column, the batch sizes its scorer ran."""
        return self._request("/stats")[1]

    def wait_ready(self, timeout: float = 600.0, interval: float = 0.5) -> dict[str, Any]:
        """Wait until every scorer has loaded; :class:`TimeoutError` after ``timeout`` s,
        :class:`ServiceError` when a scorer failed to load."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.healthz()
            if health.get("status") == "ok":
                return health
            if health.get("status") == "failed":
                raise ServiceError(503, f"a scorer failed to load: {health.get('columns')}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.url} not ready after {timeout:g} s: {health}")
            time.sleep(interval)

    def _request(
        self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(self.url + path, data=body, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                return exc.code, json.loads(text)
            except ValueError:
                return exc.code, {"error": text.decode("utf-8", "replace")[:500]}


def _encoded(x: Any) -> bytes:
    """An image as the bytes of a file: bytes as they are, a path read, PIL and arrays as PNG
    (lossless: the service scores the same pixels)."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, (str, os.PathLike)):
        with open(x, "rb") as f:
            return f.read()
    from PIL import Image

    if not isinstance(x, Image.Image):
        import numpy as np

        array = np.asarray(x)
        if array.dtype != np.uint8:
            raise TypeError(f"an array image must be uint8 HxW(x3), not {array.dtype}")
        x = Image.fromarray(array)
    buffer = io.BytesIO()
    x.save(buffer, format="PNG")
    return buffer.getvalue()
