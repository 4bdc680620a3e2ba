"""The root file system's mirror comes from the host's apt sources, in either format (no host is hard-coded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .container import ContainerError, host_mirror


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    """The first enabled deb source for bookworm wins; security, deb-src and disabled stanzas do not count."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
    )
    assert host_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    """Classic sources.list lines, with options in brackets, work too."""
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [signed-by=/usr/share/keyrings/x.gpg arch=amd64] http://line.example/debian bookworm main\n"
    )
    assert host_mirror(tmp_path) == "http://line.example/debian"


def test_no_bookworm_source_is_one_clear_error(tmp_path: Path) -> None:
    """Without a usable source the build stops with a sentence naming what is missing."""
    (tmp_path / "sources.list").write_text("deb http://old.example/debian bullseye main\n")
    with pytest.raises(ContainerError, match=r"no 'deb … bookworm' source in .*: cannot pick a mirror"):
        host_mirror(tmp_path)
