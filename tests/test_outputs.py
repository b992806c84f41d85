"""Output folders never destroy inputs, are replaced only when sftmerge wrote them, and
leave nothing behind from killed runs (`sftmerge.io.fsutil.atomic_output_dir`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sftmerge.cli.main import main
from tests.common import error_line
from sftmerge.errors import SftmergeError
from sftmerge.io.fsutil import OUTPUT_MARKER, owned_prefix, atomic_output_dir, fsync_tree


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _digest(folder: Path) -> dict:
    """Every file under `folder` with its content hash: equal digests mean an untouched folder."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def fam(family, tmp_path):
    """A private copy of the toy family, so a failing guard cannot damage the shared one."""
    shutil.copytree(family, tmp_path / "fam")
    return tmp_path / "fam"


def _recipe(path: Path, fam: Path) -> Path:
    recipe = {
        "merge_method": "param_select",
        "base_model": str(fam / "base"),
        "models": [{"model": str(fam / f"order-{k}"), "parameters": {"weight": 1.0}} for k in range(3)],
        "parameters": {"seed": 42},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("where, relation", [
    ("fam/order-0", "is the input"),           # OUT is one of the models
    ("fam", "contains the input"),             # OUT holds the recipe's own models
    ("fam/order-1/merged", "lies inside the input"),
    ("recipes", "contains the input"),         # the recipe's own folder
])
def test_overwrite_aimed_at_an_input_is_refused_and_the_input_stays(fam, tmp_path, where, relation):
    recipe = _recipe(tmp_path / "recipes" / "select.yml", fam)
    before = _digest(tmp_path)
    line = error_line(_invoke("merge", recipe, tmp_path / where, "--overwrite", "--quiet"))
    assert relation in line and "choose an output outside every input" in line
    assert _digest(tmp_path) == before
    assert not [p for p in tmp_path.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


def test_only_folders_sftmerge_wrote_are_replaced(fam, tmp_path):
    recipe = _recipe(tmp_path / "r.yml", fam)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    line = error_line(_invoke("merge", recipe, foreign, "--overwrite", "--quiet"))
    assert f"was not written by sftmerge (no {OUTPUT_MARKER})" in line and "not even with --overwrite" in line
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    out = tmp_path / "out"
    assert _invoke("merge", recipe, out, "--quiet").exit_code == 0
    assert (out / OUTPUT_MARKER).is_file()
    assert "(use --overwrite)" in error_line(_invoke("merge", recipe, out, "--quiet"))
    (out / OUTPUT_MARKER).unlink()  # a merge written before the marker existed: report + recipe show it
    result = _invoke("merge", recipe, out, "--quiet", "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / OUTPUT_MARKER).is_file()


def test_base_refuses_a_foreign_folder_before_converting(tmp_path):
    foreign = tmp_path / "models" / "mine"
    foreign.mkdir(parents=True)
    (foreign / "config.json").write_text("{}")
    line = error_line(_invoke("base", "smollm2", "--out", foreign, "--overwrite"))
    assert "was not written by sftmerge" in line
    assert [p.name for p in foreign.iterdir()] == ["config.json"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_folders_of_killed_runs_are_removed(tmp_path):
    out = tmp_path / "out"
    live = owned_prefix(out, "tmp")  # this process: still running, so left alone
    dead = live.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    for name in (live + "a1", dead + "b2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".out.tmp-someoldname").mkdir()  # no owner recorded: not ours to judge
    with atomic_output_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([live + "a1", ".out.tmp-someoldname", "out"])
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "config.json"]


def test_an_output_moved_aside_by_a_killed_run_is_put_back(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "config.json").write_text('{"v": 1}')
    # Killed between its two renames: `out` moved aside, the new one not yet in place.
    aside = tmp_path / (owned_prefix(out, "old").replace(f"-{os.getpid()}-", f"-{_dead_pid()}-") + "x")
    os.replace(out, aside)
    with pytest.raises(SftmergeError, match="already exists"):
        with atomic_output_dir(out) as tmp:
            (tmp / "config.json").write_text('{"v": 2}')
    assert (out / "config.json").read_text() == '{"v": 1}' and not aside.exists()


def test_a_failed_block_changes_nothing_and_symlinks_are_not_followed(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "dangling").symlink_to(tmp_path / "nowhere")  # fsync must not follow it
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("killed mid-write")
    assert (out / "a.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    fsync_tree(out)
    link = tmp_path / "link"
    link.symlink_to(out)
    with pytest.raises(SftmergeError, match="is a symbolic link"):
        with atomic_output_dir(link, overwrite=True):
            pass
