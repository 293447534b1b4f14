"""Library versions recorded in every results file, so numbers can be traced to the code that made them."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "lm-eval", "numpy", "pandas", "snakemake")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> list[str]:
    """The CPU's vector and matrix extensions (avx2, avx512*, amx*) from /proc/cpuinfo; [] where it is absent."""
    return sorted(f for f in (_cpuinfo_field("flags") or "").split() if f.startswith(("amx", "avx512", "avx2")))


def machine_info() -> dict:
    """The machine a benchmark ran on: CPU model, cores, its vector/matrix flags, the platform string."""
    return {"cpu": _cpuinfo_field("model name") or platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "flags": cpu_flags(), "platform": platform.platform()}
