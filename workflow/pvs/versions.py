"""Library versions recorded in every results file, so numbers can be traced to the code that made them."""
from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "lm-eval", "numpy", "pandas", "snakemake")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
