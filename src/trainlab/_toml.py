"""Read TOML with the standard library (``tomllib``; ``tomli`` on Python 3.10) and write
the small subset trainlab's run configs use: tables of scalars and flat lists."""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError
loads = tomllib.loads
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        if not _is_utf8(v):  # a lone surrogate, e.g. from undecodable command-line bytes
            raise ValueError(f"cannot write string {v!r} as TOML: it is not UTF-8 text")
        # A JSON string literal is a TOML basic string, once non-ASCII stays literal
        # (TOML has no surrogate-pair escapes) and DEL, a TOML control character, is escaped.
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} value {v!r} as TOML")


def _key(k: str) -> str:
    """A bare key where TOML allows one, else a quoted key."""
    return k if _BARE_KEY.fullmatch(k) else _value(k)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def dumps(config: dict[str, Any]) -> str:
    """Top-level scalars first, then one ``[table]`` per nested dict (one level deep)."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for name, table in config.items():
        if isinstance(table, dict):
            lines += ["", f"[{_key(name)}]"] + [f"{_key(k)} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"
