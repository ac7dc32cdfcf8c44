"""Inference workers that ``mdf run-batch`` starts when no fleet serves, and always stops.

Each is ``mdf worker --burst`` in a child process (the scheduler never imports the
worker package), logging to its own file. They run in their own session, so a Ctrl-C
reaches only run-batch, which stops them the way an operator would: SIGTERM, a warm
shutdown that finishes the running chunk, then SIGKILL for any that outlive the grace
period. On Linux the kernel also sends them SIGTERM if run-batch dies without cleaning
up (``PR_SET_PDEATHSIG``), so none is ever left orphaned.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time

import structlog

from mdf.broker import broker_url
from mdf.settings import Settings

log = structlog.get_logger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _terminate_with_parent() -> None:
    """Runs in the child between fork and exec."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_environment(settings: Settings) -> dict[str, str]:
    """This process's environment, pinned to the settings it was given: flags and per-command
    overrides never reach ``os.environ``, so a child learns them here."""
    env = {
        **os.environ,
        "MDF_DATA_DIR": str(settings.data_dir.resolve()),
        # Without a password read from a secret file: the child reads the file itself.
        "MDF_DATABASE_URL": settings.database_url or settings.resolved_database_url,
        "MDF_BROKER_URL": settings.broker_url or broker_url(settings),
        "MDF_LOG_FORMAT": settings.log_format,
    }
    if settings.model_dir is not None:
        env["MDF_MODEL_DIR"] = str(settings.model_dir.resolve())
    return env


class LocalWorkers:
    """``count`` burst workers, children of this process; ``stop()`` must follow ``start()``."""

    def __init__(self, count: int, settings: Settings, *, name: str):
        self.count = count
        self.settings = settings
        safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        self.log_dir = (settings.data_dir / "logs" / "run-batch" / safe_name).resolve()
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = worker_environment(self.settings)
        for index in range(self.count):
            hostname = f"run-batch-{index + 1}-{os.getpid()}@%h"
            command = [sys.executable, "-m", "mdf.cli", "worker", "--burst", "--hostname", hostname]
            with (self.log_dir / f"worker-{index + 1}.log").open("ab") as output:
                self.processes.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=_terminate_with_parent if sys.platform == "linux" else None,
                    )
                )
        log.info(
            "local_workers_started",
            pids=[process.pid for process in self.processes],
            logs=str(self.log_dir),
        )

    def exit_codes(self) -> list[int] | None:
        """Every worker's exit status once all have exited; None while one runs."""
        codes = [process.poll() for process in self.processes]
        return None if None in codes else [code for code in codes if code is not None]

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM every worker; SIGKILL those still running after ``grace_s`` (or a Ctrl-C)."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace_s
        try:
            for process in self.processes:
                try:
                    process.wait(max(deadline - time.monotonic(), 0.0))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
            for process in self.processes:
                process.kill()
                process.wait()
            raise
        log.info("local_workers_stopped", exit_codes=[p.returncode for p in self.processes])
