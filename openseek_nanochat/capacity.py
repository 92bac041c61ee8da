"""What this machine can run: CPU cores, CUDA devices (count and names), and the address other nodes reach it by.

A worker advertises this when it signs on (app/jobs/placement.py matches jobs against it). CUDA is asked of torch, in
a child process (`python -m openseek_nanochat.capacity` prints the JSON), so that neither the worker's loop nor the API
ever imports torch; a machine without NVIDIA's driver is known to have no CUDA device without asking.
"""

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROBE_TIMEOUT_S = 120  # torch's first import on a cold disk can take a while
NVIDIA_DRIVER = Path("/proc/driver/nvidia")


@dataclass(frozen=True)
class Capacity:
    cpus: int
    cuda: list[str] = field(default_factory=list)  # one name per device, in device order


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cuda_devices() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def probe() -> Capacity:
    """This machine's capacity, torch asked in a child process (only where an NVIDIA driver is loaded)."""
    cpus = cpu_count()
    if not NVIDIA_DRIVER.exists() and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return Capacity(cpus=cpus)
    done = subprocess.run(
        [sys.executable, "-m", "openseek_nanochat.capacity"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
    )
    if done.returncode != 0:
        return Capacity(cpus=cpus)  # torch without CUDA support, or none at all: CPU only
    return Capacity(**json.loads(done.stdout.strip().splitlines()[-1]))


def advertised_host(configured: str | None) -> str:
    """The address other nodes reach this one by: OPENSEEK_NANOCHAT_WORKER_HOST, else this machine's name."""
    return configured or socket.getfqdn()


if __name__ == "__main__":
    print(json.dumps(asdict(Capacity(cpus=cpu_count(), cuda=_cuda_devices()))))
