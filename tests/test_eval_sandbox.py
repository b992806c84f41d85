"""The code sandbox against hostile programs, in every mode this machine offers.

Modes: "bubblewrap" (strong, with the audit hook as a second layer), "bwrap-only" (strong
with the hook off: bubblewrap alone must hold, as if the program had switched the hook
off), and "weak" (no namespaces; the audit hook is all there is). Real processes, no mocks.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import tempfile
import threading
import time

import pytest

from sftmerge.eval import sandbox_bwrap
from sftmerge.eval.sandbox import Job, Limits, run_job

FAST = Limits(timeout_s=2.0, memory_bytes=512 << 20)
STRONG_OK = sandbox_bwrap.problem() is None
_needs_bwrap = pytest.mark.skipif(not STRONG_OK, reason=f"bubblewrap unusable here: {sandbox_bwrap.problem()}")
BUBBLEWRAP = pytest.param(("bubblewrap", True), id="bubblewrap", marks=_needs_bwrap)
BWRAP_ONLY = pytest.param(("bubblewrap", False), id="bwrap-only", marks=_needs_bwrap)
WEAK = pytest.param(("weak", True), id="weak")
MODES = [BUBBLEWRAP, WEAK]
ALL_LAYERS = [BUBBLEWRAP, BWRAP_ONLY, WEAK]
PREFIX = os.path.realpath(sys.base_prefix)  # visible (read-only) inside bubblewrap: a target to try
ADD_TESTS = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(10, -4) == 6\ncheck(add)\n"


def run(program, mode, tests="", setup="", limits=FAST):
    name, hook = mode
    return run_job(Job(program, tests, setup), limits, name, audit_hook=hook)


def report(lines: str) -> str:
    """`lines` after a prelude: attempt(name, fn) runs fn and writes what happened to stderr."""
    return ("import os, sys\ndef attempt(name, fn):\n    try:\n"
            "        print(name, 'SUCCEEDED', repr(fn())[:200], file=sys.stderr)\n    except BaseException as e:\n"
            "        print(name, 'refused', type(e).__name__, file=sys.stderr)\n" + lines)


# --- ordinary programs ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_correct_solutions_pass_and_wrong_ones_fail(mode):
    add = "def add(a, b):\n    return a + b\n"
    assert run(add, mode, ADD_TESTS).passed
    out = run("def add(a, b):\n    return a * b\n", mode, ADD_TESTS)
    assert (out.passed, out.status) == (False, "failed") and "assert candidate(2, 3) == 5" in out.detail
    mbpp = "import math\nfrom collections import Counter\ndef freq(xs):\n    return Counter(xs)\n"
    tests = "assert freq([1, 1, 2]) == {1: 2, 2: 1}\nassert math.isclose(float('nan') if 0 else 1.0, 1.0)\n"
    assert run(mbpp, mode, tests).passed
    tree = "class Node:\n    def __init__(self, v, kids=()):\n        self.v, self.kids = v, kids\n" \
           "def size(n):\n    return 1 + sum(size(k) for k in n.kids)\n"
    assert run(tree, mode, "assert size(root) == 3\n", setup="root = Node(1, (Node(2), Node(3)))\n").passed
    assert run("def f():\n    raise ValueError('no')\n", mode,
               "try:\n    f()\n    assert False\nexcept ValueError:\n    pass\n").passed
    assert run("def f():\n    return [float('inf'), -0.0, 1+2j, {1}, frozenset(), b'x', None]\n", mode,
               "assert f() == [float('inf'), -0.0, 1+2j, {1}, frozenset(), b'x', None]\n").passed
    assert run("open('a.txt', 'w').write('x')\nassert open('a.txt').read() == 'x'\n", mode).passed
    assert run("import pathlib, tempfile\npathlib.Path('b.txt').write_text('y')\ntempfile.mkstemp()\n", mode).passed


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_", ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n"])
def test_exiting_early_is_not_a_pass(exit_, mode):
    assert not run("def add(a, b):\n    return 0\n" + exit_, mode, ADD_TESTS).passed
    assert not run("def add(a, b):\n    " + exit_.replace("\n", "\n    ") + "\n", mode, ADD_TESTS).passed


@pytest.mark.parametrize("mode", MODES)
def test_infinite_loop_times_out(mode):
    t0 = time.time()
    out = run("def add(a, b):\n    while True:\n        pass\n", mode, ADD_TESTS)
    assert out.status == "timeout" and time.time() - t0 < FAST.timeout_s + 5


@pytest.mark.parametrize("mode", ALL_LAYERS)
def test_huge_allocation_fails(mode):
    out = run("x = bytearray(8 * 1024**3)\n", mode)
    assert not out.passed and "MemoryError" in out.detail


@pytest.mark.parametrize("mode", ALL_LAYERS)
def test_fork_loops_are_contained(mode):
    assert not run("import os\nwhile True:\n    os.fork()\n", mode).passed
    assert not run("import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])\n", mode).passed


# --- the verdict cannot be forged ----------------------------------------------------------

_SPRAY = ("import os, sys\ndef spray(marks, targets):\n    for t in targets:\n        for mark in marks:\n"
          "            try:\n                os.write(t, mark) if type(t) is int else open(t, 'wb').write(mark)\n"
          "            except Exception:\n                pass\n")
FORGERIES = {
    "always-equal": "class Eq:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
                    "def add(a, b):\n    return Eq()\n",
    "exit-0": "def add(a, b):\n    import os\n    os._exit(0)\n",
    "system-exit": "def add(a, b):\n    raise SystemExit(0)\n",
    "builtins": "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
                "builtins.__build_class__ = None\ndef add(a, b):\n    return 0\n",
    "frames": _SPRAY + "found, f = [], sys._getframe()\nwhile f:\n"
                       "    found += [v for v in {**f.f_locals, **f.f_globals}.values() if type(v) is int]\n"
                       "    f = f.f_back\nspray([b'SRP', b'P', b'PASS\\n'], set(found) | set(range(3, 64)))\n"
                       "def add(a, b):\n    return 0\n",
    "fds": _SPRAY + "fds = set(range(64))\nfor where in ('/proc/self/fd', '/proc/1/fd', f'/proc/{os.getppid()}/fd'):\n"
                    "    try:\n        fds |= {f'{where}/{n}' for n in os.listdir(where)}\n    except Exception:\n"
                    "        pass\nspray([repr(('names', [('add', 'value', 5)])).encode() + b'\\n', b'SRP'], fds)\n"
                    "def add(a, b):\n    return 0\n",
    "fake-names": _SPRAY + "spray([repr(('names', [('check', 'value', 0)])).encode() + b'\\n'], range(3, 64))\n"
                           "os._exit(0)\n",
}


@pytest.mark.parametrize("mode", ALL_LAYERS)
@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_the_verdict_cannot_be_forged(forgery, mode):
    out = run(FORGERIES[forgery], mode, ADD_TESTS)
    assert (out.passed, out.status) == (False, "failed"), out


# --- files -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ALL_LAYERS)
def test_no_writes_or_deletes_outside_its_folder(tmp_path, mode):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    probe = f"{PREFIX}/sftmerge-probe-{secrets.token_hex(4)}"
    escape = f"sftmerge-probe-{secrets.token_hex(4)}"  # beside the weak mode's folder, if it got out
    targets = [str(tmp_path / "written.txt"), probe, f"/tmp/sftmerge-probe-{secrets.token_hex(4)}",
               os.path.join(tempfile.gettempdir(), escape)]
    src = report(
        f"targets, victim, prefix, here = {targets!r}, {str(victim)!r}, {PREFIX!r}, os.getcwd()\n"
        f"escape = {escape!r}\n"
        "for t in targets:\n"
        "    attempt('open', lambda: open(t, 'w').write('x'))\n"
        "    attempt('os.open', lambda: os.open(t, os.O_CREAT | os.O_WRONLY))\n"
        "    attempt('rename', lambda: os.rename('..', t))\n"
        "    attempt('link', lambda: os.link(victim, t))\n"
        "attempt('remove', lambda: os.remove(victim))\n"
        "attempt('rmtree', lambda: __import__('shutil').rmtree(os.path.dirname(victim)))\n"
        "for d in (os.path.dirname(victim), prefix, '/tmp', '..'):\n"  # chdir out, then relative paths
        "    attempt('chdir+write', lambda: (os.chdir(d), open(os.path.basename(targets[0]), 'w').write('x')))\n"
        "    os.chdir(here)\n"
        "    attempt('chdir+remove', lambda: (os.chdir(d), os.remove('victim.txt')))\n"
        "    os.chdir(here)\n"
        "for d in (os.path.dirname(victim), prefix, '/tmp'):\n"  # descriptors of folders outside
        "    try:\n        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)\n"
        "    except OSError as e:\n        print('dir_fd refused', e, file=sys.stderr)\n        continue\n"
        "    attempt('dir_fd-open', lambda: os.open('written.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd))\n"
        "    attempt('dir_fd-mkdir', lambda: os.mkdir('made', dir_fd=fd))\n"
        "    attempt('dir_fd-unlink', lambda: os.unlink('victim.txt', dir_fd=fd))\n"
        "    attempt('dir_fd-rename', lambda: os.rename('victim.txt', 'moved', src_dir_fd=fd, dst_dir_fd=fd))\n"
        "os.makedirs('a/b')\n"  # a descriptor of its own folder, then '..' from deeper down
        "for flags in (os.O_PATH | os.O_WRONLY, os.O_RDONLY | os.O_DIRECTORY):\n"
        "    try:\n        fd = os.open('.', flags)\n    except OSError:\n        continue\n"
        "    os.chdir('a/b')\n"
        "    attempt('own-dir_fd', lambda: os.open('../' + escape, os.O_CREAT | os.O_WRONLY, dir_fd=fd))\n"
        "    os.chdir(here)\n"
        "attempt('mkfifo', lambda: os.mkfifo(targets[0]))\n"
        "os.symlink(os.path.dirname(victim), 'out')\n"
        "attempt('via-symlink', lambda: open('out/written.txt', 'w').write('x'))\n")
    try:
        out = run(src, mode)
        assert "SUCCEEDED" not in out.detail, out.detail
        assert victim.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["victim.txt"]
        assert not any(os.path.exists(t) for t in targets[1:])
    finally:
        for t in targets[1:]:
            if os.path.exists(t):
                os.remove(t)


@pytest.mark.parametrize("mode", ALL_LAYERS)
def test_the_folder_cap_holds(mode):
    limits = Limits(timeout_s=10.0, memory_bytes=512 << 20, folder_bytes=8 << 20)
    # Many files of 64 KiB (weak mode: its cap on entries), then one growing file (the size cap).
    src = ("import os, sys\nchunk = b'x' * (64 << 10)\nerr = None\ntry:\n    for i in range(1000):\n"
           "        with open(f'f{i}', 'wb') as f:\n            f.write(chunk)\nexcept OSError as e:\n    err = e\n"
           "try:\n    os.remove('f0')\n    with open('big', 'wb') as f:\n        for i in range(1000):\n"
           "            f.write(chunk)\nexcept OSError as e:\n    err = err and e\n"
           "total = sum(os.path.getsize(n) for n in os.listdir('.'))\n"
           "print('written', total, 'stopped by', type(err).__name__, file=sys.stderr)\n")
    out = run(src, mode, limits=limits)
    words = out.detail.split()
    total = int(words[words.index("written") + 1])
    assert total <= limits.folder_bytes and words[-1] != "NoneType", out.detail


# --- secrets -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ALL_LAYERS)
def test_secrets_of_the_evaluator_are_unreachable(tmp_path, monkeypatch, mode):
    token = "hf_" + secrets.token_hex(16)
    monkeypatch.setenv("HF_TOKEN", token)
    home = tmp_path / "home"
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text(token)
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_ed25519").write_text(token)
    monkeypatch.setenv("HOME", str(home))
    files = [str(home / ".cache" / "huggingface" / "token"), str(home / ".ssh" / "id_ed25519")]
    pid = os.getpid()
    spellings = [f"/proc/{pid}/environ", f"/proc//{pid}/environ", f"/proc/./{pid}/environ", f"//proc/{pid}/environ",
                 f"/sys/../proc/{pid}/environ", f"/proc/self/../{pid}/environ", f"/dev/fd/../../{pid}/environ",
                 "/proc/1/environ", "/proc/2/environ"]
    # What it finds is printed reversed: absent from the detail means unread, not merely redacted.
    src = report(
        f"paths = {files + spellings!r}\nfound = str(dict(os.environ))\n"
        "paths += [f'/proc/{os.getppid()}/environ', f'/proc/{os.getppid()}/cwd/../../../{paths[0]}']\n"
        "for p in paths:\n"
        "    try:\n        found += open(p, 'rb').read().decode(errors='replace')\n"
        "    except Exception:\n        pass\n"
        "try:\n    os.symlink('/proc', 'p')\n    found += open(f'p/{os.getppid()}/environ').read()\n"
        "except Exception:\n    pass\n"
        f"attempt('list-home', lambda: os.listdir({str(home)!r}))\n"
        "print('found', found[::-1], found, file=sys.stderr)\nassert 'hf_' in found\n")
    out = run(src, mode)
    assert token[::-1] not in out.detail and token not in out.detail, out.detail
    assert not out.passed and "list-home refused" in out.detail


@pytest.mark.parametrize("mode", MODES)
def test_printed_secrets_are_redacted(mode):
    token = "hf_" + secrets.token_hex(16)
    out = run(f"print('HF_TOKEN={token} and', {token!r}, file=__import__('sys').stderr)\n", mode)
    assert token not in out.detail and "[redacted]" in out.detail


# --- processes, sockets, capabilities ------------------------------------------------------

@pytest.mark.parametrize("mode", ALL_LAYERS)
def test_killing_its_parent_fails_and_we_survive(mode):
    for src in ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
                f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n",
                f"import os, signal\nos.killpg({os.getpgid(0)}, signal.SIGKILL)\n",
                "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)\n",
                f"import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({os.getpid()}), signal.SIGKILL)\n"):
        run(src, mode)
    assert os.getpid() > 0  # still here


@pytest.mark.parametrize("mode", ALL_LAYERS)
def test_no_network_and_no_host_sockets(tmp_path, mode):
    servers = [socket.socket(), socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)]
    tcp, unix, abstract = servers
    tcp.bind(("127.0.0.1", 0))
    unix.bind(str(tmp_path / "agent.sock"))  # like an ssh-agent or docker.sock
    abstract.bind(f"\0sftmerge-test-{secrets.token_hex(4)}")
    accepted = []
    for s in servers:
        s.listen(1)
        s.settimeout(0.2)
    stop = threading.Event()
    thread = threading.Thread(target=_accept_all, args=(servers, accepted, stop))
    thread.start()
    try:
        src = report(
            f"targets = [('127.0.0.1', {tcp.getsockname()[1]}), {str(tmp_path / 'agent.sock')!r}, "
            f"{abstract.getsockname()!r}]\n"
            "import socket\n"
            "for t in targets:\n"
            "    fam = socket.AF_INET if isinstance(t, tuple) else socket.AF_UNIX\n"
            "    attempt('connect', lambda: socket.socket(fam).connect(t))\n")
        out = run(src, mode)
    finally:
        stop.set()
        thread.join()
        for s in servers:
            s.close()
    assert accepted == [] and "SUCCEEDED" not in out.detail, (accepted, out.detail)


def _accept_all(servers, accepted, stop):
    while not stop.is_set():
        for s in servers:
            try:
                conn, _ = s.accept()
                accepted.append(s.family)
                conn.close()
            except OSError:
                pass


@pytest.mark.parametrize("mode", ALL_LAYERS)
def test_switching_the_hook_off_then_native_code(mode):
    """The old launcher's hook could be emptied from inside; then ctypes could remount / rw."""
    probe = f"{PREFIX}/sftmerge-probe-{secrets.token_hex(4)}"
    src = report(
        "for m in list(sys.modules.values()):\n"
        "    for attr in ('BLOCKED_EVENTS', 'BLOCKED_IMPORTS', 'WEAK_BLOCKED_EVENTS', 'DEVICES', 'CHANGES'):\n"
        "        try:\n            setattr(m, attr, type(getattr(m, attr))())\n        except Exception:\n"
        "            pass\n"
        # Its frames, from the traceback of a refusal, lead to its closure's cells.
        "try:\n    open('/proc/1/environ')\nexcept Exception as e:\n    tb = e.__traceback__\n    while tb:\n"
        "        try:\n            for f in [v for v in tb.tb_frame.f_locals.values() if hasattr(v, '__closure__')]:\n"
        "                for c in f.__closure__ or ():\n                    k = type(c.cell_contents)\n"
        "                    new = {frozenset: frozenset(), str: '/', bool: False}\n"
        "                    c.cell_contents = new.get(k, c.cell_contents)\n"
        "            print('frames SUCCEEDED', file=sys.stderr)\n        except Exception as x:\n"
        "            print('frames refused', type(x).__name__, file=sys.stderr)\n        tb = tb.tb_next\n"
        # The hook must not look anything up where the program can change it.
        "import builtins, posix\nsaved = builtins.any, builtins.ImportError, builtins.PermissionError, posix.lstat\n"
        "builtins.any = lambda *a: False\nbuiltins.ImportError = builtins.PermissionError = Warning\n"
        "os.path.realpath = lambda p, **k: os.getcwd()\nposix.lstat = os.lstat = lambda *a, **k: None\n"
        "os.stat_result.__getitem__ = lambda s, i: 0\n"
        "attempt('import _ctypes', lambda: __import__('_ctypes'))\n"
        "attempt('import ctypes', lambda: __import__('ctypes'))\n"
        # The import system needs these back; the hook never looked at them.
        "builtins.any, builtins.ImportError, builtins.PermissionError, posix.lstat = saved\n"
        "os.lstat = posix.lstat\ndel os.stat_result.__getitem__\n"
        "import ctypes\nprint('ctypes loaded', file=sys.stderr)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "class Attr(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_uint64) for n in ('set', 'clr', 'prop', 'userns')]\n"
        f"for path in ('/', '/usr', {PREFIX!r}):\n"
        "    print('mount_setattr', path, libc.syscall(442, -100, path.encode(), 0x8000,\n"
        "          ctypes.byref(Attr(0, 1, 0, 0)), 32), ctypes.get_errno(), file=sys.stderr)\n"
        "    print('remount', path, libc.mount(None, path.encode(), None, 32 | 4096, None), file=sys.stderr)\n"
        "print('unshare', libc.unshare(0x10000000 | 0x20000), ctypes.get_errno(), file=sys.stderr)\n"
        f"attempt('write', lambda: open({probe!r}, 'w').write('pwned'))\n")
    try:
        out = run(src, mode)
        assert not os.path.exists(probe) and "write SUCCEEDED" not in out.detail, out.detail
        if mode == ("bubblewrap", False):  # the attack really ran, and bubblewrap held
            assert "ctypes loaded" in out.detail, out.detail
        else:
            assert "ctypes loaded" not in out.detail and "import ctypes refused" in out.detail, out.detail
            assert "frames refused" in out.detail and "frames SUCCEEDED" not in out.detail, out.detail
    finally:
        if os.path.exists(probe):
            os.remove(probe)
