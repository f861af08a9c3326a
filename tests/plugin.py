"""The pytest plugin of this repository (``-p tests.plugin`` in pyproject.toml).

Loaded for every test run, the notebooks' included (``tests/conftest.py`` is not, for
``pytest notebooks``). It does two things.

**Long notebooks are marked slow.** ``pytest -m "not slow"`` skips the notebooks that train
(``SLOW_NOTEBOOKS``), as it skips the other long tests.

**Kernels talk over Unix sockets, not TCP ports.**

jupyter_client picks five free TCP ports for a kernel, writes them down and only then does the
kernel bind them; when several kernels start at once (pytest-xdist workers, a JupyterLab) or an
outgoing connection takes one of those ephemeral ports meanwhile, the kernel dies with
"Address already in use" and the notebook test fails for a reason that is not the notebook's.
Unix sockets named after each kernel's own connection file cannot collide. nbval builds its
``KernelManager`` without any configuration, so the plugin hands it a subclass whose default
transport is "ipc"; tests that start kernels themselves pass ``AsyncIpcKernelManager``.

**Async clients poll in slices of a second.** A zmq socket signals new messages through an
edge-triggered file descriptor; an asyncio poll that misses the edge (a message that arrives
while the socket's previous event is being handled) sleeps out its whole timeout with the
reply already waiting. nbclient waits for each cell's reply with the cell timeout, so a cell
that ran in a second could hold a test for 180 s and then pass. ``AsyncIpcKernelManager``'s
clients poll at most ``POLL_SLICE`` seconds at a time, and every new poll first looks at the
socket's pending events, so a missed edge costs a second at most.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from queue import Empty

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager, KernelManager
from traitlets import CaselessStrEnum, Type, default

IPC = os.name == "posix"  # Unix sockets: Linux and macOS; Windows keeps TCP
TRANSPORT = "ipc" if IPC else "tcp"


def _over_ipc(base: type, client: type | None = None) -> type:
    class Manager(base):
        __doc__ = f"A ``{base.__name__}`` that talks to its kernel over Unix sockets."

        transport = CaselessStrEnum(["tcp", "ipc"], default_value=TRANSPORT, config=True)

        if client is not None:

            @default("client_factory")
            def _client_factory_default(self) -> type:
                return client

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


#: Longest single poll of an async kernel client's socket, in seconds.
POLL_SLICE = 1.0


class SlicedChannel(AsyncZMQSocketChannel):
    """An async channel whose ``get_msg`` polls in slices of at most ``POLL_SLICE`` seconds."""

    async def get_msg(self, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return await super().get_msg(timeout=min(left, POLL_SLICE))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise


class SlicedAsyncKernelClient(AsyncKernelClient):
    """An ``AsyncKernelClient`` whose message channels poll in slices (see the module)."""

    shell_channel_class = Type(SlicedChannel)
    iopub_channel_class = Type(SlicedChannel)
    stdin_channel_class = Type(SlicedChannel)
    control_channel_class = Type(SlicedChannel)


IpcKernelManager = _over_ipc(KernelManager)
AsyncIpcKernelManager = _over_ipc(AsyncKernelManager, SlicedAsyncKernelClient)  # for nbclient


# Notebooks whose run trains an encoder or takes more than about 15 s on a 2-core CPU.
SLOW_NOTEBOOKS = (
    "03_qb_batch_temperature",
    "06_train_it_yourself",
    "07_geometry",
    "08_memory_queues",
)


def pytest_configure(config):
    import nbval.kernel

    nbval.kernel.KernelManager = IpcKernelManager


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if item.path.suffix == ".ipynb" and item.path.stem in SLOW_NOTEBOOKS:
            item.add_marker(pytest.mark.slow)
