"""A throwaway `redis-server` on a free loopback port, for tests and benchmarks of shared rate limits.

Nothing persists (no RDB, no AOF, its own temporary directory); `stop()` and
`start()` again on the same port simulate an outage and a recovery.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from duet.errors import DuetError

INSTALL_HINT = "install it with `apt-get install -y redis-server` (make test's CI does)"


def redis_server_path() -> str | None:
    """The redis-server executable on PATH (or in /usr/sbin, /usr/bin), or None."""
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")


class RedisProcess:
    """`redis-server` on 127.0.0.1:`port`; a context manager that starts it and always kills it."""

    def __init__(self, port: int | None = None):
        from duet.simulate import free_port

        executable = redis_server_path()
        if executable is None:
            raise DuetError(f"redis-server not found: {INSTALL_HINT}")
        self.executable, self.port = executable, port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="duet-redis-")
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
        self._dir.cleanup()

    def start(self, timeout: float = 10.0) -> None:
        with open(Path(self._dir.name) / "redis.log", "ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                 "no", "--dir", self._dir.name], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise DuetError(f"redis-server on port {self.port} did not start: {self.log_tail()}")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server (SIGKILL: an outage, not a shutdown) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, chars: int = 1000) -> str:
        file = Path(self._dir.name) / "redis.log"
        return file.read_text(errors="replace")[-chars:].strip() if file.exists() else ""
