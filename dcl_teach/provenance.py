"""Where a number was measured: one description of the machine for every report and result.

Benchmarks (:mod:`dcl_teach.bench`, :mod:`dcl_teach.bench_train`) and the sweep
(:mod:`dcl_teach.sweep`) store :func:`machine_info` beside their figures, so a reader can tell
a 2-core laptop from a GPU server and a busy machine from an idle one.
"""

from __future__ import annotations

import os
import platform

import torch

from dcl_teach import __version__


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: str | torch.device = "cpu") -> dict[str, object]:
    """The machine a measurement ran on.

    Args:
        device: the device measured (``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a torch.device).

    Returns:
        ``cpu`` (model), ``cores``, ``torch_threads``, ``torch``, ``python``, ``platform``,
        ``dcl_teach`` (versions), ``device``, ``device_name`` (the GPU's name, else the CPU's),
        ``cuda`` (CUDA version of the torch build, or None) and ``load_average_1min`` (None
        where the OS has none; a load above the cores means other work shared the machine).

    Example:
        >>> info = machine_info("cpu")
        >>> info["device"], info["device_name"] == info["cpu"], info["cores"] >= 1
        ('cpu', True, True)

    Taught in notebook 04.
    """
    device = torch.device(device)
    cpu = cpu_model()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dcl_teach": __version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cuda": torch.version.cuda,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
