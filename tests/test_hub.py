"""Model cards, `sftmerge push --dry-run` and the Hub commands' failure paths.

There is no Hub here. Cards are rendered and parsed back with huggingface_hub; the
network paths are exercised against real local sockets (closed, or open and silent)
and huggingface_hub's offline mode, each in a fresh process because huggingface_hub
reads HF_ENDPOINT and HF_HUB_OFFLINE when it is imported.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from sftmerge.errors import SftmergeError
from sftmerge.hub.card import license_of
from sftmerge.hub.upload_files import opened_for_upload, upload_plan
from sftmerge.cli.main import main
from sftmerge.merge.recipes import render

from tests.common import tool

SEED = 7


def _sftmerge(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _merge(tmp: Path, base: Path, models, name: str = "select-merge") -> Path:
    recipe = tmp / f"{name}.yml"
    recipe.write_text(render("select", str(base), [str(m) for m in models], seed=SEED))
    out = tmp / name
    code, output = _sftmerge("merge", recipe, out)
    assert code == 0, output
    return out


@pytest.fixture(scope="module")
def merged(family, tmp_path_factory):
    """A real param_select merge of the shared toy family, made by `sftmerge merge`."""
    tmp = tmp_path_factory.mktemp("merged")
    return _merge(tmp, family / "base", [family / f"order-{i}" for i in range(3)])


@pytest.fixture
def merged_copy(merged, tmp_path):
    out = tmp_path / merged.name
    shutil.copytree(merged, out)
    return out


def _write_results(root: Path, model_name: str, task: str, metrics: dict, n: int = 300) -> None:
    folder = root / model_name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task}.json").write_text(json.dumps({
        "model": f"runs/{model_name}", "model_name": model_name, "task": task, "backend": "hf", "n": n,
        "metrics": metrics, "settings": {"max_new_tokens": 64}, "seconds": 1.5,
    }))


# --- the card -------------------------------------------------------------------------


def test_merge_writes_an_sftmerge_card(merged):
    card = ModelCard.load(merged / "README.md")
    data = card.data
    assert data.tags == ["merge", "mergekit", "sftmerge", "param_select"]
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-generation"
    # All inputs are local folders of unknown origin: none can be named on the Hub.
    assert data.base_model is None
    assert data.eval_results is None and "model-index" not in metadata_load(merged / "README.md")
    recipe = (merged / "mergekit_config.yml").read_text()
    assert recipe == (merged.parent / "select-merge.yml").read_text()
    assert f"```yaml\n{recipe}```" in card.text  # verbatim, comments included
    assert f"seed: {SEED}" in recipe and f"Seed: {SEED};" in card.text
    assert "https://arxiv.org/abs/2410.03743" in card.text and "https://arxiv.org/abs/2406.17923" in card.text
    report = json.loads((merged / "merge_report.json").read_text())
    assert f"Elements equal to the base: {report['fraction_equal_base_after_resample']:.2%}." in card.text
    for model, fraction in report["fraction_from_model"].items():
        assert f"| input | `{model}` | 1.0 | {fraction:.2%} |" in card.text


def test_merge_without_model_card_writes_none(family, tmp_path):
    recipe = tmp_path / "select.yml"
    recipe.write_text(render("select", str(family / "base"), [str(family / f"order-{i}") for i in range(2)]))
    code, output = _sftmerge("merge", recipe, tmp_path / "out", "--no-write-model-card")
    assert code == 0, output
    assert not (tmp_path / "out" / "README.md").exists() and (tmp_path / "out" / "merge_report.json").exists()


def test_card_with_results_has_table_and_model_index(merged_copy, tmp_path):
    results = tmp_path / "RESULTS"
    _write_results(results, merged_copy.name, "arith",
                   {"exact_match": {"value": 0.41, "stderr": 0.028, "ci95": [0.35, 0.47]}})
    _write_results(results, merged_copy.name, "gsm8k", {"exact_match": {"value": 0.123456, "stderr": 0.009}}, n=1319)
    _write_results(results, "another-model", "arith", {"exact_match": {"value": 0.99}})
    recipe_base = yaml.safe_load((merged_copy / "mergekit_config.yml").read_text())["base_model"]
    code, output = _sftmerge("card", merged_copy, "--results", results, "--name", "toy-select",
                             "--hub-id", f"{recipe_base}=someone/toy-base")
    assert code == 0, output
    assert "someone/toy-base" in output and "3 results" not in output and "2 results" in output
    card = ModelCard.load(merged_copy / "README.md")
    assert card.data.base_model == ["someone/toy-base"]
    assert card.data.model_name == "toy-select"
    # Rows in the task registry's order (sftmerge/data/tasks.py): gsm8k before arith.
    assert card.data.eval_results == [
        EvalResult(task_type="text-generation", task_name="Text Generation", dataset_type="openai/gsm8k",
                   dataset_name="GSM8K", metric_type="exact_match", metric_name="exact match",
                   metric_value=0.1235),
        EvalResult(task_type="text-generation", task_name="Text Generation", dataset_type="arith",
                   dataset_name="Arithmetic word problems (built-in)", metric_type="exact_match",
                   metric_name="exact match", metric_value=0.41),
    ]
    # The raw front matter is in the Hub's model-index format.
    name, parsed = model_index_to_eval_results(metadata_load(merged_copy / "README.md")["model-index"])
    assert name == "toy-select" and [r.metric_value for r in parsed] == [0.1235, 0.41]
    assert "| Arithmetic word problems (built-in) | exact_match | 0.4100 | 0.0280 | [0.3500, 0.4700] | 300 | hf |" \
        in card.text
    assert "| GSM8K | exact_match | 0.1235 | 0.0090 | – | 1319 | hf |" in card.text
    assert "0.99" not in card.text  # another model's results stay out


def test_card_takes_license_and_hub_id_from_a_cached_base(family, tmp_path):
    # The base as the Hub's download cache stores it, with its own card's license.
    base = tmp_path / "hub" / "models--someone--licensed-base" / "snapshots" / "0123abcd"
    shutil.copytree(family / "base", base)
    (base / "README.md").write_text(
        "---\nlicense: other\nlicense_name: toy-license\nlicense_link: https://example.org/license\n---\n# base\n"
    )
    out = _merge(tmp_path, base, [family / f"order-{i}" for i in range(2)], name="licensed")
    data = ModelCard.load(out / "README.md").data
    assert data.base_model == ["someone/licensed-base"]
    assert (data.license, data.license_name, data.license_link) == (
        "other", "toy-license", "https://example.org/license")


def test_card_names_every_hub_input_in_base_model(merged_copy):
    recipe = merged_copy / "mergekit_config.yml"
    hub_ids = ["HuggingFaceTB/SmolLM2-135M-Instruct", "someone/order-0", "someone/order-1"]
    recipe.write_text(render("resample", hub_ids[0], hub_ids[1:], seed=3))
    code, output = _sftmerge("card", merged_copy)
    assert code == 0, output
    card = ModelCard.load(merged_copy / "README.md")
    assert card.data.base_model == hub_ids
    assert card.data.tags[-1] == "param_select" and "`resample: true`" in card.text
    assert "listed here but not in `base_model`" not in card.text


def test_license_from_config_when_the_card_has_none(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "license": "mit"}))
    (tmp_path / "README.md").write_text("---\ntags:\n- base\n---\n# no license here\n")
    assert license_of(str(tmp_path)) == {"license": "mit"}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert license_of(str(tmp_path)) == {}


@pytest.mark.parametrize("content, message", [
    ({"task": "arith", "metrics": {"exact_match": {"stderr": 0.1}}}, "has no numeric 'value'"),
    ({"task": "arith"}, "lacks 'task' or a 'metrics' mapping"),
    ({"task": "arith", "model_name": "other", "metrics": {"em": {"value": 1}}}, "is for model 'other'"),
])
def test_card_rejects_malformed_results(merged_copy, tmp_path, content, message):
    folder = tmp_path / "RESULTS" / merged_copy.name
    folder.mkdir(parents=True)
    (folder / "arith.json").write_text(json.dumps(content))
    before = (merged_copy / "README.md").read_text()
    code, output = _sftmerge("card", merged_copy, "--results", tmp_path / "RESULTS")
    assert code == 1 and message in output
    assert (merged_copy / "README.md").read_text() == before  # the old card stays


def test_card_errors(merged_copy, tmp_path):
    empty = tmp_path / "RESULTS"
    empty.mkdir()
    code, output = _sftmerge("card", merged_copy, "--results", empty)
    assert code == 1 and f"error: no results for {merged_copy.name} in {empty}" in output
    code, output = _sftmerge("card", merged_copy, "--hub-id", "no-equals-sign")
    assert code == 1 and "--hub-id takes PATH=REPO_ID" in output
    (merged_copy / "mergekit_config.yml").unlink()
    code, output = _sftmerge("card", merged_copy)
    assert code == 1 and "has no mergekit_config.yml" in output


# --- push --dry-run and refusals -------------------------------------------------------


def test_push_dry_run_lists_exactly_the_allow_list(merged_copy, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("HF_TOKEN=hf_secret")
    (merged_copy / ".env").write_text("HF_TOKEN=hf_secret")
    (merged_copy / "notes.txt").write_text("private notes")
    (merged_copy / "tokenizer.model").symlink_to(secret)  # named like an allowed file: still a link
    (merged_copy / "id_rsa").symlink_to(secret)
    hidden = merged_copy / ".cache" / "huggingface" / "upload"
    hidden.mkdir(parents=True)
    (hidden / "state.json").write_text("{}")
    (merged_copy / "generation_config.json").write_text("{}")
    (merged_copy / "results").mkdir()
    (merged_copy / "results" / "arith.json").write_text("{}")
    (merged_copy / "results" / "arith.samples.jsonl").write_text("{}\n")
    code, output = _sftmerge("push", merged_copy, "someone/toy-select", "--dry-run")
    assert code == 0, output
    listing, card = output.split("\n--- README.md ---\n")
    upload, left = listing.split("\nleft out: ")
    listed = [line.split()[-1] for line in upload.splitlines()[1:]]
    assert listed == ["README.md", "config.json", "generation_config.json", "merge_report.json",
                      "mergekit_config.yml", "model.safetensors", "results/arith.json",
                      "tokenizer.json", "tokenizer_config.json"]
    sizes = sum((merged_copy / name).stat().st_size for name in listed)
    assert upload.splitlines()[0].startswith(f"would upload 9 files ({sizes / 1024:.1f} KB)")
    assert "someone/toy-select (private if created)" in upload
    assert left.splitlines() == [
        "7", "  .cache/  (folder)", "  .env  (not on the allow-list)", "  .sftmerge-output  (not on the allow-list)",
        "  id_rsa  (symbolic link)", "  notes.txt  (not on the allow-list)",
        "  results/arith.samples.jsonl  (not on the allow-list)", "  tokenizer.model  (symbolic link)"]
    assert card == (merged_copy / "README.md").read_text()
    code, output = _sftmerge("push", merged_copy, "someone/toy-select", "--dry-run", "--public")
    assert code == 0 and "someone/toy-select (public if created)" in output
    code, output = _sftmerge("push", merged_copy, "someone/toy-select", "--dry-run", "--private")
    assert code == 0 and "(private if created)" in output  # the old flag, now the default
    code, output = _sftmerge("push", merged_copy, "someone/x", "--dry-run", "--public", "--private")
    assert code == 1 and "--public and --private contradict each other" in output


def test_upload_opens_the_planned_files_without_following_links(merged_copy, tmp_path):
    plan, _ = upload_plan(merged_copy)
    with opened_for_upload(merged_copy, plan) as operations:
        assert [op.path_in_repo for op in operations] == [f.path_in_repo for f in plan]
        assert operations[1].path_or_fileobj.read() == (merged_copy / plan[1].path_in_repo).read_bytes()
    # A planned file swapped for a link to a secret before the upload opens it.
    secret = tmp_path / "secret"
    secret.write_text("HF_TOKEN=hf_secret")
    (merged_copy / "config.json").unlink()
    (merged_copy / "config.json").symlink_to(secret)
    with pytest.raises(SftmergeError, match="config.json changed while pushing"):
        with opened_for_upload(merged_copy, plan):
            pass


def test_push_refuses_unfinished_folders(merged_copy):
    index = merged_copy / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))
    code, output = _sftmerge("push", merged_copy, "someone/x", "--dry-run")
    assert code == 1 and "lacks weight shard model-00002-of-00002.safetensors" in output
    index.unlink()
    recipe = merged_copy / "mergekit_config.yml"
    recipe.write_text(recipe.read_text().replace(f"seed: {SEED}", "seed: 8"))
    code, output = _sftmerge("push", merged_copy, "someone/x", "--dry-run")
    assert code == 1 and "shows another recipe than mergekit_config.yml" in output
    (merged_copy / "README.md").write_text("---\ntags:\n- mergekit\n---\n# stock mergekit card\n")
    code, output = _sftmerge("push", merged_copy, "someone/x", "--dry-run")
    assert code == 1 and "is not an sftmerge model card" in output
    (merged_copy / "README.md").unlink()
    code, output = _sftmerge("push", merged_copy, "someone/x", "--dry-run")
    assert code == 1 and "has no model card README.md" in output
    (merged_copy / "model.safetensors").unlink()
    code, output = _sftmerge("push", merged_copy, "someone/x", "--dry-run")
    assert code == 1 and "has no weights" in output
    code, output = _sftmerge("push", merged_copy, "not a repo id!", "--dry-run")
    assert code == 1 and "invalid repository id" in output


# --- the Hub's failure paths, in fresh processes ----------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, tmp_path, **env):
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGING_FACE_")) and k != "PYTHONPATH"}
    base["HF_HOME"] = str(tmp_path / "hf-home")  # no saved token, empty download cache
    start = time.monotonic()
    proc = subprocess.run([tool("sftmerge"), *map(str, args)], env={**base, **env}, capture_output=True,
                          text=True, timeout=180, cwd=tmp_path)
    return proc, time.monotonic() - start


def _error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    return lines[0]


def test_push_without_token_says_so(merged, tmp_path):
    proc, _ = _run(["push", merged, "someone/x"], tmp_path)
    assert _error_line(proc) == "error: no Hugging Face token: set HF_TOKEN or run `hf auth login`"


def test_push_offline_says_so(merged, tmp_path):
    proc, _ = _run(["push", merged, "someone/x"], tmp_path, HF_TOKEN="hf_unused", HF_HUB_OFFLINE="1")
    assert _error_line(proc) == "error: cannot push: offline mode is on (HF_HUB_OFFLINE=1)"


def test_push_to_unreachable_endpoint_fails_fast(merged, tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    proc, _ = _run(["push", merged, "someone/x"], tmp_path, HF_TOKEN="hf_unused", HF_ENDPOINT=endpoint)
    assert _error_line(proc).startswith(f"error: cannot reach the Hub at {endpoint}: ")
    assert "Connection refused" in proc.stderr


@pytest.fixture
def silent_endpoint():
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("command", [["push", "MERGED", "someone/x"], ["recipe", "pull", "someone/x"]])
def test_silent_endpoint_times_out(merged, tmp_path, silent_endpoint, command):
    args = [merged if a == "MERGED" else a for a in command]
    proc, seconds = _run(args, tmp_path, HF_TOKEN="hf_unused", HF_ENDPOINT=silent_endpoint,
                         SFTMERGE_HUB_TIMEOUT="2")
    assert _error_line(proc) == (
        f"error: the Hub at {silent_endpoint} did not answer within 2s (SFTMERGE_HUB_TIMEOUT)")
    assert seconds < 120


def test_pull_unreachable_or_offline_without_cache(tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    proc, _ = _run(["recipe", "pull", "someone/x"], tmp_path, HF_ENDPOINT=endpoint)
    assert _error_line(proc).startswith(f"error: cannot reach the Hub at {endpoint}: ")
    proc, _ = _run(["recipe", "pull", "someone/x"], tmp_path, HF_HUB_OFFLINE="1")
    assert _error_line(proc) == (
        "error: cannot fetch from the Hub: offline mode is on (HF_HUB_OFFLINE=1), and no copy is in the local cache")
    assert not (tmp_path / "recipes").exists()


@pytest.mark.slow
def test_pull_offline_from_cache_reruns_to_identical_weights(merged, tmp_path):
    # The Hub's download cache as huggingface_hub lays it out after an earlier download.
    repo = tmp_path / "hf-home" / "hub" / "models--someone--toy-select"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    shutil.copy(merged / "mergekit_config.yml", snapshot / "mergekit_config.yml")

    proc, _ = _run(["recipe", "pull", "someone/toy-select"], tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    pulled = tmp_path / "recipes" / "toy-select.yml"
    assert "wrote recipes/toy-select.yml (param_select, 4 models)" in proc.stdout
    assert pulled.read_bytes() == (merged / "mergekit_config.yml").read_bytes()
    proc, _ = _run(["recipe", "pull", "someone/toy-select"], tmp_path, HF_HUB_OFFLINE="1")
    assert _error_line(proc) == "error: recipes/toy-select.yml already exists (use --overwrite)"

    code, output = _sftmerge("merge", pulled, tmp_path / "rerun")
    assert code == 0, output
    assert (tmp_path / "rerun" / "model.safetensors").read_bytes() == (merged / "model.safetensors").read_bytes()
