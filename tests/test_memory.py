"""qtune.memory: the one peak-memory measure, checked against a block of known size."""

from __future__ import annotations

import mmap

from qtune.memory import CPU_KIND, PeakMemory, rss, status_bytes

MiB = 2**20


def test_cpu_peak_is_the_growth_over_the_baseline_and_survives_the_free():
    m = PeakMemory("cpu").begin()
    assert m.kind == CPU_KIND and m.resettable
    # An anonymous mapping of its own, every page written (resident), unmapped at close: what glibc does with a
    # block this large by default, but whatever malloc settings an earlier test left in this process
    # (plan --measure lowers the mmap threshold in-process).
    block = mmap.mmap(-1, 64 * MiB)
    for offset in range(0, 64 * MiB, mmap.PAGESIZE):
        block[offset] = 1
    held = m.current()
    block.close()
    assert 60 * MiB <= held <= 80 * MiB, held / MiB
    assert m.peak() >= held - MiB, (m.peak() / MiB, held / MiB)  # file pages are read at each call: ±0.2 MiB seen
    assert m.current() < held - 32 * MiB, (m.current() / MiB, held / MiB)
    m.reset_peak()
    assert m.peak() < held - 32 * MiB, "the reset forgets the earlier peak"


def test_status_fields_are_bytes():
    assert status_bytes("VmRSS") == rss() or abs(status_bytes("VmRSS") - rss()) < 16 * MiB
    assert status_bytes("NoSuchField") is None
