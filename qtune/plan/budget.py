"""How much memory a plan may use: a size the user gives (``24GiB``) or the device's own memory."""

from __future__ import annotations

import re

from qtune.errors import QtuneError

UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
         "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str, flag: str = "--memory") -> int:
    """``24GiB``, ``24GB``, ``512MiB``, ``1e9`` → bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in UNITS:
        raise QtuneError(f"{flag}: '{text}' is not a size (e.g. 24GiB, 24GB, 512MiB)")
    value = float(m.group(1)) * UNITS[m.group(2).lower()]
    if not value < 2**63:  # 1e999GiB: no machine has it, and int() of it overflows
        raise QtuneError(f"{flag}: '{text}' is more memory than any machine has (e.g. 24GiB)")
    if value <= 0:
        raise QtuneError(f"{flag}: '{text}' must be more than 0")
    return int(value)


def _meminfo(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def device_memory(device: str) -> tuple[int, str]:
    """(bytes, what they are) of ``device``: CUDA total memory, or the host's RAM on CPU."""
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"{props.name}"
    try:
        return _meminfo("MemTotal"), "cpu RAM"
    except (OSError, KeyError):
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "cpu RAM"


def process_rss() -> int:
    """The resident set size of this process now (Linux), 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
