"""--dest parsing: folders, container URLs, where the token comes from, what is refused; scrubbing secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.exceptions import ExportError
from agent.export.destinations import Container, parse_container, parse_destination, scrub

SAS = "sv=2024-11-04&se=2020-01-01T00%3A00%3A00Z&sp=rw&sr=c&sig=c2VjcmV0K3NpZw%3D%3D"


def test_folders_and_urls() -> None:
    """A path is a folder; a URL is a container whose stored form has no query, with the token kept apart."""
    assert parse_destination("out/here", None) == Path("out/here")
    c = parse_destination(f"https://acct.blob.core.windows.net/exports?{SAS}", None)
    assert isinstance(c, Container)
    assert (c.url, c.name, c.sas.get_secret_value()) == ("https://acct.blob.core.windows.net/exports", "exports", SAS)
    assert c.expiry() is not None and c.expiry().year == 2020  # type: ignore[union-attr]
    assert "sig=" not in repr(c) and "sig=" not in str(c)


@pytest.mark.parametrize("host", ["127.0.0.1:10000", "localhost:10000", "[::1]:10000", "127.0.0.2"])
def test_plain_http_only_for_loopback(host: str) -> None:
    """The emulator on a loopback address may use http and path-style URLs; the setting's token is used."""
    c = parse_container(f"http://{host}/devstoreaccount1/exports", SecretStr("?" + SAS))
    assert c.url == f"http://{host}/devstoreaccount1/exports" and c.sas.get_secret_value() == SAS


def test_the_url_query_wins_over_the_setting() -> None:
    c = parse_container(f"https://acct.blob.core.windows.net/exports?{SAS}", SecretStr("sv=x&sig=other"))
    assert c.sas.get_secret_value() == SAS


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.5/acct/exports?sig=x", "http://acct.blob.core.windows.net/exports?sig=x",
     "https://user:pw@acct.blob.core.windows.net/exports?sig=x", "https://acct.blob.core.windows.net/exports#frag"],
)  # fmt: skip
def test_refused(url: str) -> None:
    with pytest.raises(ExportError) as caught:
        parse_container(url, None)
    assert "sig=x" not in str(caught.value)


def test_scrub_takes_out_signatures_queries_and_secrets() -> None:
    """Error texts from the network stack carry URLs with the token: scrubbed, whatever their shape."""
    text = f"HTTPConnectionPool: Max retries exceeded with url: /devstoreaccount1/c/b?comp=block&{SAS} (reset)"
    assert "c2VjcmV0" not in scrub(text) and scrub(text).endswith("&sr=c&sig=*** (reset)")
    full = f"GET https://acct.blob.core.windows.net/c/b?{SAS} failed"
    assert scrub(full) == "GET https://acct.blob.core.windows.net/c/b?*** failed"
    assert scrub("token sig=abc&x=1") == "token sig=***&x=1"
    assert scrub("the secret is hunter22", "hunter22") == "the secret is ***"
