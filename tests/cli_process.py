"""The habla-ls CLI as a child process, as a user runs it, and whether a server's port was given back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

HABLA_LS = str(Path(sys.executable).parent / "habla-ls")


def cli_env(home: Path) -> dict[str, str]:
    """This environment without the tester's own Label Studio / habla-ls settings, with ``home`` as work dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "HABLA_"))}
    return {**env, "HABLA_LS_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def run_habla_ls(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([HABLA_LS, *args], env=cli_env(home), capture_output=True, text=True, timeout=120)


def port_free(port: int) -> bool:
    """Nothing accepts connections on it, and a new server could bind it (as servers do, SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
