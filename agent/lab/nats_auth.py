"""NATS decentralised auth for the lab: an operator, accounts with JetStream, and a user's ``.creds`` file.

Enough of the JWT format (``nats-io/jwt`` v2: ed25519-nkey signatures over base64url header and
claims) for a private ``nats-server`` in operator mode with a memory resolver, so that tests can
connect with a real ``.creds`` file instead of a token. Keys come from ``nkeys`` (nats-py's extra).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import nkeys  # type: ignore[import-untyped]  # nkeys ships no type information

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = {"subs": -1, "data": -1, "payload": -1}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def new_key(prefix: int) -> Any:
    """A fresh key pair of the given nkeys prefix (operator, account, user)."""
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def _jwt(issuer: Any, subject: str, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name,
                              "sub": subject, "nats": {**nats, "version": 2}}  # fmt: skip
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()).decode()
    body = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{body}.{_b64(issuer.sign(body.encode()))}"


@dataclass
class Operator:
    """An operator with a system account and one JetStream-enabled account, for nats-server's config."""

    key: Any
    system: Any
    account: Any

    @classmethod
    def create(cls) -> Operator:
        return cls(new_key(nkeys.PREFIX_BYTE_OPERATOR), new_key(nkeys.PREFIX_BYTE_ACCOUNT),
                   new_key(nkeys.PREFIX_BYTE_ACCOUNT))  # fmt: skip

    def config(self) -> str:
        """The ``nats-server`` configuration lines: operator, system account, preloaded accounts."""
        op = _jwt(self.key, self.key.public_key.decode(), "lab", {"type": "operator"})
        limits = {**_UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1}
        jetstream = {**limits, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
        system = _jwt(self.key, self.system.public_key.decode(), "SYS", {"type": "account", "limits": limits})
        account = _jwt(self.key, self.account.public_key.decode(), "XMPPMON", {"type": "account", "limits": jetstream})
        return (
            f"operator: {op}\nsystem_account: {self.system.public_key.decode()}\nresolver: MEMORY\n"
            f"resolver_preload: {{ {self.system.public_key.decode()}: {system},"
            f" {self.account.public_key.decode()}: {account} }}\n"
        )

    def creds(self, account: Any | None = None) -> str:
        """A user's ``.creds`` text, signed by ``account`` (default: the JetStream account)."""
        user = new_key(nkeys.PREFIX_BYTE_USER)
        jwt = _jwt(account or self.account, user.public_key.decode(), "forwarder",
                   {"type": "user", "pub": {}, "sub": {}, **_UNLIMITED})  # fmt: skip
        return (
            f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
        )
