"""What every benchmark prints beside its figures: the CPU's vector flags and the core count."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_line() -> str:
    """``CPU flags: avx avx2 … fma; N cores`` from /proc/cpuinfo (the flags that decide which
    kernels run: AVX, AVX2, AVX-512 and FMA)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"CPU flags: unknown; {os.cpu_count()} cores"
    flags = sorted(
        {f for line in text.splitlines() if line.startswith("flags")
         for f in line.split(":")[1].split() if f.startswith(("avx", "fma"))}
    )  # fmt: skip
    return f"CPU flags: {' '.join(flags)}; {os.cpu_count()} cores"


def default_faces() -> str:
    """The shared photos: ``$VISAGE_FACES``, else ``../shared/faces`` beside the repository."""
    return os.environ.get("VISAGE_FACES") or str(
        Path(__file__).resolve().parents[2] / "shared" / "faces"
    )
