"""Command lines for the code sandbox's strong mode (bubblewrap), and whether it works here.

Inside: fresh user, PID, network, IPC, UTS, cgroup and mount namespaces; user 65534 with
no capabilities (bounding set empty, no_new_privs), no further user namespaces, a seccomp
filter (sandbox_seccomp.py: no new processes, namespaces, mounts, ptrace); a root
that is an empty read-only tmpfs holding only /usr (+ the /lib, /bin links), the Python
install (site-packages hidden), the launcher files, a private /proc and a minimal /dev,
both read-only, and a size-capped tmpfs at /work. No home folder, /tmp, /run, /etc or
project folder of the host is there, nor any socket.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import IO, List, Optional

from sftmerge.eval import sandbox_seccomp

WORK = "/work"
LIB = "/sandbox"
UID = "65534"
PROBE = """
import os
status = open('/proc/self/status').read()
cap = [line.split()[1] for line in status.splitlines() if line.startswith('CapEff:')][0]
assert int(cap, 16) == 0, 'capabilities left: ' + cap
assert os.getuid() == 65534, 'uid %d' % os.getuid()
open('/work/probe', 'w').write('x')
for path in ('/probe', '/usr/probe', '/proc/sys/kernel/core_pattern', '/dev/probe'):
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT))
    except OSError:
        continue
    raise SystemExit(path + ' is writable')
import sys, threading
thread = threading.Thread(target=print)
thread.start()
thread.join()
if sys.argv[1:] == ['filtered']:
    try:
        pid = os.fork()
    except OSError:
        pass
    else:
        if pid == 0:
            os._exit(0)
        raise SystemExit('fork is allowed')
print('ok')
"""


def interpreter() -> str:
    """The base interpreter (a virtual environment's python is a link to it)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def python_trees() -> List[str]:
    """The folders the interpreter and its standard library live in."""
    trees = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    exe = interpreter()
    if not any(exe.startswith(t + "/") for t in trees | {"/usr"}):
        trees.add(os.path.dirname(exe))
    return sorted(t for t in trees if t != "/usr" and not t.startswith("/usr/"))


def read_roots() -> List[str]:
    """What a sandboxed program may read besides its own folder (the audit hook's list)."""
    return [*python_trees(), "/usr", "/lib", "/lib64", "/lib32", "/libx32"]


def _hidden() -> List[str]:
    """Installed packages of the base interpreter: not needed (-S), so not shown."""
    paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    found = {os.path.realpath(paths[k]) for k in ("purelib", "platlib")}
    return sorted(p for p in found if os.path.isdir(p))


@functools.lru_cache(maxsize=1)
def _features() -> frozenset:
    text = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=30).stdout
    return frozenset(f for f in ("--disable-userns", "--size") if f in text)


def seccomp_file() -> Optional[IO[bytes]]:
    """A file holding the filter, read from the start by one bwrap (pass its fd), or None
    where this architecture has no filter here."""
    bpf = sandbox_seccomp.program()
    if bpf is None:
        return None
    f = tempfile.TemporaryFile()
    f.write(bpf)
    f.seek(0)
    return f


def command(argv: List[str], work_bytes: int, files: List[Path], seccomp_fd: Optional[int]) -> List[str]:
    """bwrap + `argv` (run with cwd /work); `files` appear read-only under /sandbox."""
    features = _features()
    args = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user", "--uid", UID, "--gid", UID,
            *(["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []),
            *(["--disable-userns"] if "--disable-userns" in features else []),
            "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORK, "--setenv", "TMPDIR", WORK,
            "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONHASHSEED", "0",
            "--ro-bind", "/usr", "/usr"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    if os.path.isfile("/etc/ld.so.cache"):  # where the dynamic loader finds libraries; nothing private
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for tree in python_trees():
        args += ["--ro-bind", tree, tree]
    for path in _hidden():
        args += ["--tmpfs", path, "--remount-ro", path]
    for f in files:
        args += ["--ro-bind", str(f), f"{LIB}/{f.name}"]
    # Read-only /proc too: where the evaluator is root, the sandbox's user is root outside, and
    # mode bits alone would let it write root's files there (/proc/sys/kernel/core_pattern).
    args += ["--proc", "/proc", "--remount-ro", "/proc", "--dev", "/dev", "--remount-ro", "/dev", "--perms", "0700"]
    if "--size" in features:
        args += ["--size", str(work_bytes)]
    return args + ["--tmpfs", WORK, "--remount-ro", "/", "--chdir", WORK, *argv]


def caps_work_folder() -> bool:
    """Whether this bubblewrap sizes the tmpfs itself (0.7+); else the launcher counts entries."""
    return "--size" in _features()


@functools.lru_cache(maxsize=1)
def problem() -> Optional[str]:
    """None when bubblewrap confines programs here (checked once, by running one), else why not."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed"
    try:
        version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=30)
        if version.returncode != 0:
            return f"bwrap --version failed: {(version.stderr or version.stdout).strip()[:200]}"
        with seccomp_file() or tempfile.TemporaryFile() as f:
            fd = f.fileno() if sandbox_seccomp.program() else None
            argv = [interpreter(), "-I", "-S", "-B", "-c", PROBE, "filtered" if fd is not None else "unfiltered"]
            run = subprocess.run(command(argv, 1 << 20, [], fd), capture_output=True, text=True, timeout=60,
                                 env=host_env(), cwd="/", pass_fds=(fd,) if fd is not None else ())
    except (OSError, subprocess.SubprocessError) as e:
        return f"bwrap could not run: {e}"
    if run.returncode != 0 or run.stdout.strip() != "ok":
        lines = (run.stderr or run.stdout).strip().splitlines()
        return f"{version.stdout.strip()} fails here: {lines[-1][:200] if lines else f'exit status {run.returncode}'}"
    return None


def host_env() -> dict:
    """The environment of the bwrap process itself (its /proc/1/environ is visible inside)."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
