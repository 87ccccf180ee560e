"""Where this machine gets Debian packages from: the mirror in its own apt sources (one-line
/etc/apt/sources.list and sources.list.d/*.list, deb822 sources.list.d/*.sources) and the proxy apt or the
environment names. The docker smoke test's debootstrap uses them, so the base image builds wherever apt works."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("http://", "https://", "file:/")  # what debootstrap can fetch from
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy")


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None  # a keyring file, when the source names one
    origin: str = ""  # file it was read from


def parse_one_line(text: str, origin: str = "") -> list[AptSource]:
    """`deb [opt=val ...] URI SUITE [COMPONENT ...]` lines; deb-src, comments and blank lines skipped."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        rest = line[3:].strip()
        options: dict[str, str] = {}
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                continue
            for opt in rest[1:end].split():
                key, _, value = opt.partition("=")
                options[key] = value
            rest = rest[end + 1:].strip()
        words = rest.split()
        if len(words) < 2:
            continue
        out.append(AptSource(words[0], (words[1],), tuple(words[2:]), options.get("signed-by"), origin))
    return out


def parse_deb822(text: str, origin: str = "") -> list[AptSource]:
    """Stanzas of `Types: deb`, `URIs:`, `Suites:`, `Components:`, `Signed-By:`, `Enabled:` (deb822, as in
    sources.list.d/*.sources); stanzas are separated by blank lines, `#` lines are comments, a line starting
    with a space continues the previous field (an inline Signed-By key block)."""
    out = []
    for stanza in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += "\n" + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        signed = fields.get("signed-by")
        signed = signed if signed and "\n" not in signed and signed.startswith("/") else None
        for uri in fields.get("uris", "").split():
            out.append(AptSource(uri, tuple(fields.get("suites", "").split()),
                                 tuple(fields.get("components", "").split()), signed, origin))
    return out


def apt_sources(root: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every enabled `deb` source, in apt's order: sources.list, then sources.list.d/ by name (*.list, *.sources;
    other names such as *.disabled or *.save are ignored, as apt ignores them)."""
    found: list[AptSource] = []
    main = root / "sources.list"
    if main.is_file():
        found += parse_one_line(main.read_text(errors="replace"), str(main))
    parts = root / "sources.list.d"
    if parts.is_dir():
        for f in sorted(parts.iterdir()):
            if f.suffix == ".list" and f.is_file():
                found += parse_one_line(f.read_text(errors="replace"), str(f))
            elif f.suffix == ".sources" and f.is_file():
                found += parse_deb822(f.read_text(errors="replace"), str(f))
    return found


def debian_mirror(suite: str, root: Path = Path("/etc/apt")) -> AptSource:
    """The first apt source serving `suite` with component `main` over a scheme debootstrap can use."""
    sources = apt_sources(root)
    for src in sources:
        if suite in src.suites and "main" in src.components and src.uri.startswith(SCHEMES):
            return src
    seen = "; ".join(f"{s.uri} {' '.join(s.suites)} ({s.origin})" for s in sources) or "none"
    raise LookupError(f"no apt source under {root} serves '{suite} main' over http(s) or file: (found: {seen})")


def apt_proxy(apt_config_dump: str) -> dict[str, str]:
    """Acquire::http::Proxy / Acquire::https::Proxy from `apt-config dump` output, as http_proxy / https_proxy."""
    said = {}
    for scheme in ("http", "https"):
        m = re.search(rf'^Acquire::{scheme}::Proxy\s+"([^"]*)";', apt_config_dump, re.MULTILINE | re.IGNORECASE)
        if m:
            said[scheme] = m.group(1)
    if "http" in said and "https" not in said:
        said["https"] = said["http"]  # apt's https method falls back to the http proxy
    return {f"{scheme}_proxy": value for scheme, value in said.items() if value and value.upper() != "DIRECT"}


def proxy_env(environ: dict[str, str], apt_config_dump: str | None = None) -> dict[str, str]:
    """The proxy settings to hand to debootstrap and docker build: the environment's own (either case)
    win; otherwise apt's configured proxy. Both spellings are set, as tools differ in which they read."""
    found = {}
    for var in PROXY_VARS:
        value = environ.get(var) or environ.get(var.upper())
        if value:
            found[var] = value
    if not {"http_proxy", "https_proxy"} & set(found) and apt_config_dump is not None:
        found.update(apt_proxy(apt_config_dump))
    return {**found, **{k.upper(): v for k, v in found.items()}}


def apt_config_dump() -> str | None:
    try:
        return subprocess.run(["apt-config", "dump"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def debootstrap_args(suite: str, rootfs: Path, root: Path = Path("/etc/apt"),
                     environ: dict[str, str] | None = None, dump: str | None = None) -> tuple[list[str], dict[str, str]]:
    """(the debootstrap command's mirror-dependent arguments, the environment to run it in)."""
    src = debian_mirror(suite, root)
    env = dict(os.environ if environ is None else environ)
    env.update(proxy_env(env, apt_config_dump() if dump is None else dump))
    args = [suite, str(rootfs), src.uri]
    keyring = [f"--keyring={src.signed_by}"] if src.signed_by and Path(src.signed_by).is_file() else []
    return keyring + args, env
