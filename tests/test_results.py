"""Kept results (docs/results/) and the README tables rendered from them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.common import tool
from sftmerge.errors import SftmergeError
from sftmerge.eval.summary import table
from sftmerge.pipelines.results import keep, render_readme


def _result(model: str, em: float, loss: float) -> dict:
    return {"model_name": model, "task": "arith", "metrics": {
        "exact_match": {"value": em, "ci95": [em - 0.05, em + 0.05]},
        "loss": {"value": loss, "ci95": [loss - 0.01, loss + 0.01]}}}


@pytest.fixture
def run(tmp_path) -> Path:
    """A run folder as the pipeline leaves it: weights beside the small files that are kept."""
    root = tmp_path / "run"
    rows = [_result("order-0", 0.2, 0.30), _result("select", 0.25, 0.28)]
    files = {
        "config.yaml": "orders: 1\n",
        "stages.json": json.dumps({"train": {"seconds": 10.4, "result": "1 new"},
                                  "eval": {"seconds": 3.0, "cpu_steal": 0.123}}),
        "paired.json": json.dumps([{"a": "select", "b": "order-0", "metric": "exact match", "diff": 0.05,
                                    "ci95": [0.01, 0.09], "p_value": 0.03, "test": "McNemar exact"}]),
        "eval/summary.json": json.dumps(table(rows)),
        "eval/select/arith.json": "{}", "eval/select/arith.samples.jsonl": "{}\n",
        "order-0/summary.json": "{}", "order-0/sample_losses.jsonl": "{}\n", "order-0/config.json": "{}",
        "order-0/model.safetensors": "weights", "order-0/checkpoints/step-4/summary.json": "{}",
        "merged/select/model.safetensors": "weights", "merged/select/merge_report.json": "{}",
        "merged/select/config.json": "{}", "recipes/select.yml": "merge_method: param_select\n",
        ".order-1.work/trainer/state.json": "{}", "imbalance/figure1.png": "png",
        "imbalance/spearman.json": json.dumps({"order-0": {"rho": -0.1234, "p_value": 0.04, "n": 64,
                                                           "ci95": [-0.35, 0.11]}}),
        "imbalance/base_equal.json": json.dumps({"base": "b", "elements": 10, "models": {"order-0": 0.7},
                                                 "drawn_equal_base": 0.7, "equal_base_in_all": 0.7}),
        "steps/steps.json": json.dumps({"method": "select", "rows": [
            {"step": s, "model": m, "loss": loss} for s, m, loss in
            [(0, "order-0", 1.3), (0, "order-1", 1.3), (0, "select", 1.3), (4, "order-0", 0.3),
             (4, "order-1", 0.4), (4, "select", 0.33)]]}),
        "steps/merged/step-4/model.safetensors": "weights",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_keep_copies_result_files_and_never_weights(run, tmp_path):
    dest = tmp_path / "kept"
    keep(str(run), str(dest))
    kept = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and p.name != ".sftmerge-output")
    assert kept == sorted([
        "config.yaml", "stages.json", "paired.json", "eval/summary.json", "eval/select/arith.json",
        "eval/select/arith.samples.jsonl", "order-0/summary.json", "order-0/sample_losses.jsonl",
        "merged/select/merge_report.json", "recipes/select.yml", "imbalance/figure1.png",
        "imbalance/spearman.json", "imbalance/base_equal.json", "steps/steps.json"])
    with pytest.raises(SftmergeError, match="exists"):
        keep(str(run), str(dest))  # an earlier copy is replaced only when asked
    keep(str(run), str(dest), overwrite=True)
    with pytest.raises(SftmergeError):
        keep(str(run), str(run / "kept"))  # never inside its input
    assert (run / "order-0" / "model.safetensors").read_text() == "weights"


README = """# x

<!-- results {folder} models -->
stale
<!-- /results -->

<!-- results {folder} paired a=select b=order-0 metric=exact_match -->
<!-- /results -->

<!-- results {folder} stages -->
<!-- /results -->

<!-- results {folder} imbalance -->
<!-- /results -->

<!-- results {folder} base_equal -->
<!-- /results -->

<!-- results {folder} steps -->
<!-- /results -->
"""


def test_readme_tables_come_from_the_files_and_check_fails_when_they_differ(run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README.format(folder="run"))
    assert len(render_readme(str(readme), check=True)) == 6
    assert "stale" in readme.read_text()  # --check changes nothing
    render_readme(str(readme))
    text = readme.read_text()
    assert "| order-0 | 0.200 [0.150, 0.250] | 0.300 [0.290, 0.310] |" in text
    assert "| select | **0.250 [0.200, 0.300]** | **0.280 [0.270, 0.290]** |" in text
    assert "| select | order-0 | exact match | **+0.050 [+0.010, +0.090]** | 0.03 | McNemar exact |" in text
    assert "| train | 10 | 1 new | |" in text and "| eval | 3 |  | 12% |" in text  # steal where recorded
    assert "| total | 13 | | |" in text
    assert "| order-0 | -0.123 [-0.350, +0.110] | 0.04 | 64 |" in text
    assert "| in a `select` draw (where `resample` draws again) | 0.700 |" in text
    assert "| step | order-0 | order-1 | mean of singles | select |" in text
    assert "| 4 | 0.3000 | 0.4000 | 0.3500 | 0.3300 |" in text
    assert render_readme(str(readme), check=True) == []

    summary = run / "eval" / "summary.json"  # a figure changes in the files: the README is now stale
    summary.write_text(summary.read_text().replace("0.28", "0.27"))
    cli = subprocess.run([tool("sftmerge"), "results", "readme", str(readme), "--check"],
                         capture_output=True, text=True)
    assert cli.returncode == 1 and len(cli.stderr.strip().splitlines()) == 1
    assert "differ from their files" in cli.stderr and "models" in cli.stderr


def test_bad_blocks_are_one_line(run, tmp_path):
    readme = tmp_path / "README.md"
    for block, message in [("run nonsense", "unknown kind"), ("missing models", "not found"),
                           ("run models models=nobody", "no model 'nobody'"),
                           ("run paired a=select b=order-0,ties", "no paired rows for select vs ties")]:
        readme.write_text(f"<!-- results {block} -->\n<!-- /results -->\n")
        with pytest.raises(SftmergeError, match=message):
            render_readme(str(readme))
    readme.write_text("no blocks\n")
    with pytest.raises(SftmergeError, match="no results blocks"):
        render_readme(str(readme))


def test_the_readme_says_what_the_kept_results_say():
    """Every results block of the project's README matches docs/results/ (`sftmerge results readme`)."""
    from tests.common import REPO

    assert render_readme(str(REPO / "README.md"), check=True) == []
    assert (REPO / "docs" / "results" / "demo" / "eval" / "summary.json").is_file()


def test_claims_table_turns_pairs_round_and_names_the_run(run, tmp_path):
    """A claim's pair stored the other way round (B vs A) is shown as A - B, interval flipped."""
    from sftmerge.pipelines.results import claims_table

    rows = [{"a": "average", "b": "select", "metric": "held-out loss", "diff": 0.002, "ci95": [0.001, 0.003],
             "p_value": 0.01, "test": "paired t"},
            {"a": "average", "b": "select", "metric": "exact match", "diff": 0.0, "ci95": [0.0, 0.0],
             "p_value": 1.0, "test": "McNemar exact"}]
    (run / "paired.json").write_text(json.dumps(rows))
    lines = claims_table(tmp_path, {"runs": "run"})
    assert lines[2] == ("| selection beats averaging | run | select | average | held-out loss | "
                        "**-0.0020 [-0.0030, -0.0010]** | 0.01 | paired t |")
    assert lines[3] == ("| selection beats averaging | run | select | average | exact match | "
                        "+0.000 [+0.000, +0.000] | 1 | McNemar exact |")  # no -0.000
    assert len(lines) == 4  # the run has no other claim's pair
    with pytest.raises(SftmergeError, match="no claims"):
        claims_table(tmp_path, {"runs": ""})


def test_paired_block_turns_a_pair_round_in_the_order_it_names(run):
    """`a=order-0 b=select` finds the file's select-vs-order-0 row and shows it as order-0 - select."""
    from sftmerge.pipelines.results import paired_table

    lines = paired_table(run, {"a": "order-0", "b": "select"})
    assert lines[2] == "| order-0 | select | exact match | **-0.050 [-0.090, -0.010]** | 0.03 | McNemar exact |"
    assert len(lines) == 3


def _scores(root: Path, model: str, scores) -> None:
    (root / "eval" / model).mkdir(parents=True, exist_ok=True)
    (root / "eval" / model / "arith.samples.jsonl").write_text("".join(
        json.dumps({"id": i, "correct": c, "loss": loss}) + "\n" for i, (c, loss) in enumerate(scores)))


def test_batch_claim_pairs_each_merges_gain_across_two_runs(tmp_path):
    """`batch=A:B`: a merge's gain over its own run's singles' mean, per problem, run A minus run B."""
    from sftmerge.pipelines.results import claims_table

    runs = {"batch": {"order-0": [(0, 0.4), (1, 0.2), (0, 0.5)], "order-1": [(1, 0.2), (0, 0.4), (0, 0.3)],
                      "select": [(1, 0.2), (1, 0.2), (0, 0.4)], "resample": [(1, 0.1), (1, 0.1), (1, 0.2)]},
            "sample": {"order-0": [(0, 0.5), (0, 0.3), (1, 0.2)], "order-1": [(0, 0.3), (1, 0.3), (0, 0.4)],
                       "select": [(0, 0.4), (1, 0.3), (1, 0.3)], "resample": [(1, 0.3), (1, 0.2), (1, 0.1)]}}
    for run, models in runs.items():
        for model, scores in models.items():
            _scores(tmp_path / run, model, scores)
    assert claims_table(tmp_path, {"precision": "batch:sample"})[2].startswith(
        "| the gain does not depend on the training precision | batch - sample | select gain in batch")
    lines = claims_table(tmp_path, {"batch": "batch:sample"})
    # select's exact-match gain: batch (+0.5, +0.5, 0) - sample (0, +0.5, +0.5) = (+0.5, 0, -0.5): mean 0
    assert lines[2].startswith("| permuting only batch positions gives nearly the same gain | batch - sample | "
                               "select gain in batch (+0.333) | in sample (+0.333) | exact match | +0.000 [")
    # resample's loss gain: batch (-0.2, -0.2, -0.2) - sample (-0.1, -0.1, -0.2) = (-0.1, -0.1, 0)
    loss = next(line for line in lines if "resample gain" in line and "loss" in line)
    assert "| resample gain in batch (-0.200) | in sample (-0.133) | held-out loss | -0.0667 [" in loss
    assert len(lines) == 6
    (tmp_path / "sample" / "eval" / "order-1" / "arith.samples.jsonl").write_text(
        json.dumps({"id": 9, "correct": 0, "loss": 1.0}) + "\n")
    with pytest.raises(SftmergeError, match="different problems"):
        claims_table(tmp_path, {"batch": "batch:sample"})
