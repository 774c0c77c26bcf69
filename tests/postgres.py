"""A throw-away PostgreSQL server for tests: initdb and pg_ctl run as an unprivileged user (postgres refuses root)
in a temporary folder, on 127.0.0.1 and a free port; stopped and removed after."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

USER = "nobody"
"""The unprivileged account that owns and runs the server when the tests run as root."""


def binaries() -> bool:
    return shutil.which("initdb") is not None and shutil.which("pg_ctl") is not None


def _as_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", USER, "--", *cmd]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields its URL (``postgresql://USER@127.0.0.1:PORT/postgres``)."""
    root = tempfile.mkdtemp(prefix="sedensenet-pg-")
    user = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() != 0 else USER
    if os.geteuid() == 0:
        entry = pwd.getpwnam(USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    data, port = os.path.join(root, "data"), _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    try:
        subprocess.run(_as_user(["initdb", "-D", data, "-U", user, "--auth=trust", "-E", "UTF8"]), check=True,
                       capture_output=True, env=env, timeout=120)  # fmt: skip
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"
        subprocess.run(_as_user(["pg_ctl", "-D", data, "-o", options, "-l", os.path.join(root, "log"), "-w", "-t", "60",
                                 "start"]), check=True, capture_output=True, env=env, timeout=120)  # fmt: skip
        try:
            yield f"postgresql://{user}@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(_as_user(["pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"]), capture_output=True,
                           env=env, timeout=60)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
