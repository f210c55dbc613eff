"""A score request's body → its items: JSON ``{"items": [{"image": base64} | {"uri": ...}]}`` or
a multipart form (file parts are images, ``uri`` fields URIs), in order.

A request that cannot be read at all is a :class:`RequestError` (an HTTP status and one line);
an item that cannot be used (bad base64, neither ``image`` nor ``uri``, a URI outside the allowed
prefixes) is an :class:`Item` with ``error`` set: it is answered in its place, its request-mates
are scored.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20
DEFAULT_MAX_ITEMS = 256
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "az://", "abfs://", "abfss://")
"""URI prefixes a service reads by default: object stores, reached with the service's own
storage options. Local paths and http(s) URLs are read only under a ``--uri-prefix`` (a
network service that reads any path or URL it is handed reads /etc and the cloud metadata
endpoint for whoever asks)."""


class RequestError(Exception):
    """A request that is answered with ``status`` and ``{"error": message}`` as a whole."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Item:
    """One item of a request: image bytes, or a URI to read, or why it cannot be scored."""

    data: bytes | None = None
    uri: str | None = None
    error: str | None = None


def parse_items(
    body: bytes,
    content_type: str | None,
    max_items: int = DEFAULT_MAX_ITEMS,
    uri_prefixes: Sequence[str] = REMOTE_SCHEMES,
) -> list[Item]:
    """The items of a request body, in order: a multipart form when ``content_type`` says so,
    else JSON."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        items = _multipart_items(body, content_type or "")
    else:  # JSON whatever the header says (curl -d sends x-www-form-urlencoded)
        items = _json_items(body)
    if not items:
        raise RequestError(400, "no items: send at least one image or uri")
    if len(items) > max_items:
        raise RequestError(413, f"{len(items)} items: this service takes {max_items} at most")
    for item in items:
        if item.uri is not None and item.error is None:
            item.error = uri_refusal(item.uri, uri_prefixes)
    return items


def _json_items(body: bytes) -> list[Item]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise RequestError(400, 'the body must be a JSON object {"items": [...]}')
    return [_json_item(entry) for entry in doc["items"]]


def _json_item(entry: Any) -> Item:
    if not isinstance(entry, dict) or ("image" in entry) == ("uri" in entry):
        return Item(error='request: an item is {"image": "<base64>"} or {"uri": "..."}')
    if "uri" in entry:
        uri = entry["uri"]
        if not isinstance(uri, str) or not uri:
            return Item(error="request: uri must be a non-empty string")
        return Item(uri=uri)
    text = entry["image"]
    if not isinstance(text, str):
        return Item(error="request: image must be a base64 string")
    try:
        if text.startswith("data:") and "," in text:  # a data: URL (what browsers make)
            text = text.split(",", 1)[1]
        return Item(data=base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError) as exc:
        return Item(error=f"request: image is not valid base64: {exc}")


def _multipart_items(body: bytes, content_type: str) -> list[Item]:
    # The stdlib's MIME parser, not starlette's form(): that one needs python-multipart, one
    # more dependency for what email.parser does on a body already held in memory.
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise RequestError(400, "malformed multipart body (no boundary or no parts)")
    items = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_param("filename", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if filename is not None or name in ("image", "file", "images", "files"):
            items.append(Item(data=payload))
        elif name in ("uri", "uris"):
            text = payload.decode("utf-8", "replace").strip()
            items.append(Item(uri=text) if text else Item(error="request: empty uri field"))
        else:
            raise RequestError(400, f"multipart field {name!r}: send image files or uri fields")
    return items


def uri_refusal(uri: str, prefixes: Sequence[str]) -> str | None:
    """None when ``uri`` may be read (it starts with one of ``prefixes``; a local path is
    compared resolved, so ``..`` and links cannot leave a prefix), else the item's error."""
    local = "://" not in uri or uri.startswith("file://")
    path = uri.removeprefix("file://")
    if local and not os.path.isabs(path):
        return "request: a local path must be absolute"
    path = os.path.realpath(path) if local else uri
    for prefix in prefixes:
        prefix_local = "://" not in prefix or prefix.startswith("file://")
        if local and prefix_local:
            root = os.path.realpath(prefix.removeprefix("file://"))
            if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
                return None
        elif not local and not prefix_local and uri.startswith(prefix):
            return None
    allowed = ", ".join(prefixes) or "none"
    return f"request: uri not allowed here (allowed prefixes: {allowed}; see --uri-prefix)"
