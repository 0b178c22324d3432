"""Reading a JSON request body that a hostile client wrote.

`json.loads` alone recurses once per nesting level (a body of 100,000 "[" ends in
RecursionError, a 500), turns 1e999 into inf and takes NaN and Infinity. Here the
size is capped, the nesting depth is measured by a flat scan of the text before
anything is decoded, and non-finite numbers are refused: every bad body is a
BodyError the API answers 4xx with, naming the problem.
"""

import json
import math
import re
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest
from django.http.request import RawPostDataException

from runs.spec import storable_text

MAX_JSON_BYTES = 256 * 1024
MAX_JSON_DEPTH = 32

# A JSON string (with its escapes), or one bracket: strings are skipped whole, so
# a "[" inside one does not count as nesting. An unterminated string runs to the
# end (the closing quote is optional): each byte is looked at once, whatever the body.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]', re.DOTALL)


class BodyError(Exception):
    """A request body that cannot be used; `status` is 400 (or 415 for a wrong Content-Type)."""

    def __init__(self, status: int, detail: str, msg: str, loc: str = ""):
        super().__init__(detail)
        self.status, self.detail = status, detail
        self.errors = [{"loc": loc, "msg": msg}]


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON `text`, without recursion and
    without decoding it. Unbalanced brackets are left for the decoder to report."""
    depth = deepest = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if len(token) != 1 or token == '"':
            continue  # a string
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a number")
    return value


def decode_json(data: bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`data` decoded as JSON, or BodyError(400) saying why not."""
    if len(data) > max_bytes:
        raise BodyError(400, f"the body is larger than {max_bytes // 1024} KiB", f"at most {max_bytes} bytes")
    try:
        text = data.decode("utf-8-sig")  # RFC 8259: JSON between systems is UTF-8
    except UnicodeDecodeError as exc:
        raise BodyError(400, "the body is not valid JSON", f"not UTF-8 at byte {exc.start}") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise BodyError(400, "the body is nested too deeply", f"JSON nests {depth} levels deep; at most {max_depth}")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:  # not reached after the depth check; kept so no body can ever be a 500
        raise BodyError(400, "the body is nested too deeply", f"at most {max_depth} levels") from None
    except ValueError as exc:
        # ValueError also covers integers longer than Python's digit limit.
        raise BodyError(400, "the body is not valid JSON", f"invalid JSON: {exc}") from None
    if not _storable(value):
        raise BodyError(400, "the body holds a string that cannot be stored",
                        "a string contains \\u0000 or an unpaired surrogate (\\ud800-\\udfff)")
    return value


def _storable(value: Any) -> bool:
    """No string in `value` holds NUL or a lone surrogate (both valid JSON escapes):
    PostgreSQL refuses the first, UTF-8 the second, each with a 500 far from here."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str) and not storable_text(item):
            return False
    return True


def read_body(request: HttpRequest, *, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The raw body, refused (400) beyond `max_bytes` before more is read than the
    Content-Length announces."""
    try:
        announced = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BodyError(400, "the Content-Length header is not a number", "expected a number", loc="Content-Length") from None
    too_big = BodyError(400, f"the body is larger than {max_bytes // 1024} KiB", f"at most {max_bytes} bytes")
    if announced > max_bytes:
        raise too_big
    try:
        body = request.body
    except RequestDataTooBig:
        raise too_big from None
    except RawPostDataException:  # a form, read already (the CSRF check of a session POST)
        raise BodyError(415, f"send application/json, not {request.content_type or 'a form'}",
                        "expected Content-Type: application/json", loc="Content-Type") from None
    if len(body) > max_bytes:
        raise too_big
    return body


def read_json(request: HttpRequest, *, empty: Any = None, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The request's JSON body decoded, `empty` for no body at all, or BodyError."""
    body = read_body(request, max_bytes=max_bytes)
    if not body:
        return empty
    if request.content_type != "application/json":
        raise BodyError(415, f"send application/json, not {request.content_type or 'nothing'}",
                        "expected Content-Type: application/json", loc="Content-Type")
    return decode_json(body, max_bytes=max_bytes, max_depth=max_depth)
