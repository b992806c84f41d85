"""The audit hook of the code sandbox's launcher, and the interpreter hardening before it.

Under bubblewrap the hook is a second layer; in weak mode (no namespaces) it is the main
one, so it also keeps file access inside the working folder and a few read-only trees.
Its rules and every function it calls are captured in a closure when it is made: nothing
the program can reach (module globals, `builtins`, `os`, `os.stat_result`) changes its
decisions, and an installed hook cannot be removed. Imports only the standard library.
"""

import gc
import posix
import sys

BLOCKED_EVENTS = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "os.kill", "os.killpg", "signal.pthread_kill", "os.startfile", "os.add_dll_directory",
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "socket.gethostbyname", "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata",
    "ctypes.cdata/buffer", "ctypes.call_function", "ctypes.addressof", "ctypes.string_at", "ctypes.wstring_at",
    "sys.setprofile", "sys.settrace", "sys.addaudithook", "resource.setrlimit", "resource.prlimit",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "fcntl.ioctl", "cpython.PyInterpreterState_New",
    "sys.monitoring.register_callback",  # 3.12+: its callbacks would run inside the hook too
    "sys.remote_exec",  # 3.14+
})
# Crafted bytecode can corrupt the interpreter; only weak mode has nothing behind the hook.
WEAK_BLOCKED_EVENTS = frozenset({"marshal.loads", "marshal.load", "code.__new__"})
BLOCKED_IMPORTS = frozenset({
    "ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing", "_posixshmem",
    "socket", "_socket", "ssl", "_ssl", "_xxsubinterpreters", "_xxinterpchannels", "_xxinterpqueues",
    "_interpreters", "_interpchannels", "_interpqueues",
})
DEVICES = frozenset({"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"})
# (path argument, its dir_fd argument) of each event that changes the filesystem
CHANGES = {
    "os.mkdir": ((0, 2),), "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.rename": ((0, 2), (1, 3)),
    "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),), "os.truncate": ((0, None),), "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.chflags": ((0, None),), "os.lchflags": ((0, None),),
    "os.setxattr": ((0, None),), "os.removexattr": ((0, None),), "shutil.rmtree": ((0, 1),),
}
# Unaudited calls that reach other processes, change identity or escape the folder;
# weak mode replaces them by a function that refuses (importing their modules still works).
WEAK_REFUSED = {
    "posix": ("pidfd_open", "chroot", "mknod", "mkfifo", "unshare", "setns", "setuid", "seteuid", "setreuid",
              "setresuid", "setgid", "setegid", "setregid", "setresgid", "setgroups", "initgroups"),
    "_signal": ("pidfd_send_signal", "signal", "setitimer", "alarm"),  # no handler can run inside the hook
    "_thread": ("start_new_thread", "start_new", "start_joinable_thread"),  # no thread can race a check
}
COPIES = {"posix": "os", "_signal": "signal", "_thread": "threading"}


def _refused(*args, **kwargs):
    raise PermissionError("sandbox: not allowed in the weak sandbox")


def harden_weak():
    """Before the hook, weak mode only: replace unaudited dangers for good.

    Every built-in module is loaded now and `_imp.create_builtin` deleted, so no fresh
    copy of `posix`, `_signal` or `_thread` with the original functions can be made.
    """
    import _imp

    for name in sys.builtin_module_names:
        __import__(name)
    for module, names in WEAK_REFUSED.items():
        holders = [sys.modules[module]] + ([sys.modules[COPIES[module]]] if COPIES[module] in sys.modules else [])
        for holder in holders:
            for name in names:
                if hasattr(holder, name):
                    setattr(holder, name, _refused)
    del _imp.create_builtin
    sys.pycache_prefix = "/nonexistent-sftmerge-pycache"  # imports compile from source: no marshal needed


def make_hook(work, read_roots, weak, max_entries, untrusted):
    """The audit hook; `work` and `read_roots` are resolved absolute paths.

    Its frames end up in the tracebacks of what it refuses, and a frame's locals lead to
    the closure (whose cells can be reassigned): in a process that runs model code
    (`untrusted`), no frame of a traceback can be read.
    No code of the program's may run while it runs (so neither may a __hash__ or __eq__
    of an argument): it looks only at objects of exact built-in types.
    """
    _type, _str, _bytes, _int, _tuple, _any, _tuple_item = type, str, bytes, int, tuple, any, tuple.__getitem__
    _decode = bytes.decode
    _lstat, _readlink, _getcwd, _listdir = posix.lstat, posix.readlink, posix.getcwd, posix.listdir
    _gc_enabled, _gc_disable, _gc_enable = gc.isenabled, gc.disable, gc.enable
    _OSError, _PermissionError, _ImportError = OSError, PermissionError, ImportError
    blocked = BLOCKED_EVENTS | (WEAK_BLOCKED_EVENTS if weak else frozenset())
    guard_frames = untrusted
    builtin_names, blocked_imports, devices = frozenset(sys.builtin_module_names), BLOCKED_IMPORTS, DEVICES
    changes = dict(CHANGES)
    inside = work + "/"
    roots = tuple(r.rstrip("/") + "/" for r in read_roots)
    write_flags = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND

    def kind(path):  # file type bits, or None if it does not exist
        try:
            return _tuple_item(_lstat(path), 0) & 0o170000  # the tuple slot: stat_result's methods can be patched
        except _OSError:
            return None

    def resolve(path, base):
        pending = (path if path.startswith("/") else base + "/" + path).split("/")[::-1]
        out, links = [], 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if out:
                    out.pop()
                continue
            here = "/" + "/".join(out + [part])
            if kind(here) == 0o120000:
                links += 1
                if links > 40:
                    raise _PermissionError("sandbox: too many symbolic links")
                target = _readlink(here)
                if target.startswith("/"):
                    out = []
                pending.extend(target.split("/")[::-1])
                continue
            out.append(part)
        return "/" + "/".join(out)

    def target(path, dir_fd=None):
        """The resolved path an operation reaches, or None where it cannot be known."""
        t = _type(path)
        if t is _bytes:
            path, t = _decode(path, "utf-8", "surrogateescape"), _str
        if t is _int:
            try:
                where = _readlink("/proc/self/fd/" + _str(path))
            except _OSError:
                return None
            return where if where.startswith("/") else None
        if t is not _str:
            return None  # (the interpreter turns PathLike objects into str before auditing)
        base = _getcwd()
        if _type(dir_fd) is _int and dir_fd >= 0:
            base = target(dir_fd)
            if base is None:
                return None
        return resolve(path, base)

    def in_work(full):
        return full is not None and (full == work or full.startswith(inside))

    def readable(full):
        if full is None:
            return False
        if in_work(full):
            return not weak or kind(full) != 0o040000 and kind(full) not in (0o020000, 0o060000)
        if full in devices:
            return True
        if not full.startswith(roots):
            return False
        return not weak or kind(full) in (0o100000, None)  # no directory fd (dir_fd) outside the folder

    def entries(limit):
        count, todo = 0, [work]
        while todo and count <= limit:
            folder = todo.pop()
            for name in _listdir(folder):
                count += 1
                if kind(folder + "/" + name) == 0o040000:
                    todo.append(folder + "/" + name)
        return count

    def refuse(event, what):
        shown = what if _type(what) is _str or _type(what) is _bytes else ""
        raise _PermissionError(f"sandbox: {event} {shown} is not allowed")

    def check(event, args):
        if event in blocked:
            refuse(event, "")
        if event == "object.__getattr__":
            if guard_frames and _type(args[1]) is _str and args[1] == "tb_frame":
                refuse("reading", "a traceback's frame")
        elif event == "import":
            name, filename = args[0], args[1]
            if _type(name) is _str:
                for part in name.split("."):
                    if part in blocked_imports or part.startswith(("_test", "_xx")):
                        raise _ImportError(f"sandbox: import of {name} is not allowed")
                if weak and name in builtin_names:  # all loaded already: this would make a fresh copy
                    raise _ImportError(f"sandbox: import of {name} again is not allowed")
            if filename is not None:  # native code: only the interpreter's own extension modules
                full = target(filename)
                if full is None or in_work(full) or not full.startswith(roots):
                    raise _ImportError(f"sandbox: native module {name} from {filename} is not allowed")
        elif event == "open":
            path, mode, flags = args
            if _type(path) is _int:
                return  # an open descriptor: its opening was checked
            writing = ((_type(mode) is _str and _any(c in mode for c in "wax+"))
                       or _type(flags) is _int and flags & write_flags)
            full = target(path)
            if full is None and not weak:
                return  # not a path this layer can check: under bubblewrap the kernel decides
            if writing:
                # weak: files and fifos only, so no directory descriptor exists (dir_fd is not audited)
                if not in_work(full) or weak and kind(full) not in (0o100000, 0o010000, None):
                    refuse("writing", path)
                if weak and kind(full) is None and entries(max_entries) >= max_entries:
                    raise _OSError(28, f"sandbox: the working folder holds {max_entries} entries already")
            elif not readable(full):
                refuse("reading", path)
        elif event in ("os.listdir", "os.scandir"):
            if args and _type(args[0]) is not _int and not readable_dir(args[0]):
                refuse("listing", args[0])
        elif event == "os.chdir":
            full = target(args[0])
            if not in_work(full) and (weak or full is not None):
                refuse("changing to", args[0])
        elif event in changes:
            for index, fd_index in changes[event]:
                full = target(args[index], None if fd_index is None else args[fd_index])
                if not in_work(full) and (weak or full is not None):
                    refuse(event, args[index])
            if weak and event in ("os.mkdir", "os.link", "os.symlink") and entries(max_entries) >= max_entries:
                raise _OSError(28, f"sandbox: the working folder holds {max_entries} entries already")

    def readable_dir(path):
        full = target(path if path is not None else ".")
        return full is not None and (in_work(full) or full.startswith(roots) or full + "/" in roots)

    def hook(event, args):
        if _type(event) is not _str or _type(args) is not _tuple:
            return  # a call of sys.audit by the program itself, with objects of its own
        was_enabled = _gc_enabled()
        _gc_disable()  # no finalizer of the program's may run between our check and the call
        try:
            check(event, args)
        finally:
            if was_enabled:
                _gc_enable()

    return hook
