"""Run model-written Python programs so that nothing they do can harm the evaluation.

Each program runs in its own process (eval/_sandbox_launcher.py) with:
- an empty temporary working folder, removed afterwards;
- a wall-clock timeout, after which its whole process group (and, with namespaces,
  its whole PID namespace) is killed;
- rlimits on address space, CPU seconds, file size, open files, processes;
- an environment holding only PATH, HOME/TMPDIR (the working folder) and LANG;
- Python's isolated mode without site-packages, and an audit hook that refuses new
  processes, signals, sockets, native code (ctypes), reads of /proc and /sys, and
  writes, renames or deletes outside the working folder;
- where `unshare` can create user namespaces: fresh network (no interfaces but an
  unconfigured loopback), PID (the evaluator is invisible and cannot be signalled)
  and mount namespaces, with the whole filesystem read-only and the working folder a
  fresh size-capped tmpfs.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional

from sftmerge.errors import SftmergeError

LAUNCHER = Path(__file__).with_name("_sandbox_launcher.py")
UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
           "--mount", "--mount-proc"]


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    folder_bytes: int = 64 << 20  # all files together (with namespaces: a tmpfs of this size)
    output_bytes: int = 4096  # of stderr kept for the samples file


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout
    detail: str


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """Whether unprivileged user+net+pid+mount namespaces work here (decided once)."""
    if shutil.which("unshare") is None:
        return False
    try:  # the whole stack (namespaces, read-only remount, tmpfs), not just unshare
        return run_program("pass\n", Limits(timeout_s=30), namespaces=True).passed
    except SftmergeError:
        return False


def isolation_description() -> str:
    """One line for result files saying which protections were in force."""
    base = "own process, rlimits, clean env, audit hook (no subprocess/signals/sockets/ctypes, writes only in its folder)"
    if namespaces_available():
        return base + ", user+net+pid+mount namespaces with read-only filesystem"
    return base + "; no namespaces (unshare unavailable): network blocked only by the audit hook"


def _clean_env(work: Path) -> dict:
    return {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0"}


def run_program(source: str, limits: Limits = Limits(), namespaces: Optional[bool] = None) -> Outcome:
    """Run one program; passed only if it ran to its end within the limits.

    `namespaces`: None uses them where available; False runs without (as where
    unshare is refused), to test the layers that must hold on their own.
    """
    use_ns = namespaces_available() if namespaces is None else namespaces
    work = Path(tempfile.mkdtemp(prefix="sftmerge-sandbox-"))
    read_fd, write_fd = os.pipe()
    nonce = secrets.token_hex(16)
    spec = {"verdict_fd": write_fd, "memory_bytes": limits.memory_bytes, "file_bytes": limits.file_bytes,
            "folder_bytes": limits.folder_bytes, "cpu_seconds": int(limits.timeout_s) + 1, "mount_namespace": use_ns}
    cmd = [*(UNSHARE if use_ns else []), sys.executable, "-I", "-S", "-B", str(LAUNCHER), json.dumps(spec)]
    try:
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                cmd, cwd=work, env=_clean_env(work), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=err, start_new_session=True, pass_fds=(write_fd,),
            )
            os.close(write_fd)
            write_fd = -1
            try:
                proc.stdin.write((nonce + "\n" + source).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                proc.wait(timeout=limits.timeout_s)
                status = None
            except subprocess.TimeoutExpired:
                status = "timeout"
                _kill_group(proc)  # only while unreaped: its group id cannot have been reused yet
            verdict = _read_all(read_fd)
            err.seek(0)
            detail = err.read(limits.output_bytes).decode(errors="replace").strip()
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
        shutil.rmtree(work, ignore_errors=True)
    if not verdict.startswith(b"S" + nonce.encode()):
        # Nothing the program does can cause this: it had not started.
        raise SftmergeError(f"the code sandbox failed to start a program ({status or 'exit status ' + str(proc.returncode)}): "
                            f"{detail.splitlines()[-1] if detail else 'no message'}")
    if status == "timeout":
        return Outcome(False, "timeout", f"timed out after {limits.timeout_s:g}s")
    if proc.returncode == 0 and verdict == f"S{nonce}P{nonce}".encode():
        return Outcome(True, "passed", "")
    return Outcome(False, "failed", detail or f"exit status {proc.returncode}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read_all(fd: int) -> bytes:
    chunks = []
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def run_programs(sources: Iterable[str], limits: Limits = Limits(), workers: Optional[int] = None,
                 progress: Optional[str] = None, namespaces: Optional[bool] = None) -> List[Outcome]:
    """Run many programs in parallel (threads each waiting on one child process)."""
    from tqdm.auto import tqdm

    sources = list(sources)
    workers = workers or max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda s: run_program(s, limits, namespaces), sources)
        return list(tqdm(results, total=len(sources), desc=progress or "running programs",
                         disable=progress is False, leave=False))


def require_opt_in(allowed: bool, task: str) -> None:
    if not allowed:
        raise SftmergeError(
            f"task {task} executes model-written code: pass --allow-code-execution to run it in the sandbox"
        )
