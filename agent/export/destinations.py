"""Where an export goes: a local folder, or an Azure Storage container given by URL with a SAS token (seed 002).

``https://ACCOUNT.blob.core.windows.net/CONTAINER?sv=…&sp=…&sig=…``, or path-style for an emulator
(``http://127.0.0.1:10000/devstoreaccount1/CONTAINER``). The SAS token is a secret: it may come in
the URL's query, from ``XMPPMON_AZURE__SAS`` or a credential file ``azure__sas``; only the URL
without its query is ever stored, shown or logged, and :func:`scrub` takes it out of error texts.
Plain http is refused unless the host is a loopback address (Azurite, the emulator).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pydantic import SecretStr

from agent.exceptions import ExportError

_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}|\$root")
_SIG = re.compile(r"((?:^|[?&\s])sig=)[^&\s'\"]+", re.IGNORECASE)
_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*", re.IGNORECASE)


@dataclass(frozen=True)
class Container:
    """An Azure Storage container: its URL without the query, and the SAS token that grants access to it."""

    url: str
    name: str
    sas: SecretStr

    @property
    def sas_url(self) -> str:
        """The URL the SDK is given. Never log it, store it or put it on a command line."""
        return f"{self.url}?{self.sas.get_secret_value()}"

    def expiry(self) -> datetime | None:
        """The token's ``se`` (signed expiry), if it carries one that parses."""
        values = parse_qs(self.sas.get_secret_value()).get("se")
        try:
            return datetime.fromisoformat(values[0].replace("Z", "+00:00")).astimezone(UTC) if values else None
        except ValueError:
            return None


def is_url(text: str) -> bool:
    return "://" in text


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_container(text: str, sas: SecretStr | None) -> Container:
    """Validate a container URL and pair it with its SAS token (from the URL's query, else ``sas``).

    Raises ExportError with one line naming the problem; the message never contains the token.
    """
    shown = _QUERY.sub(r"\1?…", text.strip())[:200]
    try:
        parts = urlsplit(text.strip())
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise ExportError(f"malformed container URL {shown}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ExportError(f"malformed container URL {shown}: the scheme must be https, not {scheme or 'missing'!r}")
    if not host or parts.username or parts.password or parts.fragment:
        raise ExportError(f"malformed container URL {shown}: expected https://ACCOUNT.blob.core.windows.net/CONTAINER")
    if scheme == "http" and not _loopback(host):
        raise ExportError(
            f"refusing to send a SAS token over plain http to {host}: use https (plain http is allowed only"
            " for a loopback emulator such as Azurite)"
        )
    segments = [s for s in parts.path.split("/") if s]
    path_style = _loopback(host) or _is_ip(host)  # the emulator's http://127.0.0.1:10000/ACCOUNT/CONTAINER
    if len(segments) != (2 if path_style else 1):
        want = "/ACCOUNT/CONTAINER" if path_style else "/CONTAINER"
        raise ExportError(f"malformed container URL {shown}: the path must be {want}, nothing more")
    name = segments[-1]
    if not _CONTAINER.fullmatch(name):
        raise ExportError(
            f"malformed container URL {shown}: {name[:70]!r} is not a container name (3 to 63 lowercase"
            " letters, digits and single hyphens)"
        )
    token = parts.query or (sas.get_secret_value().strip().lstrip("?") if sas is not None else "")
    if not token:
        raise ExportError(
            f"no SAS token for {shown}: give it in the URL's query, in XMPPMON_AZURE__SAS or in a credential"
            " file azure__sas"
        )
    if "sig" not in parse_qs(token):
        raise ExportError(f"the query of {shown} is not a SAS token: it has no sig= parameter")
    url = f"{scheme}://{parts.netloc}/{'/'.join(segments)}"
    return Container(url, name, SecretStr(token))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_destination(text: str, sas: SecretStr | None) -> Path | Container:
    """``--dest``: a container URL (see :func:`parse_container`) or a folder."""
    return parse_container(text, sas) if is_url(text) else Path(text)


def scrub(text: str, *secrets: str) -> str:
    """``text`` without SAS signatures, URL queries or the given secrets: safe for logs, job rows and errors."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SIG.sub(r"\1***", _QUERY.sub(r"\1?***", text))
