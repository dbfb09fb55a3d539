"""Local servers (the Voila app, JupyterLab) as process groups: a port, a first answer, a stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now.

    >>> 0 < free_port() < 65536
    True
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_answer(
    process: subprocess.Popen,
    request: urllib.request.Request | str,
    start_s: float,
    what: str,
    log: Callable[[], str],
    errors_answer: bool = False,
) -> bytes | None:
    """Ask ``request`` every half second until the server ``process`` answers; its body.

    ``errors_answer``: an HTTP error counts as the answer (the server is up; ``None``).
    Raises if the process exits first (with the tail of ``log()``) or after ``start_s``.

    >>> sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    >>> wait_for_answer(sleeper, f"http://127.0.0.1:{free_port()}/", 1, "nothing", str)
    Traceback (most recent call last):
    ...
    TimeoutError: nothing did not answer in 1 s
    >>> stop_process_group(sleeper)
    """
    deadline = time.monotonic() + start_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}):\n{log()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.read()
        except urllib.error.HTTPError:
            if errors_answer:
                return None
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not answer in {start_s:g} s")
        time.sleep(0.5)


def stop_process_group(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM a server started with ``start_new_session=True`` and its group (kernels
    included), SIGKILL after ``grace_s`` seconds; nothing if it has exited.

    >>> sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    >>> stop_process_group(sleeper); sleeper.returncode == -signal.SIGTERM
    True
    """
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)
