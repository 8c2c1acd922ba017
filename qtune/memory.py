"""Peak memory: one definition, read by ``qtune train`` (``summary.json``), ``qtune plan --measure`` and the load
memory of ``qtune report``, so their figures are the same kind of number.

A :class:`PeakMemory` takes its baseline at :meth:`~PeakMemory.begin` (before the model loads) and reports
the growth of the peak over that baseline since the last :meth:`~PeakMemory.reset_peak`:

- CUDA (``cuda_max_allocated``): ``torch.cuda.max_memory_allocated`` less what was allocated at the
  baseline; the quantity the planner counts.
- CPU on Linux (``cpu_peak_rss_growth``): the peak resident set (``VmHWM``; :meth:`~PeakMemory.reset_peak`
  resets it to the current RSS through ``/proc/self/clear_refs``) less the resident set at the baseline
  (python, torch, transformers, the tokenizer and the tokenized data) and less the file-backed pages mapped
  since (``RssFile``): the checkpoint file the loader leaves mapped after quantizing from it, and shared-library
  code run for the first time — clean pages that are not the model's memory. Parameters whose storage lies
  in a mapped ``.safetensors`` file (loaded without a copy; :meth:`~PeakMemory.holds`) are counted back in.
- CPU without ``/proc`` (``process_max_rss_growth``): ``ru_maxrss`` less the RSS peak at the baseline; a
  process's own peak, so meaningful only in a fresh process.

What the resident set holds still depends on the allocator: glibc's default heap keeps freed tensors for
reuse, so a run's peak RSS sits above the live tensors the planner counts; ``qtune plan --measure`` holds
glibc's mmap threshold at 64 KiB (:func:`qtune.plan.measure.fix_mmap_threshold`) so freed tensors leave it.
"""

from __future__ import annotations

import resource

CUDA_KIND = "cuda_max_allocated"
CPU_KIND = "cpu_peak_rss_growth"
CPU_FALLBACK_KIND = "process_max_rss_growth"
KINDS = {  # what each kind is, for the lines that print a figure
    CUDA_KIND: "CUDA max allocated above the allocation before loading",
    CPU_KIND: "peak RSS − RSS before loading − file pages mapped since",
    CPU_FALLBACK_KIND: "the process's peak RSS (ru_maxrss) above its peak before loading",
}


def status_bytes(field: str) -> int | None:
    """``field`` of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``RssFile``, ...) in bytes; None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss() -> int:
    """The resident set size of this process now (Linux), 0 where /proc is missing."""
    return status_bytes("VmRSS") or 0


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def checkpoint_views(model) -> int:
    """Bytes of the parameters whose storage lies in a mapped ``.safetensors`` file (loaded without a copy)."""
    maps = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                head = line.split()
                if head[-1].endswith(".safetensors"):
                    lo, hi = (int(x, 16) for x in head[0].split("-"))
                    maps.append((lo, hi))
    except OSError:
        return 0
    seen, views = set(), 0
    for p in model.parameters():
        st = p.untyped_storage()
        if st.data_ptr() not in seen and any(lo <= st.data_ptr() < hi for lo, hi in maps):
            seen.add(st.data_ptr())
            views += st.nbytes()
    return views


class PeakMemory:
    """``m = PeakMemory(device); m.begin(); load(); m.holds(model); m.reset_peak(); work(); m.peak()``."""

    def __init__(self, device: str):
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        self.kind = CUDA_KIND if self.device == "cuda" else CPU_KIND
        self.resettable = True
        self._base = self._file_base = self._views = 0

    def begin(self) -> "PeakMemory":
        """Take the baseline (call before the model loads) and reset the peak to it."""
        if self.device == "cuda":
            import torch

            self._base = torch.cuda.memory_allocated()
        elif status_bytes("VmRSS") is None:
            self.kind, self._base = CPU_FALLBACK_KIND, _max_rss()
        else:
            self._base, self._file_base = rss(), status_bytes("RssFile") or 0
        self.reset_peak()
        return self

    def reset_peak(self) -> bool:
        """Forget the peak so far (it restarts at the current use); False where the CPU peak cannot be reset."""
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        elif self.kind == CPU_KIND:
            self.resettable = reset_peak_rss()
        return self.resettable

    def holds(self, model) -> None:
        """Count back ``model``'s parameters that live in a mapped checkpoint file (CPU)."""
        if self.kind == CPU_KIND:
            self._views = checkpoint_views(model)

    def file_pages(self) -> int:
        """File-backed resident bytes mapped since the baseline, less the model's parameters among them (CPU)."""
        if self.kind != CPU_KIND:
            return 0
        return (status_bytes("RssFile") or 0) - self._file_base - self._views

    def current(self) -> int:
        """Bytes in use now above the baseline, by the same rule as :meth:`peak`."""
        if self.device == "cuda":
            import torch

            return torch.cuda.memory_allocated() - self._base
        if self.kind == CPU_FALLBACK_KIND:
            return 0
        return rss() - self._base - self.file_pages()

    def peak(self) -> int:
        """Peak bytes above the baseline since the last reset."""
        if self.device == "cuda":
            import torch

            return torch.cuda.max_memory_allocated() - self._base
        if self.kind == CPU_FALLBACK_KIND:
            return _max_rss() - self._base
        return (status_bytes("VmHWM") or 0) - self._base - self.file_pages()

    @property
    def baseline(self) -> int:
        return self._base
