"""Child side of the code sandbox: confine this process, then run one untrusted program.

Runs as `python -I -S -B _sandbox_launcher.py LIMITS_JSON` with the program's empty
working folder as cwd, the program source on stdin, and a pipe for the verdict. It imports nothing from the project (isolated mode, no site-packages).

Order matters: operating-system limits first (they hold whatever the program does),
then the Python audit hook (it cannot be removed once installed), then the program.
The verdict pipe (fd named in LIMITS) gets "S"+nonce when the program starts and
"P"+nonce only after it returned normally, so `os._exit(0)` or a stray exit code
never counts as a pass, and a sandbox that failed to start is told from a failed program.
"""

import json
import os
import resource
import sys

LIMITS = json.loads(sys.argv[1])
WORK = os.path.realpath(os.getcwd())


# --- 1. namespaces (only when the parent started us inside fresh ones) -------------------

def _read_only_filesystem_except_work():
    """Whole mount tree read-only, the working folder (a fresh tmpfs) writable.

    mount_setattr(2) flips only the read-only bit, recursively, so the other
    (possibly locked) mount flags need not be known.
    """
    import ctypes

    class _MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    libc = ctypes.CDLL(None, use_errno=True)
    sys_mount_setattr, at_fdcwd, at_recursive, rdonly = 442, -100, 0x8000, 1
    # A size-capped tmpfs over the working folder: a disk quota, gone with the namespace.
    if libc.mount(b"tmpfs", WORK.encode(), b"tmpfs", 0, f"size={LIMITS['folder_bytes']},mode=700".encode()) != 0:
        raise OSError(ctypes.get_errno(), "tmpfs on the working folder")
    for path, set_, clr, flags in (("/", rdonly, 0, at_recursive), (WORK, 0, rdonly, 0)):
        attr = _MountAttr(set_, clr, 0, 0)
        if libc.syscall(sys_mount_setattr, at_fdcwd, path.encode(), flags,
                        ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
            raise OSError(ctypes.get_errno(), f"mount_setattr {path}")
    os.chdir(WORK)  # the old cwd still points into the folder underneath the new mount


if LIMITS["mount_namespace"]:
    _read_only_filesystem_except_work()
    # Forget ctypes so the program's own `import ctypes` meets the audit hook.
    for _name in [m for m in sys.modules if m.split(".")[0] in ("ctypes", "_ctypes")]:
        del sys.modules[_name]


# --- 2. resource limits ------------------------------------------------------------------

def _limit(kind, value):
    resource.setrlimit(kind, (value, value))


_limit(resource.RLIMIT_AS, LIMITS["memory_bytes"])
_limit(resource.RLIMIT_CPU, LIMITS["cpu_seconds"])
_limit(resource.RLIMIT_FSIZE, LIMITS["file_bytes"])
_limit(resource.RLIMIT_NOFILE, 64)
_limit(resource.RLIMIT_CORE, 0)
# Counted per real user across the machine: 1 means "no new processes at all" for a
# normal user. (Root is exempt in the kernel; the audit hook below covers that case.)
_limit(resource.RLIMIT_NPROC, 1)


def _read_job():
    nonce = sys.stdin.readline().strip()
    source = sys.stdin.read()
    sys.stdin.close()
    os.close(0)
    return nonce, source


# --- 3. audit hook: no processes, signals, sockets, native code, writes outside WORK -----

_ALWAYS_BLOCKED = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill",
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
    "sys.setprofile", "sys.settrace", "sys.addaudithook", "resource.setrlimit", "resource.prlimit",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
}
_BLOCKED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing", "socket", "_socket"}
_PATH_EVENTS = {
    "os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.symlink", "os.link", "os.truncate",
    "os.chmod", "os.chown", "os.utime", "shutil.rmtree", "os.chflags", "os.lchflags",
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_realpath = os.path.realpath
_join = os.path.join
_inside = WORK + os.sep


def _is_inside(path):
    if isinstance(path, int):
        return True  # an already open descriptor: its opening was checked
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    full = _realpath(_join(WORK, os.fspath(path)))
    return full == WORK or full.startswith(_inside)


def _audit(event, args):
    if event in _ALWAYS_BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0].split(".")[0] in _BLOCKED_IMPORTS:
        raise ImportError(f"sandbox: import of {args[0]} is not allowed")
    if event == "open":
        path, mode, flags = args
        if isinstance(path, (str, bytes)):
            text = path.decode(errors="replace") if isinstance(path, bytes) else path
            if text.startswith("/proc") or text.startswith("/sys"):
                raise PermissionError(f"sandbox: reading {text} is not allowed")
        writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (flags or 0) & _WRITE_FLAGS
        if writing and not _is_inside(path):
            raise PermissionError(f"sandbox: writing outside the working folder ({path})")
    elif event in _PATH_EVENTS:
        paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        if not all(_is_inside(p) for p in paths):
            raise PermissionError(f"sandbox: {event} outside the working folder")


sys.addaudithook(_audit)


# --- 4. the program ----------------------------------------------------------------------

def _main(nonce, source):
    # The nonce lives only in this frame, which the program cannot reach through gc.
    # "S": confinement is complete and the program starts (its absence means the
    # sandbox itself failed, which the parent reports instead of scoring a failure).
    os.write(LIMITS["verdict_fd"], b"S" + nonce.encode())
    try:
        exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as e:  # SystemExit and KeyboardInterrupt included: not a pass
        print(f"{type(e).__name__}: {e}"[:2000], file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)
    os.write(LIMITS["verdict_fd"], b"P" + nonce.encode())
    os._exit(0)


_main(*_read_job())
