"""The docker smoke test's Debian mirror and proxy come from the machine's apt configuration: parsing of
one-line and deb822 sources, which source is picked, and which proxy wins."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.apt_sources import AptSource, apt_proxy, apt_sources, debian_mirror, debootstrap_args, proxy_env

# this machine's own /etc/apt/sources.list.d/debian.sources (Debian 12 docker image, snapshot comments)
DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def etc_apt(tmp_path: Path, sources_list: str | None = None, **parts: str) -> Path:
    root = tmp_path / "apt"
    (root / "sources.list.d").mkdir(parents=True)
    if sources_list is not None:
        (root / "sources.list").write_text(textwrap.dedent(sources_list))
    for name, text in parts.items():
        (root / "sources.list.d" / name.replace("__", ".")).write_text(textwrap.dedent(text))
    return root


def test_deb822_sources_of_this_machine(tmp_path):
    root = etc_apt(tmp_path, debian__sources=DEBIAN_SOURCES)
    assert apt_sources(root) == [
        AptSource("http://deb.debian.org/debian", ("bookworm", "bookworm-updates"), ("main",),
                  "/usr/share/keyrings/debian-archive-keyring.gpg", str(root / "sources.list.d" / "debian.sources")),
        AptSource("http://deb.debian.org/debian-security", ("bookworm-security",), ("main",),
                  "/usr/share/keyrings/debian-archive-keyring.gpg", str(root / "sources.list.d" / "debian.sources")),
    ]
    assert debian_mirror("bookworm", root).uri == "http://deb.debian.org/debian"


def test_a_company_mirror_in_one_line_format_wins_in_apt_order(tmp_path):
    root = etc_apt(tmp_path, """\
        # company mirror
        deb-src http://src.example/debian bookworm main
        deb [arch=amd64 signed-by=/etc/apt/keyrings/corp.gpg] https://mirror.corp.example/debian bookworm main contrib
        deb http://mirror.corp.example/debian-security bookworm-security main
    """, debian__sources=DEBIAN_SOURCES)
    src = debian_mirror("bookworm", root)
    assert (src.uri, src.suites, src.components, src.signed_by) == (
        "https://mirror.corp.example/debian", ("bookworm",), ("main", "contrib"), "/etc/apt/keyrings/corp.gpg")


def test_disabled_files_and_stanzas_and_other_suites_are_skipped(tmp_path):
    root = etc_apt(
        tmp_path, None,
        a_security__sources="""\
            Types: deb
            URIs: http://security.example/debian-security
            Suites: bookworm-security
            Components: main
        """,
        b_off__sources="""\
            Enabled: no
            Types: deb
            URIs: http://off.example/debian
            Suites: bookworm
            Components: main
        """,
        c_src__sources="""\
            Types: deb-src
            URIs: http://src.example/debian
            Suites: bookworm
            Components: main
        """,
        d_cloud__list__disabled="deb http://disabled.example/debian bookworm main\n",
        e_node__sources="""\
            Types: deb
            URIs: https://deb.nodesource.com/node_20.x
            Suites: nodistro
            Components: main
        """,
        f_mirror__list="deb mirror+file:/etc/apt/mirrors.txt bookworm main\n",
        g_real__sources="""\
            Types: deb
            URIs: http://ftp.example.org/debian
            Suites: bookworm
            Components: main non-free-firmware
        """,
    )
    assert debian_mirror("bookworm", root).uri == "http://ftp.example.org/debian"


def test_no_usable_source_says_what_it_found(tmp_path):
    root = etc_apt(tmp_path, "deb http://archive.ubuntu.com/ubuntu noble main\n")
    with pytest.raises(LookupError) as err:
        debian_mirror("bookworm", root)
    assert str(err.value) == (f"no apt source under {root} serves 'bookworm main' over http(s) or file: "
                              f"(found: http://archive.ubuntu.com/ubuntu noble ({root / 'sources.list'}))")


APT_DUMP = """\
APT "";
APT::Architecture "amd64";
Acquire::http::Proxy "http://proxy.corp.example:3128/";
Acquire::https::Proxy "DIRECT";
Dir "/";
"""


def test_proxy_from_apt_configuration_and_environment():
    assert apt_proxy(APT_DUMP) == {"http_proxy": "http://proxy.corp.example:3128/"}
    assert apt_proxy('Acquire::http::Proxy "http://p:8080";\n') == {"http_proxy": "http://p:8080",
                                                                   "https_proxy": "http://p:8080"}
    assert apt_proxy('APT "";\n') == {}
    # the environment wins (either spelling), apt's setting is the fallback; both spellings are handed on
    assert proxy_env({"HTTPS_PROXY": "http://env:1", "no_proxy": "localhost"}, APT_DUMP) == {
        "https_proxy": "http://env:1", "no_proxy": "localhost", "HTTPS_PROXY": "http://env:1", "NO_PROXY": "localhost"}
    assert proxy_env({}, APT_DUMP) == {"http_proxy": "http://proxy.corp.example:3128/",
                                       "HTTP_PROXY": "http://proxy.corp.example:3128/"}
    assert proxy_env({}, None) == {}


def test_debootstrap_arguments(tmp_path):
    keyring = tmp_path / "corp.gpg"
    keyring.write_bytes(b"key")
    root = etc_apt(tmp_path, f"deb [signed-by={keyring}] http://mirror.corp.example/debian bookworm main\n")
    args, env = debootstrap_args("bookworm", tmp_path / "rootfs", root, environ={"PATH": "/bin"}, dump=APT_DUMP)
    assert args == [f"--keyring={keyring}", "bookworm", str(tmp_path / "rootfs"), "http://mirror.corp.example/debian"]
    assert env == {"PATH": "/bin", "http_proxy": "http://proxy.corp.example:3128/",
                   "HTTP_PROXY": "http://proxy.corp.example:3128/"}
