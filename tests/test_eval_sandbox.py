"""The code sandbox: reference solutions pass, hostile programs are contained and fail."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from conftest import SHARED_DATA
from sftmerge.eval.code import load_local_docs, reference_program
from sftmerge.eval.sandbox import Limits, namespaces_available, run_program, run_programs

FAST = Limits(timeout_s=2.0, memory_bytes=512 << 20)
# With namespaces where this machine has them, and without (the layers that must hold alone).
MODES = [pytest.param(None, id="auto"), pytest.param(False, id="no-namespaces")]


@pytest.mark.parametrize("namespaces", MODES)
def test_ordinary_programs(namespaces):
    assert run_program("import math\nassert math.isqrt(17) == 4\n", FAST, namespaces).passed
    # Writing inside its own folder is allowed.
    assert run_program("open('a.txt', 'w').write('x')\nassert open('a.txt').read() == 'x'\n", FAST, namespaces).passed
    failed = run_program("assert 1 == 2, 'wrong'\n", FAST, namespaces)
    assert (failed.passed, failed.status) == (False, "failed") and "wrong" in failed.detail


@pytest.mark.parametrize("namespaces", MODES)
@pytest.mark.parametrize("source", ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n"])
def test_exiting_early_is_not_a_pass(source, namespaces):
    assert not run_program(source + "assert False\n", FAST, namespaces).passed


def test_infinite_loop_times_out():
    t0 = time.time()
    out = run_program("while True:\n    pass\n", FAST)
    assert out.status == "timeout" and time.time() - t0 < FAST.timeout_s + 3


@pytest.mark.parametrize("namespaces", MODES)
def test_huge_allocation_fails(namespaces):
    out = run_program("x = bytearray(8 * 1024**3)\n", FAST, namespaces)
    assert not out.passed and "MemoryError" in out.detail


@pytest.mark.parametrize("namespaces", MODES)
def test_fork_loop_is_contained(namespaces):
    src = "import os\nwhile True:\n    os.fork()\n"
    out = run_program(src, FAST, namespaces)
    assert not out.passed
    src = "import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])\n"
    assert not run_program(src, FAST, namespaces).passed


@pytest.mark.parametrize("namespaces", MODES)
def test_writing_outside_its_folder_fails(tmp_path, namespaces):
    target = tmp_path / "written-by-program.txt"
    for src in (f"open({str(target)!r}, 'w').write('x')\n",
                f"import os\nfd = os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)\n",
                f"import os\nos.rename('..', {str(target)!r})\n",
                f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n"):
        assert not run_program(src, FAST, namespaces).passed, src
    assert not target.exists() and tmp_path.is_dir()


@pytest.mark.parametrize("namespaces", MODES)
def test_killing_its_parent_fails_and_we_survive(namespaces):
    for src in ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
                f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n",
                f"import os, signal\nos.killpg({os.getpgid(0)}, signal.SIGKILL)\n"):
        assert not run_program(src, FAST, namespaces).passed
    assert os.getpid() > 0  # still here


@pytest.mark.parametrize("namespaces", MODES)
def test_environment_secrets_are_unreachable(monkeypatch, namespaces):
    monkeypatch.setenv("SFTMERGE_TEST_SECRET", "hunter2")
    src = (
        "import os\n"
        "found = 'hunter2' in str(dict(os.environ))\n"
        "for pid in (os.getppid(), %d):\n"
        "    try:\n"
        "        found = found or 'hunter2' in open(f'/proc/{pid}/environ').read()\n"
        "    except OSError:\n"
        "        pass\n"
        "assert found\n" % os.getpid()
    )
    assert not run_program(src, FAST, namespaces).passed


@pytest.mark.parametrize("namespaces", MODES)
def test_network_is_unreachable(namespaces):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    server.settimeout(FAST.timeout_s + 1)
    thread = threading.Thread(target=lambda: accepted.append(_accept(server)))
    thread.start()
    src = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n"
    out = run_program(src, FAST, namespaces)
    thread.join()
    server.close()
    assert not out.passed and accepted == [None]


def _accept(server):
    try:
        conn, _ = server.accept()
        conn.close()
        return "connected"
    except OSError:
        return None


def test_namespaces_detected_here_or_reported():
    from sftmerge.eval.sandbox import isolation_description

    assert ("namespaces with read-only filesystem" in isolation_description()) == namespaces_available()


def test_humaneval_reference_solutions_all_pass():
    docs = load_local_docs("humaneval", SHARED_DATA)
    outcomes = run_programs([reference_program("humaneval", d) for d in docs], Limits(timeout_s=10), progress=False)
    assert len(docs) == 164
    assert sum(o.passed for o in outcomes) == 164, [d["task_id"] for d, o in zip(docs, outcomes) if not o.passed]


def test_mbpp_reference_solutions_pass():
    docs = load_local_docs("mbpp", SHARED_DATA)
    outcomes = run_programs([reference_program("mbpp", d) for d in docs], Limits(timeout_s=5), progress=False)
    failed = [d["task_id"] for d, o in zip(docs, outcomes) if not o.passed]
    print(f"MBPP test split: {len(docs) - len(failed)}/{len(docs)} reference solutions pass; failing: {failed}")
    assert len(docs) == 500
    # Task 123 (amicable numbers below 9999) needs more than 5 s; all others pass.
    assert set(failed) <= {123}


@pytest.mark.skipif(not namespaces_available(), reason="needs user namespaces (unshare)")
def test_filling_the_disk_is_capped():
    src = "chunk = b'x' * (1 << 20)\nfor i in range(200):\n    open(f'f{i}', 'wb').write(chunk)\n"
    out = run_program(src, FAST)
    assert not out.passed and "No space left" in out.detail


@pytest.mark.parametrize("namespaces", MODES)
def test_a_sandbox_that_cannot_start_is_an_error_not_a_failed_program(monkeypatch, tmp_path, namespaces):
    from sftmerge.errors import SftmergeError
    from sftmerge.eval import sandbox

    monkeypatch.setattr(sandbox, "LAUNCHER", tmp_path / "missing_launcher.py")
    with pytest.raises(SftmergeError, match="sandbox failed to start"):
        run_program("pass\n", FAST, namespaces)
