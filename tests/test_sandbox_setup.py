"""How the sandbox is set up: bubblewrap leaves no capability and none of the host's private
folders, and a sandbox that cannot start stops the evaluation instead of scoring a failure."""

from __future__ import annotations

import os

import pytest

from sftmerge.errors import SftmergeError
from sftmerge.eval import sandbox, sandbox_bwrap
from sftmerge.eval.sandbox import Job, Limits, run_job

FAST = Limits(timeout_s=5.0, memory_bytes=512 << 20)
STRONG_OK = sandbox_bwrap.problem() is None


@pytest.mark.skipif(not STRONG_OK, reason=f"bubblewrap unusable here: {sandbox_bwrap.problem()}")
def test_bubblewrap_drops_every_capability_and_hides_the_host():
    src = ("import os\nstatus = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
           "caps = {k: int(v, 16) for k, v in status.items() if k.startswith('Cap')}\n"
           "no_new_privs, seccomp = int(status['NoNewPrivs']), int(status['Seccomp'])\nuid = os.getuid()\n"
           "root_dir = sorted(os.listdir('/'))\n"
           f"home = os.path.exists({os.path.expanduser('~') + '/.cache'!r})\n")
    tests = ("assert caps == {'CapInh': 0, 'CapPrm': 0, 'CapEff': 0, 'CapBnd': 0, 'CapAmb': 0}, caps\n"
             "assert no_new_privs == 1 and uid == 65534 and seccomp == 2\n"
             "assert not home and not {'tmp', 'run', 'home', 'var', 'mnt'} & set(root_dir), root_dir\n")
    out = run_job(Job(src, tests), FAST, "bubblewrap", audit_hook=False)
    assert out.passed, out.detail


def test_a_sandbox_that_cannot_start_is_an_error_not_a_failed_program(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "LAUNCHER", tmp_path / "missing_launcher.py")
    for mode in ("weak", *(["bubblewrap"] if STRONG_OK else [])):
        with pytest.raises(SftmergeError, match="sandbox failed to start"):
            run_job(Job("pass\n", ""), FAST, mode)



def test_the_mode_is_chosen_before_anything_runs_and_recorded():
    with pytest.raises(SftmergeError, match="pass --allow-code-execution"):
        sandbox.require_opt_in(False, "mbpp", allow_weak=True)
    if STRONG_OK:  # bubblewrap works: the weak sandbox is never chosen, flag or not
        assert sandbox.require_opt_in(True, "mbpp") == sandbox.require_opt_in(True, "mbpp", True) == "bubblewrap"
        assert "bubblewrap" in sandbox.isolation_description("bubblewrap")
    assert sandbox.isolation_description("weak").startswith("weak")
    with pytest.raises(SftmergeError, match="unknown sandbox mode"):
        run_job(Job("pass\n", ""), FAST, "docker")
    with pytest.raises(SftmergeError, match="nothing but its audit hook"):
        run_job(Job("pass\n", ""), FAST, "weak", audit_hook=False)


@pytest.mark.skipif(not STRONG_OK, reason=f"bubblewrap unusable here: {sandbox_bwrap.problem()}")
def test_nothing_but_its_folder_and_devices_is_writable_inside_bubblewrap():
    """Where the evaluator is root the sandbox's user is root outside (without capabilities):
    mode bits would let it write root's files, /proc/sys/kernel/core_pattern among them."""
    src = ("import os\nwritable = []\nfor root, dirs, files in os.walk('/'):\n"
           "    dirs[:] = [d for d in dirs if os.path.join(root, d) != '/work']\n"
           "    for p in [os.path.join(root, n) for n in dirs + files]:\n"
           "        if not os.path.islink(p) and os.access(p, os.W_OK):\n            writable.append(p)\n"
           "for p in ('/proc/sys/kernel/core_pattern', '/proc/self/mem', '/proc/1/mem'):\n    try:\n"
           "        os.close(os.open(p, os.O_WRONLY))\n        writable.append(p)\n    except OSError:\n        pass\n")
    tests = ("allowed = {'/dev/pts', '/dev/pts/ptmx', '/dev/tty', '/dev/null', '/dev/zero', '/dev/full', "
             "'/dev/random', '/dev/urandom'}\nassert set(writable) <= allowed, sorted(set(writable) - allowed)\n")
    out = run_job(Job(src, tests), Limits(timeout_s=60), "bubblewrap", audit_hook=False)
    assert out.passed, out.detail
