"""Guards at the HTTP edge: body size, UTF-8, JSON syntax and depth, bearer token. Pure and Ray-free.

Every failure raises `BadRequest(status, message)` with a message that names the problem; the app
turns it into `{"error": message}` with that status (never a 500), so the replica keeps serving.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Mapping

from pydantic import Field

from distillery.config import Section

__all__ = ["BadRequest", "LimitsSection", "check_content_length", "parse_json_body", "json_depth", "check_bearer"]


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
    except ValueError as err:
        raise BadRequest(400, f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if json_depth(value, limits.max_json_depth) > limits.max_json_depth:
        raise BadRequest(400, f"JSON nested deeper than {limits.max_json_depth} levels")
    return value


def check_bearer(headers: Mapping[str, str], token: str | None) -> None:
    """Require `Authorization: Bearer <token>` when a token is configured (401 otherwise)."""
    if not token:
        return
    given = headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="distillery"'}
    if scheme.lower() != "bearer" or not value:
        raise BadRequest(401, "authorization: missing bearer token", challenge)
    if not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise BadRequest(401, "authorization: bearer token not accepted", challenge)
