"""TLS: a private server with ``ssl = on`` and a certificate signed by a CA the test makes (openssl). With
``sslmode=verify-full`` and that CA as ``sslrootcert``, every command an operator runs and a burst worker work over TLS
with a password; with another CA's certificate as root, a command fails with one ``Error:`` line (exit 1) that
names the TLS problem and shows no password."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]

PASSWORD = "tls-Pa55word-never-shown"


def openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> Path:
    """A self-signed CA: ``name``.key and ``name``.crt in ``folder``; returns the certificate."""
    openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt")  # fmt: skip
    return folder / f"{name}.crt"


def make_server_certificate(folder: Path, ca: str) -> tuple[Path, Path]:
    """A server key and certificate for 127.0.0.1 and localhost, signed by the CA ``ca``."""
    (folder / "san.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    openssl(folder, "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt")  # fmt: skip
    return folder / "server.crt", folder / "server.key"


@pytest.fixture
def tls_server(make_server, tmp_path: Path) -> tuple[str, Path, Path]:
    """(the app role's URL without TLS parameters, the right CA, another CA) for a private TLS-only server."""
    certs = tmp_path / "certs"
    certs.mkdir()
    right_ca, wrong_ca = make_ca(certs, "sched-test-ca"), make_ca(certs, "some-other-ca")
    cert, key = make_server_certificate(certs, "sched-test-ca")
    # The app role must come over TLS with its password; everyone else is trusted locally (the test's admin).
    server = make_server(
        settings={"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'"},
        hba=["hostnossl all app all reject", "hostssl all app 127.0.0.1/32 scram-sha-256"],
    )
    for source in (cert, key):
        target = server.data / source.name
        shutil.copy(source, target)
        server.own(target)
    server.launch()
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'")
        admin.execute("CREATE DATABASE app OWNER app")
    return f"postgresql://app:{quote(PASSWORD)}@127.0.0.1:{server.port}/app", right_ca, wrong_ca


def test_every_command_and_a_worker_work_with_verify_full(tls_server, sched_at) -> None:
    base, right_ca, _ = tls_server
    url = f"{base}?sslmode=verify-full&sslrootcert={quote(str(right_ca))}"
    for args in (["migrate"], ["add", "sched.noop"], ["add", "sched.noop"]):
        done = sched_at(url, *args)
        assert done.returncode == 0, done.stderr
    drained = sched_at(url, "worker", "--burst")
    assert drained.returncode == 0, drained.stderr
    status = sched_at(url, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert [q["succeeded"] for q in json.loads(status.stdout)["queues"]] == [2]
    # The operator's commands go over the same URL.
    parked = sched_at(url, "add", "sched.noop", "--queue", "parked").stdout.strip()
    for args in (
        ["cancel", parked],
        ["retry", parked],
        ["queue", "pause", "parked"],
        ["queue", "list"],
        ["schedule", "add", "nightly", "sched.noop", "--cron", "0 3 * * *"],
        ["schedule", "list"],
        ["reap"],
        ["cleanup", "--dry-run"],
        ["doctor", "--json"],
    ):
        done = sched_at(url, *args)
        assert done.returncode == 0, (args, done.stderr)
    # Really over TLS: the server saw the app role's sessions encrypted.
    with psycopg.connect(url, autocommit=True) as c:
        assert c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def test_a_wrong_root_certificate_fails_in_one_line_without_the_password(tls_server, sched_at) -> None:
    base, _, wrong_ca = tls_server
    url = f"{base}?sslmode=verify-full&sslrootcert={quote(str(wrong_ca))}"
    for args in (["migrate"], ["add", "sched.noop"], ["status"]):
        failed = sched_at(url, *args)
        assert failed.returncode == 1, failed.stderr
        lines = failed.stderr.splitlines()
        assert len(lines) == 1, failed.stderr
        assert lines[0].startswith("Error: cannot reach the database: "), lines[0]
        assert "certificate verify failed" in lines[0]
        assert PASSWORD not in failed.stderr + failed.stdout
        assert quote(PASSWORD) not in failed.stderr + failed.stdout
