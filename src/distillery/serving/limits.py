"""Guards at the HTTP edge: body size, UTF-8, JSON syntax and depth, text content, bearer token.
Pure and Ray-free.

Every failure raises `BadRequest(status, message)` with a message that names the problem; the app
turns it into `{"error": message}` with that status (never a 500), so the replica keeps serving.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from typing import Any, AsyncIterable, Mapping

from pydantic import Field

from distillery.config import Section

__all__ = ["BadRequest", "LimitsSection", "check_content_length", "read_body", "parse_json_body", "json_depth",
           "check_text", "show", "check_bearer", "is_authorized", "load_token"]

_SURROGATE = re.compile("[\ud800-\udfff]")


class BadRequest(Exception):
    """A request the server refuses; `status` is the HTTP code (4xx), `message` names the problem."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class LimitsSection(Section):
    max_body_bytes: int = Field(1_000_000, ge=1024, description="largest request body accepted, bytes (413 above)")
    max_json_depth: int = Field(32, ge=2, le=500, description="deepest JSON nesting accepted (objects and arrays)")
    max_rows: int = Field(512, ge=1, description="most rows or texts in one /predict or OIP infer request")
    max_text_chars: int = Field(4000, ge=16, description="longest text or field value accepted, characters")


def check_content_length(headers: Mapping[str, str], max_bytes: int) -> None:
    """Refuse a declared oversized body before reading it (413)."""
    declared = headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise BadRequest(400, f"content-length: {declared!r} is not an integer") from None
    if size > max_bytes:
        raise BadRequest(413, f"request body of {size} bytes exceeds the limit of {max_bytes} bytes")


async def read_body(chunks: AsyncIterable[bytes], max_bytes: int) -> bytes:
    """The whole body from an ASGI stream (`request.stream()`), refused with 413 as soon as it passes
    `max_bytes`: a chunked body or one that lies about its length is never held whole in memory."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise BadRequest(413, f"request body exceeds the limit of {max_bytes} bytes (over {size} bytes read)")
        parts.append(chunk)
    return b"".join(parts)


def show(value: Any, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters, for error messages: never raises (a 5,000-digit
    integer has no decimal text in Python >= 3.11)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


def check_text(where: str, text: str, limits: "LimitsSection") -> None:
    """A model text must be non-blank, within `max_text_chars`, and real Unicode: a lone surrogate
    (JSON `"\\ud800"`) decodes fine but no tokenizer or encoder accepts it."""
    if not text.strip():
        raise BadRequest(400, f"{where}: empty string")
    if len(text) > limits.max_text_chars:
        raise BadRequest(413, f"{where}: {len(text)} characters exceed the limit of {limits.max_text_chars}")
    if (bad := _SURROGATE.search(text)) is not None:
        raise BadRequest(400, f"{where}: lone surrogate U+{ord(bad.group()):04X} at character {bad.start()} "
                              "is not valid Unicode text")


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, `[]` is 1), counted without recursion; stops once
    past `limit` and returns limit + 1."""
    depth = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth = max(depth, level)
        if depth > limit:
            return limit + 1
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return depth


def parse_json_body(body: bytes, limits: LimitsSection) -> Any:
    """Decode a JSON request body: size (413), UTF-8 (400), syntax (400), nesting depth (400)."""
    if len(body) > limits.max_body_bytes:
        raise BadRequest(413, f"request body of {len(body)} bytes exceeds the limit of {limits.max_body_bytes} bytes")
    if not body.strip():
        raise BadRequest(400, "request body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(400, f"request body is not valid UTF-8 (byte 0x{body[err.start]:02x} at offset {err.start})") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise BadRequest(400, f"JSON nested deeper than {limits.max_json_depth} levels") from None
    except json.JSONDecodeError as err:
        raise BadRequest(400, f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except ValueError as err:  # an integer past Python's 4,300-digit limit for decimal text
        raise BadRequest(400, f"malformed JSON: {err}") from None
    if json_depth(value, limits.max_json_depth) > limits.max_json_depth:
        raise BadRequest(400, f"JSON nested deeper than {limits.max_json_depth} levels")
    return value


def load_token(env: str | None) -> str | None:
    """The bearer token held in env var `env`, whitespace stripped (a secret file mounted as an env
    var usually ends in a newline); None when `env` is None, unset or blank."""
    return (os.environ.get(env) or "").strip() or None if env else None


def check_bearer(headers: Mapping[str, str], token: str | None) -> None:
    """Require `Authorization: Bearer <token>` when a token is configured (401 otherwise). Both
    sides are compared with surrounding whitespace stripped."""
    if not token:
        return
    given = headers.get("authorization", "")
    scheme, _, value = given.strip().partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="distillery"'}
    if scheme.lower() != "bearer" or not value.strip():
        raise BadRequest(401, "authorization: missing bearer token", challenge)
    if not hmac.compare_digest(value.strip().encode(), token.strip().encode()):
        raise BadRequest(401, "authorization: bearer token not accepted", challenge)


def is_authorized(headers: Mapping[str, str], token: str | None) -> bool:
    """`check_bearer` as a yes/no, for routes that answer anonymous callers with less."""
    try:
        check_bearer(headers, token)
    except BadRequest:
        return False
    return True
