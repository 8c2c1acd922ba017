"""qtune.memory: the one peak-memory measure, checked against a block of known size."""

from __future__ import annotations

from qtune.memory import CPU_KIND, PeakMemory, rss, status_bytes

MiB = 2**20


def test_cpu_peak_is_the_growth_over_the_baseline_and_survives_the_free():
    m = PeakMemory("cpu").begin()
    assert m.kind == CPU_KIND and m.resettable
    block = bytearray(b"\x01") * (64 * MiB)  # written, so its pages are resident
    held = m.current()
    del block  # glibc returns a block this large to the kernel at once (its own mapping)
    assert 60 * MiB <= held <= 80 * MiB, held / MiB
    assert m.peak() >= held - MiB, (m.peak() / MiB, held / MiB)  # file pages are read at each call: ±0.2 MiB seen
    assert m.current() < held - 32 * MiB, (m.current() / MiB, held / MiB)
    m.reset_peak()
    assert m.peak() < held - 32 * MiB, "the reset forgets the earlier peak"


def test_status_fields_are_bytes():
    assert status_bytes("VmRSS") == rss() or abs(status_bytes("VmRSS") - rss()) < 16 * MiB
    assert status_bytes("NoSuchField") is None
