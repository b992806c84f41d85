"""The data module: the arith generator, answer extraction, and the local copies of the real sets."""

from __future__ import annotations

import json
import re

import pytest

from sftmerge.data.pairs import (
    Pair,
    arith_pairs,
    extract_answer,
    load_pairs,
    normalize_number,
    parse_spec,
)
from sftmerge.errors import SftmergeError

from tests.common import SHARED_DATA, needs_shared_data



def test_arith_is_seeded_and_prefix_stable():
    a = arith_pairs(300, seed=0)
    assert a == arith_pairs(300, seed=0)
    assert a[:100] == arith_pairs(100, seed=0)
    assert [p.prompt for p in a] != [p.prompt for p in arith_pairs(300, seed=1)]


def test_arith_splits_are_disjoint_and_distinct():
    train = {p.prompt for p in arith_pairs(2000)}
    test = {p.prompt for p in arith_pairs(500, "test")}
    val = {p.prompt for p in arith_pairs(300, "validation")}
    assert len(train) == 2000 and len(test) == 500 and len(val) == 300
    assert not train & test and not train & val and not test & val


def test_arith_responses_are_correct_gsm8k_style():
    for p in arith_pairs(500) + arith_pairs(200, "test"):
        body, _, final = p.response.rpartition("\n#### ")
        assert body and final == p.answer
        assert extract_answer(p.response, strict=True) == p.answer
        assert int(p.answer) >= 0
        # every "x op y = z" step in the reasoning is true
        for a, op, b, result in re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", body):
            a, b, result = int(a), int(b), int(result)
            assert {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op] == result, p.response
        assert len(re.findall(r" = ", body)) == len(re.findall(r"\d+ [-+*/] \d+ = \d+", body))


def test_arith_default_sizes_and_limit():
    assert len(load_pairs("arith")) == 2000
    assert len(load_pairs("arith", "test")) == 500
    assert load_pairs("arith", limit=7) == arith_pairs(7)


@pytest.mark.parametrize(
    "text, strict, expected",
    [
        ("so 3 + 4 = 7\n#### 7", True, "7"),
        ("#### 1,234", True, "1234"),
        ("#### -5", False, "-5"),
        ("the answer is $20.", True, None),
        ("the answer is $20.", False, "20"),
        ("first 3, then 12.50 in total", False, "12.5"),
        ("no number here", False, None),
        ("#### 7.0", True, "7"),
    ],
)
def test_extract_answer(text, strict, expected):
    assert extract_answer(text, strict=strict) == expected


def test_normalize_number():
    assert normalize_number("007") == "7"
    assert normalize_number("1,000.00") == "1000"
    assert normalize_number("abc") is None


def test_pair_messages():
    p = Pair(id="x", prompt="q?", response="a.")
    assert p.messages() == [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}]


@pytest.mark.parametrize(
    "spec, message",
    [("nope", "unknown data set"), ("arith:/tmp", "takes no path"), ("gsm8k:/no/such/dir", "does not exist")],
)
def test_bad_specs(spec, message):
    with pytest.raises(SftmergeError, match=message):
        load_pairs(spec)


def test_parse_spec():
    name, path = parse_spec("gsm8k:../shared/data/gsm8k")
    assert name == "gsm8k" and str(path) == "../shared/data/gsm8k"
    assert parse_spec("arith") == ("arith", None)


@needs_shared_data
def test_gsm8k_local():
    train = load_pairs(f"gsm8k:{SHARED_DATA / 'gsm8k'}")
    test = load_pairs(f"gsm8k:{SHARED_DATA / 'gsm8k'}", "test")
    assert (len(train), len(test)) == (7473, 1319)
    assert all("<<" not in p.response for p in train)
    assert all(p.answer is not None and p.response.endswith(f"#### {p.answer}") for p in train[:200])
    first = json.loads((SHARED_DATA / "gsm8k" / "test.jsonl").read_text().splitlines()[0])
    assert test[0].prompt == first["question"]
    with pytest.raises(SftmergeError, match="splits train and test"):
        load_pairs(f"gsm8k:{SHARED_DATA / 'gsm8k'}", "validation")


@needs_shared_data
def test_alpaca_local_folder_or_file():
    folder = load_pairs(f"alpaca:{SHARED_DATA / 'alpaca'}", limit=50)
    file = load_pairs(f"alpaca:{SHARED_DATA / 'alpaca' / 'alpaca_5000.json'}")
    assert len(file) == 5000 and folder == file[:50]
    rows = json.loads((SHARED_DATA / "alpaca" / "alpaca_5000.json").read_text())
    with_input = next(i for i, r in enumerate(rows) if r["input"].strip())
    assert file[with_input].prompt == rows[with_input]["instruction"].strip() + "\n\n" + rows[with_input]["input"].strip()
    with pytest.raises(SftmergeError, match="only a train split"):
        load_pairs(f"alpaca:{SHARED_DATA / 'alpaca'}", "test")


@needs_shared_data
def test_code_local_uses_mbpp_train_ids():
    train = load_pairs(f"code:{SHARED_DATA / 'mbpp'}")
    test = load_pairs(f"code:{SHARED_DATA / 'mbpp' / 'mbpp.jsonl'}", "test")
    assert len(train) == 374 and len(test) == 500
    assert {int(p.id.split("-")[1]) for p in train} == set(range(601, 975))
    p = train[0]
    assert "Your code should pass these tests:" in p.prompt and "assert" in p.prompt
    assert p.response.startswith("```python\n") and p.response.endswith("\n```")
