"""Credentials never reach logs, MLflow or state files: `user:secret@host` -> `user:***@host`."""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_QUERY_SECRET = re.compile(r"(?P<key>(?:password|passwd|pwd|token|secret)=)[^&\s]+", re.IGNORECASE)


def redact(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}***", text)
