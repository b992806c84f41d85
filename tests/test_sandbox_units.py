"""The code sandbox's parts that need no sandbox: the message format, redaction, the choice
of mode (in real processes whose PATH has no bubblewrap) and the seccomp filter's shape."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from sftmerge.eval import sandbox_seccomp
from sftmerge.eval.sandbox_redact import cut, redact
from sftmerge.eval.sandbox_wire import decode, encode, is_plain, read_message, to_plain

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("value", [
    1, -0.0, 10 ** 100, 1 + 2j, -1 - 2j, "x\n'\"", b"\x00\xff", None, True, [], (), {}, set(), frozenset({1, (2,)}),
    {"a": [1, (2, {3})], (1, 2): None}, [float("inf"), -float("inf")],
])
def test_literals_travel_unchanged(value):
    assert is_plain(value)
    back = decode(encode(value))
    assert back == value and type(back) is type(value)


def test_nan_travels():
    assert math.isnan(decode(encode(float("nan"))))


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch /tmp/x')", "open('/etc/passwd')", "x", "(lambda: 1)()", "[1][0]", "1 + 1",
    "().__class__", "{**{}}", "f'{1}'", "set([1])", "frozenset(1, 2)", "{[]: 1}", "[" * 10000 + "]" * 10000, "...",
])
def test_anything_but_a_literal_is_refused(text):
    with pytest.raises(ValueError):
        decode(text)


def test_objects_with_behaviour_are_not_plain():
    class Eq(int):
        def __eq__(self, other):
            return True

    from collections import Counter, OrderedDict, defaultdict, namedtuple

    assert not is_plain(Eq(1)) and not is_plain([lambda: 1]) and not is_plain(range(3))
    point = namedtuple("point", "x y")
    converted = to_plain([Counter("aab"), OrderedDict(a=1), defaultdict(int, b=2), point(1, 2)])
    assert converted == [{"a": 2, "b": 1}, {"a": 1}, {"b": 2}, (1, 2)] and is_plain(converted)


def test_long_messages_are_refused(tmp_path):
    with pytest.raises(ValueError):
        encode("x" * (5 << 20))
    path = tmp_path / "m"
    path.write_bytes(b"[" + b"1," * (3 << 20))  # no end of line: cut off
    with open(path, "rb") as f, pytest.raises(ValueError):
        read_message(f)


@pytest.mark.parametrize("secret", [
    "hf_abcdefghijklmnopqrstuvwxyz0123", "sk-proj-abcdefghijklmnop1234567890", "ghp_" + "a1" * 16,
    "github_pat_" + "B2" * 20, "AKIAIOSFODNN7EXAMPLE", "xoxb-1234567890-abcdefghij", "a3f9" * 10,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
])
def test_tokens_are_redacted(secret):
    text = redact(f"Traceback: token {secret} leaked\n")
    assert secret not in text and "[redacted]" in text


@pytest.mark.parametrize("line", [
    "HF_TOKEN=abc", "AWS_SECRET_ACCESS_KEY=abc/def+ghi", "{'OPENAI_API_KEY': 'abc'}", "password: hunter2",
    "api_key = 'abc'", "postgres://user:hunter2@db/x",
])
def test_secret_assignments_are_redacted(line):
    assert not any(s in redact(line) for s in ("abc", "hunter2")), redact(line)


@pytest.mark.parametrize("line", [
    "AssertionError:  (tests.py line 3: assert candidate([1, 2, 3]) == 6)", "passed: 3 keys=4 monkey=2",
    "/tmp/pytest-of-root/pytest-3/test_no_writes_or_deletes_outs0/x.py", "PATH=/usr/bin:/bin HOME=/work",
    "RecursionError: maximum recursion depth exceeded", "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
])
def test_ordinary_text_is_kept(line):
    assert redact(line) == line


def test_a_secret_cut_in_half_leaves_nothing():
    text = "error: " + "hf_" + "x1" * 20
    assert "hf_" not in redact(cut(text[:20], 4096, more=True))


def _python(code: str, path_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """A real process whose PATH has no bwrap (as on a machine without bubblewrap)."""
    env = {"PATH": str(path_dir), "HOME": str(path_dir), "LANG": "C.UTF-8"}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)


def test_without_bubblewrap_code_runs_only_when_the_weak_sandbox_is_accepted(tmp_path):
    code = ("import sys\nfrom sftmerge.errors import SftmergeError\nfrom sftmerge.eval.sandbox import require_opt_in\n"
            "try:\n    print(require_opt_in(True, 'mbpp', sys.argv[1] == 'weak'))\n"
            "except SftmergeError as e:\n    print('error:', e)\n")
    refused = _python(code, tmp_path, "strict").stdout.strip()
    assert refused.startswith("error:") and "--allow-weak-sandbox" in refused
    assert "apt-get install bubblewrap" in refused
    assert "\n" not in refused
    assert _python(code, tmp_path, "weak").stdout.strip() == "weak"
    weak_run = _python("from sftmerge.eval.sandbox import Job, run_job\n"
                       "print(run_job(Job('def f():\\n    return 2\\n', 'assert f() == 2\\n'), mode='weak').status)\n",
                       tmp_path)
    assert weak_run.stdout.strip() == "passed", weak_run.stderr


def test_the_eval_command_stops_before_loading_a_model(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # not a model: loading it would fail differently
    (tmp_path / "model" / "model.safetensors").write_bytes(b"")  # passes the weights-present check only
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    run = subprocess.run([str(BIN / "sftmerge"), "eval", "--models", str(tmp_path / "model"), "--tasks", "mbpp",
                          "--allow-code-execution", "--out", str(tmp_path / "out")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "--allow-weak-sandbox" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_the_seccomp_filter_is_well_formed():
    for machine in ("x86_64", "aarch64"):
        bpf = sandbox_seccomp.program(machine)
        assert bpf is not None and len(bpf) % 8 == 0 and len(bpf) // 8 < 256
    assert sandbox_seccomp.program("sparc") is None
