"""A pytest plugin: the kernels of the notebook tests talk over Unix sockets, not TCP ports.

jupyter_client picks five free TCP ports for a kernel, writes them down and only then does the
kernel bind them; when several kernels start at once (pytest-xdist workers, a JupyterLab) or an
outgoing connection takes one of those ephemeral ports meanwhile, the kernel dies with
"Address already in use" and the notebook test fails for a reason that is not the notebook's.
Unix sockets named after each kernel's own connection file cannot collide. nbval builds its
``KernelManager`` without any configuration, so the plugin hands it a subclass whose default
transport is "ipc"; tests that start kernels themselves use ``kernel_manager()``.
"""

from __future__ import annotations

import os
import tempfile
import uuid

from jupyter_client.manager import AsyncKernelManager, KernelManager
from traitlets import CaselessStrEnum, default

IPC = os.name == "posix"  # Unix sockets: Linux and macOS; Windows keeps TCP
TRANSPORT = "ipc" if IPC else "tcp"


def _over_ipc(base: type) -> type:
    class Manager(base):
        __doc__ = f"A ``{base.__name__}`` that talks to its kernel over Unix sockets."

        transport = CaselessStrEnum(["tcp", "ipc"], default_value=TRANSPORT, config=True)

        @default("ip")
        def _ip_default(self) -> str:
            # jupyter_client's own default is the relative "kernel-ipc", which the kernel
            # (started in the notebook's folder) and the client (in pytest's) would resolve
            # to different files: an absolute path of its own for each kernel.
            if self.transport == "ipc":
                return os.path.join(tempfile.gettempdir(), f"kernel-{uuid.uuid4().hex}-ipc")
            return super()._ip_default()

    Manager.__name__ = Manager.__qualname__ = f"Ipc{base.__name__}"
    return Manager


IpcKernelManager = _over_ipc(KernelManager)
AsyncIpcKernelManager = _over_ipc(AsyncKernelManager)  # for nbclient.NotebookClient


def pytest_configure(config):
    import nbval.kernel

    nbval.kernel.KernelManager = IpcKernelManager
