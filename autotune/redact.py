"""Credentials never reach logs, MLflow or state files: `user:secret@host` -> `user:***@host`."""

from __future__ import annotations

import re

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s'\"]+)")
_QUERY_SECRET = re.compile(r"(?P<key>(?:password|passwd|pwd|token|secret)=)[^&\s]+", re.IGNORECASE)


def _mask_url(m: re.Match) -> str:
    rest = m["rest"]
    at = rest.rfind("@")  # passwords may hold '/', ':' or '@': the host starts after the last '@'
    colon = rest.find(":")
    if at == -1 or colon == -1 or colon > at:
        return m.group(0)
    return f"{m['scheme']}{rest[:colon]}:***{rest[at:]}"


def redact(text: str) -> str:
    text = _URL.sub(_mask_url, text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}***", text)


def is_redacted(url: str) -> bool:
    return ":***@" in url or "=***" in url


def usable(url: str, setting: str, env: str) -> str:
    """A URL read back from a file we wrote has its password masked: say where the secret must come from."""
    if is_redacted(url):
        from autotune.errors import ConfigError

        raise ConfigError([
            f"{setting}: the password in {url} was masked when the job was saved; set {env} to the full URL, "
            "or keep the password out of URLs (PGPASSWORD / ~/.pgpass, MLFLOW_TRACKING_USERNAME/PASSWORD)"
        ])
    return url
