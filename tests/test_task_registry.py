"""The one registry of evaluation tasks (sftmerge/data/tasks.py) and the modules that read it."""

from __future__ import annotations

import ast

import pytest

from sftmerge.data.tasks import TASKS, TRAINING, local_files, parse_tasks
from sftmerge.errors import SftmergeError
from tests.common import SHARED_DATA, needs_shared_data
from tests.layers import REPO


@pytest.mark.parametrize("name", list(TASKS))
def test_every_runner_string_names_a_function(name):
    from sftmerge.eval.tasks import runner

    assert callable(runner(name))


@needs_shared_data
@pytest.mark.parametrize("name", [t for t in TASKS if TASKS[t].local_files])
def test_local_data_layout_matches_the_shared_data(name):
    files = local_files(name, SHARED_DATA)
    assert set(files) == set(TASKS[name].local_files)


def test_missing_local_file_is_one_line(tmp_path):
    with pytest.raises(SftmergeError, match=r"task mbpp: data file .*mbpp/mbpp.jsonl not found \(--data-dir\)"):
        local_files("mbpp", tmp_path)


def test_parse_tasks_keeps_order_drops_repeats_and_names_the_unknown():
    assert parse_tasks(" MBPP,arith,mbpp ") == ["mbpp", "arith"]
    with pytest.raises(SftmergeError, match="unknown task 'chess' \\(known: gsm8k, gsm8k_trained, gsm8k_heldout, humaneval, mbpp, alpaca, arith\\)"):
        parse_tasks("arith,chess")
    with pytest.raises(SftmergeError, match="--tasks is empty"):
        parse_tasks(" , ")


def test_every_training_set_is_scored_by_a_registered_task():
    assert {d.eval_task for d in TRAINING.values()} <= set(TASKS)
    from sftmerge.data.pairs import NAMES

    assert NAMES == tuple(TRAINING)


def test_model_card_rows_take_dataset_ids_and_titles_from_the_registry():
    from sftmerge.hub.card_results import MetricRow

    row = lambda task: MetricRow(task, "m", 0.5, None, None, None, None)
    assert row("gsm8k").dataset == ("openai/gsm8k", "GSM8K")
    assert row("arith").dataset == ("arith", "Arithmetic word problems (built-in)")
    assert row("chess").dataset == ("chess", "chess")  # an unknown task keeps its own name


def test_summary_marks_the_lowest_loss_and_the_highest_accuracy_best():
    from sftmerge.eval.summary import table

    def result(model, em, loss):
        return {"model_name": model, "task": "arith",
                "metrics": {"exact_match": {"value": em}, "loss": {"value": loss}}}

    t = table([result("a", 0.2, 0.5), result("b", 0.3, 0.7)])
    assert t["best"] == {"arith/exact_match": ["b"], "arith/loss": ["a"]}


def _string_literals(path):
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def test_the_task_list_is_written_out_only_in_the_registry():
    """No other module of the package spells out all the task names (a second list to keep in step)."""
    names = set(TASKS)
    sources = [*(REPO / "sftmerge").rglob("*.py"), *(REPO / "eval").glob("*.py")]
    offenders = [str(p.relative_to(REPO)) for p in sources
                 if p != REPO / "sftmerge" / "data" / "tasks.py" and names <= _string_literals(p)]
    assert not offenders
    assert names <= _string_literals(REPO / "sftmerge" / "data" / "tasks.py")  # the check sees the registry
