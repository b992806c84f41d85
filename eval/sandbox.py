"""Run model-written Python programs against their tests so that nothing they do can harm
the evaluation or forge its verdict. What is isolated, and how: docs/security.md.

Each job is two processes (eval/_sandbox_launcher.py): the program's, which runs the
model-written code and answers calls of its functions, and the tests', which runs the
data set's tests against stand-ins for those functions. Only values that read back as
literals cross between them. The verdict is read from a pipe only the tests' process
holds, after it ends: the program has no channel to it at all.

Modes:
- "bubblewrap" (strong): both processes in bubblewrap (sandbox_bwrap.py) with a seccomp
  filter (sandbox_seccomp.py), rlimits and an audit hook as a second layer. Confinement
  holds whatever the program does, native code included.
- "weak": no namespaces; rlimits, a clean environment and the audit hook (which then also
  confines file access) are all there is. Used only when the user accepts it explicitly.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional

from sftmerge.errors import SftmergeError
from sftmerge.eval import sandbox_wire as wire
from sftmerge.eval import sandbox_bwrap, sandbox_seccomp
from sftmerge.eval.sandbox_redact import cut, redact

STRONG, WEAK = "bubblewrap", "weak"
MODES = (STRONG, WEAK)
HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "_sandbox_launcher.py"
CHILD_FILES = ("sandbox_wire.py", "_sandbox_hook.py")
START_TIMEOUT_S = 60.0  # both processes up; not counted in the program's own time
WEAK_ENTRIES = 64  # files and folders in the working folder where no tmpfs caps it


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    folder_bytes: int = 64 << 20  # all files together
    output_bytes: int = 4096  # of each process's stderr, kept (redacted) for the samples file


@dataclass(frozen=True)
class Job:
    program: str  # model-written code (HumanEval: prompt + completion); runs in the program's process
    tests: str  # the data set's tests; runs in the tests' process, which never runs model code
    setup: str = ""  # data set code that builds test inputs next to the program (MBPP test_setup_code)


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout
    detail: str


def resolve_mode(allow_weak: bool) -> str:
    """The strongest mode that works here; weak only if the user accepted it."""
    problem = sandbox_bwrap.problem()
    if problem is None:
        return STRONG
    if allow_weak:
        return WEAK
    raise SftmergeError(f"the code sandbox needs bubblewrap ({problem}): install it (apt-get install bubblewrap) "
                        "or pass --allow-weak-sandbox to accept the weaker sandbox (see docs/security.md)")


def require_opt_in(allowed: bool, task: str, allow_weak: bool = False) -> str:
    """Checked before any model is loaded; returns the mode the task's programs will run in."""
    if not allowed:
        raise SftmergeError(
            f"task {task} executes model-written code: pass --allow-code-execution to run it in the sandbox"
        )
    return resolve_mode(allow_weak)


def isolation_description(mode: str) -> str:
    """One line for result files saying which protections were in force."""
    common = "separate processes for program and tests (literals only between them), rlimits, clean env, audit hook"
    if mode == STRONG:
        cap = "size-capped tmpfs" if sandbox_bwrap.caps_work_folder() else f"tmpfs, {WEAK_ENTRIES} entries"
        seccomp = "seccomp (no new processes, namespaces, mounts, ptrace)"
        seccomp = seccomp if sandbox_seccomp.program() else "no seccomp"
        return (f"bubblewrap: user/pid/net/ipc/uts/mount namespaces, no capabilities, {seccomp}, read-only /usr and "
                f"Python install only (no home, /tmp, /run, sockets), {cap} work folder; " + common)
    return ("weak (no namespaces, accepted with --allow-weak-sandbox): " + common +
            f" that also limits files to its folder ({WEAK_ENTRIES} entries) and read-only system trees")


def run_job(job: Job, limits: Limits = Limits(), mode: Optional[str] = None, audit_hook: bool = True) -> Outcome:
    """Run one job; passed only if the tests ran to their end within the limits.

    `mode`: None takes bubblewrap (an error where it does not work). `audit_hook=False`
    (tests of the outer layer only) leaves bubblewrap alone to hold the program.
    """
    mode = mode or resolve_mode(False)
    if mode not in MODES:
        raise SftmergeError(f"unknown sandbox mode {mode!r} (known: {', '.join(MODES)})")
    if mode == WEAK and not audit_hook:
        raise SftmergeError("the weak sandbox has nothing but its audit hook: it cannot run without it")
    if mode == STRONG and sandbox_bwrap.problem():
        raise SftmergeError(f"the bubblewrap sandbox does not work here: {sandbox_bwrap.problem()}")
    with ExitStack() as stack:
        fds: List[int] = []
        stack.callback(lambda: [os.close(fd) for fd in fds if fd >= 0])

        def pipe():
            fds.extend(os.pipe())
            return fds[-2], fds[-1]

        calls_r, calls_w = pipe()  # tests -> program
        replies_r, replies_w = pipe()  # program -> tests
        verdict_r, verdict_w = pipe()  # tests -> us
        errs = [stack.enter_context(tempfile.TemporaryFile()) for _ in range(2)]
        procs = []
        stack.callback(lambda: [_kill(p) for p in procs])
        for role, source, child_fds, err in (
            ("program", wire.encode((job.program, job.setup)), {"recv_fd": calls_r, "send_fd": replies_w}, errs[0]),
            ("tests", job.tests.encode(), {"recv_fd": replies_r, "send_fd": calls_w, "verdict_fd": verdict_w}, errs[1]),
        ):
            procs.append(_start(stack, role, source, child_fds, err, limits, mode, audit_hook))
        for i, fd in enumerate(fds):
            if fd != verdict_r:
                os.close(fd)
                fds[i] = -1
        verdict, status = _wait(procs[1], verdict_r, limits)
        for p in procs:
            _kill(p)
        details = [_kept(err, limits.output_bytes) for err in errs]
    # Nothing a program does can cause these: its code had not started.
    if not verdict.startswith(b"S") or (b"R" not in verdict and b"X" not in verdict and status != "timeout"):
        raise _start_error("tests", procs[1], details[1], status)
    if b"R" not in verdict:
        raise _start_error("program", procs[0], details[0], status)
    if status == "timeout":
        return Outcome(False, "timeout", f"timed out after {limits.timeout_s:g}s")
    detail = "\n".join(d for d in details if d)
    if verdict == b"SRP" and procs[1].returncode == 0:
        return Outcome(True, "passed", detail)
    return Outcome(False, "failed", detail or f"exit status {procs[1].returncode}")


def _start(stack, role, source, child_fds, err, limits, mode, audit_hook) -> subprocess.Popen:
    weak_cap = mode == WEAK or not sandbox_bwrap.caps_work_folder()
    # Without a sized tmpfs the folder holds at most WEAK_ENTRIES files of file_bytes each.
    file_bytes = min(limits.file_bytes, limits.folder_bytes // WEAK_ENTRIES) if weak_cap else limits.file_bytes
    spec = {"role": role, **child_fds, "memory_bytes": limits.memory_bytes, "cpu_seconds": int(limits.timeout_s) + 1,
            "file_bytes": file_bytes, "max_entries": WEAK_ENTRIES if weak_cap else 0, "weak": mode == WEAK,
            "audit_hook": audit_hook,
            "read_roots": sandbox_bwrap.read_roots() + ([sandbox_bwrap.LIB] if mode == STRONG else [])}
    stdin = stack.enter_context(tempfile.TemporaryFile())
    stdin.write(source)
    stdin.seek(0)
    python = [sandbox_bwrap.interpreter(), "-I", "-S", "-B"]
    pass_fds = tuple(child_fds.values())
    if mode == STRONG:
        launcher = f"{sandbox_bwrap.LIB}/{LAUNCHER.name}"
        files = [LAUNCHER, *(HERE / f for f in CHILD_FILES)]
        seccomp = sandbox_bwrap.seccomp_file()
        seccomp_fd = None
        if seccomp is not None:
            seccomp_fd = stack.enter_context(seccomp).fileno()
            pass_fds += (seccomp_fd,)
        cmd = sandbox_bwrap.command([*python, launcher, repr(spec)], limits.folder_bytes, files, seccomp_fd)
        cwd, env = "/", sandbox_bwrap.host_env()
    else:
        work = tempfile.mkdtemp(prefix="sftmerge-sandbox-")
        stack.callback(shutil.rmtree, work, True)
        cmd, cwd = [*python, str(LAUNCHER), repr(spec)], work
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err,
                            start_new_session=True, pass_fds=pass_fds)


def _wait(tests: subprocess.Popen, fd: int, limits: Limits):
    """(verdict bytes, None | "timeout"); the program's clock starts once both processes are up."""
    got, deadline = b"", time.monotonic() + START_TIMEOUT_S
    while b"R" not in got and b"X" not in got:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 64) if ready else b""
        if not chunk:
            return got, ("timeout" if not ready else None)
        got += chunk
    try:
        tests.wait(timeout=limits.timeout_s)
        status = None
    except subprocess.TimeoutExpired:
        status = "timeout"
        _kill(tests)
    while select.select([fd], [], [], 5.0)[0]:  # the writer has ended: the rest is there or EOF
        chunk = os.read(fd, 64)
        if not chunk:
            break
        got += chunk
    return got, status


def _kill(proc: subprocess.Popen) -> None:
    if proc.returncode is None:  # unreaped: its group id cannot have been reused yet
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _kept(err, limit: int) -> str:
    err.seek(0)
    data = err.read(limit + 1)
    return redact(cut(data[:limit].decode(errors="replace"), limit, len(data) > limit).strip())


def _start_error(role: str, proc: subprocess.Popen, detail: str, status) -> SftmergeError:
    lines = detail.splitlines()
    why = "no answer" if status == "timeout" else f"exit status {proc.returncode}"
    return SftmergeError(f"the code sandbox failed to start the {role} process ({why}): "
                         f"{lines[-1] if lines else 'no message'}")


def run_jobs(jobs: Iterable[Job], limits: Limits = Limits(), workers: Optional[int] = None,
             progress=None, mode: Optional[str] = None) -> List[Outcome]:
    """Run many jobs in parallel (threads each waiting on its processes; setting up
    namespaces is mostly waiting, so twice as many as there are cores by default)."""
    from tqdm.auto import tqdm

    jobs = list(jobs)
    mode = mode or resolve_mode(False)
    workers = workers or 2 * (os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda j: run_job(j, limits, mode), jobs)
        return list(tqdm(results, total=len(jobs), desc=progress or "running programs",
                         disable=progress is False, leave=False))
