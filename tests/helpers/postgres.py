"""A real PostgreSQL server on localhost for the tests: Debian's `postgresql` package, its own
data directory and port, stopped at the end whatever happens.

    with postgres_server() as url:   # postgresql+psycopg://hw2@127.0.0.1:<port>/postgres
        ...

initdb refuses to run as root, so as root the server runs as the `postgres` user (`runuser`);
otherwise as the current user. The `postgres_url` fixture skips when PostgreSQL or the psycopg
driver is missing (`.ci/run` installs both).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

USER = "hw2"


def bindir() -> Path | None:
    """PostgreSQL's programs (initdb, pg_ctl), from `pg_config --bindir`; None when absent."""
    if not shutil.which("pg_config"):
        return None
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=30)
    path = Path(out.stdout.strip())
    return path if (path / "initdb").is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server(port: int | None = None) -> Iterator[str]:
    """Start a throw-away server (temporary data dir, trust auth for user `hw2`, listening on
    127.0.0.1:`port` only); yield its SQLAlchemy URL; stop it fast and delete its data."""
    bin_dir = bindir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL not found (pg_config): apt-get install postgresql")
    port = port or _free_port()
    data = Path(tempfile.mkdtemp(prefix="hw2-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        subprocess.run(_as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                                        "-U", USER]),
                       check=True, capture_output=True, timeout=120)
        subprocess.run(_as_server_user([*pg_ctl, "-o", f"-p {port} -k {data} "
                                        "-c listen_addresses=127.0.0.1", "-l",
                                        str(data / "server.log"), "-w", "start"]),
                       check=True, capture_output=True, timeout=120)
        started = True
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(_as_server_user([*pg_ctl, "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=120)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh server for one test (skipped without PostgreSQL or psycopg)."""
    pytest.importorskip("psycopg")
    if bindir() is None:
        pytest.skip("PostgreSQL is not installed (pg_config): .ci/run installs it")
    with postgres_server() as url:
        yield url
