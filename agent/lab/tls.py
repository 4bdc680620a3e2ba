"""A throwaway CA and a server certificate signed by it, for the lab's private servers."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from agent.exceptions import LabError


def _openssl(cwd: Path, *args: str) -> None:
    try:
        subprocess.run(
            ["openssl", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except subprocess.CalledProcessError as exc:
        raise LabError(f"openssl {args[0]} failed: {exc.stderr.strip()}") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise LabError(f"openssl {args[0]} failed: {exc}") from exc


def _san(name: str) -> str:
    """A subjectAltName entry: IP addresses (e.g. 127.0.0.1 for a loopback server) as IP, the rest as DNS."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"


def write_certificates(certs_dir: Path, domain: str, names: list[str]) -> tuple[Path, Path, Path]:
    """Create ``ca.crt`` and ``DOMAIN.crt``/``DOMAIN.key`` valid for *names* (host names or IP addresses).

    The extensions are those strict verifiers (Python 3.13's VERIFY_X509_STRICT) insist on, so
    clients can verify chain and host name with nothing but the CA file.
    """
    certs_dir.mkdir(parents=True, exist_ok=True)
    ca_file, cert, key = certs_dir / "ca.crt", certs_dir / f"{domain}.crt", certs_dir / f"{domain}.key"
    ca_key = certs_dir / "ca.key"
    csr = certs_dir / f"{domain}.csr"
    ext = certs_dir / f"{domain}.ext"
    # EC keys are generated instantly, unlike RSA, which matters per test.
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        certs_dir, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_file),
        "-days", "3650", "-subj", "/CN=xmppmon test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    _openssl(certs_dir, "req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={domain}")
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        f"subjectAltName={','.join(_san(name) for name in names)}\n",
        encoding="utf-8",
    )
    _openssl(
        certs_dir, "x509", "-req", "-in", str(csr), "-CA", str(ca_file), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "3650", "-extfile", str(ext),
    )  # fmt: skip
    # Servers run as the invoking user (root in containers), who owns these files; 0600 keeps the
    # keys private all the same.
    ca_key.chmod(0o600)
    key.chmod(0o600)
    return ca_file, cert, key
