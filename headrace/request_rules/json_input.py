"""JSON from outside the mesh (HTTP bodies, WebSocket messages, batch
input lines), decoded with the bounds the rest of the code relies on:

- UTF-8 only (RFC 8259); `json.loads` on bytes would also take UTF-16/32
  and pass encoded surrogates through;
- no lone UTF-16 surrogate in any string or key: `"\\ud800"` is valid JSON
  but not text, and protobuf refuses it (UnicodeEncodeError) deep inside
  whatever handles the request next;
- nesting no deeper than MAX_JSON_DEPTH: the decoder recurses (a
  RecursionError near 1,000 levels), and so do the validators and
  serializers after it. No request this mesh serves nests past a handful.

A failure is a JsonInputError naming the place (`messages[0].content`) and
the problem, for the caller to turn into its own error (HTTP 400, a batch
line error).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

# Deeper than any body the mesh takes (a chat body nests 4 levels), well
# below the interpreter's recursion limit.
MAX_JSON_DEPTH: Final = 64

# A \u escape for a surrogate (D800-DFFF): the only way one can get into a
# string decoded from strict UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonInputError(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def json_path(path: tuple[int | str, ...], root: str = "") -> str:
    """`("messages", 0, "content")` -> `messages[0].content`."""
    text = root
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "request body"


def loads_bounded(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH, root: str = "") -> Any:
    """`raw` decoded, or JsonInputError. `root` prefixes the paths in
    messages (e.g. "body" for a batch line's body)."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"{root or 'request body'}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    else:
        text = raw
    try:
        data = json.loads(text)
    except RecursionError:
        raise JsonInputError(f"{root or 'request body'}: nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        where = f"column {exc.colno}" if exc.lineno == 1 else f"line {exc.lineno} column {exc.colno}"
        raise JsonInputError(f"{root or 'request body'}: not valid JSON ({exc.msg} at {where})") from None
    # Both checks walk the decoded value only when the text says they might
    # fail: a depth needs that many brackets, a surrogate an escape (or a
    # surrogate already in a str handed in).
    check_strings = _SURROGATE_ESCAPE.search(text) is not None or (
        isinstance(raw, str) and _SURROGATE.search(text) is not None
    )
    check_depth = text.count("[") + text.count("{") > max_depth
    if check_strings or check_depth:
        _check(data, max_depth=max_depth, root=root)
    return data


def _bad_text(path: tuple[int | str, ...], root: str, text: str, *, what: str = "") -> JsonInputError:
    found = _SURROGATE.search(text)
    index = found.start() if found else 0
    place = f"{what} in {json_path(path, root)}" if what else json_path(path, root)
    return JsonInputError(
        f"{place}: not valid Unicode (a lone UTF-16 surrogate, \\u{ord(text[index]):04x}, at character {index})"
    )


def _check(data: Any, *, max_depth: int, root: str) -> None:
    """Walk `data` without recursion: depth and surrogates, first problem wins."""
    if isinstance(data, str) and _SURROGATE.search(data):
        raise _bad_text((), root, data)
    stack: list[tuple[Any, tuple[int | str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        items: Any
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            continue
        if len(path) >= max_depth:
            raise JsonInputError(f"{root or 'request body'}: nested deeper than {max_depth} levels")
        for key, item in items:
            if isinstance(key, str) and _SURROGATE.search(key):
                raise _bad_text(path, root, key, what="a key")
            if isinstance(item, str):
                if _SURROGATE.search(item):
                    raise _bad_text((*path, key), root, item)
            elif isinstance(item, dict | list):
                stack.append((item, (*path, key)))
