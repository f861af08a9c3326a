"""Shared fixtures. Kept small: only what more than one test module could use."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.plugin import IPC

ROOT = Path(__file__).resolve().parents[1]

# JupyterLab settings for a test server: every cell stays in the page (no virtual scrolling,
# so a test can find every prompt and output), and no news or update checks (no network).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


@dataclass(frozen=True)
class LabServer:
    """A running JupyterLab; ``url(path)`` opens ``path`` (relative to its root) in the lab."""

    base: str
    token: str
    root: Path
    log: Path

    def url(self, path: str = "") -> str:
        """``path`` in a workspace of its own, reset: no tab of an earlier page comes back."""
        workspace = "".join(c if c.isalnum() else "-" for c in path) or "root"
        return f"{self.base}/lab/workspaces/{workspace}/tree/{path}?reset&token={self.token}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(
    base: str, token: str, proc: subprocess.Popen, log: Path, *, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(
        f"JupyterLab did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
    )


@pytest.fixture
def jupyter_lab(tmp_path_factory) -> Iterator[Callable[[Path], LabServer]]:
    """Factory: ``jupyter_lab(root_dir)`` starts JupyterLab on 127.0.0.1 serving ``root_dir``.

    The server runs this interpreter's Jupyter (its kernels see this checkout through
    PYTHONPATH), on a free port with a random token, with its own settings and runtime
    folders; it is stopped (terminate, then kill) when the test ends, pass or fail.
    """
    started: list[subprocess.Popen] = []

    def start(root_dir: Path) -> LabServer:
        home = tmp_path_factory.mktemp("jupyter-home")
        settings = home / "lab-settings"
        for name, values in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(values), encoding="utf-8")
        env = dict(os.environ)
        env.pop("MPLBACKEND", None)  # CI sets Agg; a learner's kernel uses the inline backend
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            JUPYTERLAB_SETTINGS_DIR=str(settings),
            JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
            JUPYTER_RUNTIME_DIR=str(home / "runtime"),
            JUPYTER_CONFIG_DIR=str(home / "config"),
            IPYTHONDIR=str(home / "ipython"),
            OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        )
        port, token = _free_port(), secrets.token_hex(16)
        log = home / "server.log"
        cmd = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--port={port}",
            "--port-retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root_dir}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if IPC:  # kernels on Unix sockets: no TCP port to lose to a concurrent start
            cmd += ["--KernelManager.transport=ipc", f"--KernelManager.ip={home / 'kernel'}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI runs as root
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=root_dir, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        started.append(proc)
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(base, token, proc, log, timeout=90)
        return LabServer(base=base, token=token, root=root_dir, log=log)

    try:
        yield start
    finally:
        for proc in started:
            proc.terminate()  # the server shuts its kernels down on SIGTERM
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
