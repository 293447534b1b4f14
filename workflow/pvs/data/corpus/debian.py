"""Fetch pinned Debian packages with apt and unpack them, without installing anything.

    deb = fetch_deb(PinnedDeb("r-cran-janeaustenr", "1.0.0-1", "df6b..."), cache_dir)
    root = extract_deb(deb, cache_dir / "extracted")      # the package's files under root/usr/...

``apt-get download NAME=VERSION`` uses the machine's configured apt sources. When it fails because the
package lists are missing (a fresh container), ``apt-get update`` is run once and the download retried.
Each .deb is checked against its pinned sha256; downloads and extractions are kept in the cache so a
re-run reuses them. Everything that goes wrong raises ``DebianFetchError`` with apt's own message.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class DebianFetchError(RuntimeError):
    """A pinned package could not be downloaded, verified or extracted."""


@dataclass(frozen=True)
class PinnedDeb:
    name: str
    version: str
    sha256: str

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_apt(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run one apt-get command (a separate function so tests can simulate apt failures)."""
    return subprocess.run(["apt-get", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})


def _cached(pkg: PinnedDeb, cache_dir: Path) -> Path | None:
    """A cached .deb of this exact name and version whose sha256 matches; a mismatching one is deleted."""
    version = pkg.version.replace(":", "%3a")  # apt writes an epoch's colon as %3a
    for path in sorted(cache_dir.glob(f"{pkg.name}_{version}_*.deb")):
        if sha256_file(path) == pkg.sha256:
            return path
        log.warning("cached %s does not match its pinned sha256; downloading it again", path.name)
        path.unlink()
    return None


def _download(pkg: PinnedDeb, cache_dir: Path) -> None:
    """``apt-get download`` into ``cache_dir``; on failure ``apt-get update`` once, then one retry."""
    try:
        result = run_apt(["download", pkg.spec], cache_dir)
        if result.returncode != 0:  # most often: no package lists yet (a fresh machine)
            log.info("apt-get download %s failed (%s); running apt-get update once and retrying",
                     pkg.spec, (result.stderr.strip().splitlines() or ["no message"])[-1])
            update = run_apt(["update"], cache_dir)
            if update.returncode != 0:
                raise DebianFetchError(f"apt-get update failed (root needed?): {update.stderr.strip()[-500:]}")
            result = run_apt(["download", pkg.spec], cache_dir)
    except FileNotFoundError as e:
        raise DebianFetchError("apt-get is not available on this machine") from e
    if result.returncode != 0:
        raise DebianFetchError(f"apt-get download {pkg.spec} failed: {result.stderr.strip()[-500:]}")


def fetch_deb(pkg: PinnedDeb, cache_dir: str | Path) -> Path:
    """The verified .deb of ``pkg`` in ``cache_dir`` (downloaded only when not cached)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = _cached(pkg, cache_dir)
    if path is not None:
        return path
    log.info("downloading %s with apt-get", pkg.spec)
    _download(pkg, cache_dir)
    path = _cached(pkg, cache_dir)
    if path is None:
        raise DebianFetchError(f"apt-get download {pkg.spec} gave no .deb whose sha256 is {pkg.sha256} "
                               f"(a changed package or a different archive)")
    return path


def extract_deb(deb: str | Path, dest_root: str | Path) -> Path:
    """``dpkg-deb -x`` the package into ``dest_root/<deb name>/`` once; returns that folder."""
    deb, dest_root = Path(deb), Path(dest_root)
    dest = dest_root / deb.stem
    if (dest / ".complete").exists():
        return dest
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{deb.stem}.", dir=dest_root))
    try:
        result = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True)
    except FileNotFoundError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DebianFetchError("dpkg-deb is not available on this machine") from e
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DebianFetchError(f"dpkg-deb -x {deb.name} failed: {result.stderr.strip()[-500:]}")
    (tmp / ".complete").touch()
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def fetch_and_extract(pkg: PinnedDeb, cache_dir: str | Path) -> tuple[Path, Path]:
    """(verified .deb, folder it was extracted to), both inside ``cache_dir``."""
    deb = fetch_deb(pkg, cache_dir)
    return deb, extract_deb(deb, Path(cache_dir) / "extracted")
