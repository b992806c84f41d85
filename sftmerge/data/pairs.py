"""Training and evaluation data as chat-style prompt/response pairs.

A data spec is `name[:path]`:

- `arith`: built-in, seeded GSM8K-style multi-step arithmetic word problems (short
  reasoning, then `#### N`). Train and test are disjoint by construction: a problem's
  split is a function of its text. No download; the embedded default task.
- `gsm8k[:DIR]`: GSM8K (`openai/gsm8k`, config `main`), or DIR with train.jsonl/test.jsonl.
  Calculator annotations `<<48/2=24>>` are removed from the answers.
- `alpaca[:PATH]`: Stanford Alpaca (`tatsu-lab/alpaca`), or a local JSON file (or a
  folder holding one). Train split only.
- `code[:PATH]`: MBPP (`google-research-datasets/mbpp`, config `full`), or a local
  mbpp.jsonl (or its folder). Problem text + tests -> reference code. Standard splits by
  task_id: train 601-974, test 11-510, validation 511-600, prompt 1-10.

Without a path the Hub copy is loaded with `datasets` (needs network or a warm cache).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from sftmerge.data.tasks import TRAINING
from sftmerge.data.jsonl import numbered_rows
from sftmerge.errors import SftmergeError

SPLITS = ("train", "test", "validation")


@dataclass(frozen=True)
class Pair:
    """One chat exchange: the user's prompt, the reference response, and its final answer."""

    id: str
    prompt: str
    response: str
    answer: Optional[str] = None  # normalised final answer where one exists (arith, gsm8k)

    def messages(self) -> List[Dict[str, str]]:
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.response}]

    def to_dict(self) -> Dict:
        return asdict(self)


# ---------------------------------------------------------------------------- answers

_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def normalize_number(text: str) -> Optional[str]:
    """'1,234.50' -> '1234.5', '$20.' -> '20', '007' -> '7'; None if not a number."""
    s = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_answer(text: str, strict: bool = False) -> Optional[str]:
    """The final numeric answer of a response, normalised (see `normalize_number`).

    strict: only the number after `#### ` (lm-eval gsm8k "strict-match"); otherwise that,
    or else the last number in the text (lm-eval "flexible-extract"). None if there is none.
    """
    m = _STRICT.search(text)
    if m:
        found = normalize_number(m.group(1))
        if found is not None or strict:
            return found
    if strict:
        return None
    for match in reversed(_FLEXIBLE.findall(text)):
        candidate = normalize_number(match[0] or match[1])
        if candidate is not None:
            return candidate
    return None


# ---------------------------------------------------------------------------- arith

_NAMES = ("Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Ivy", "Jack",
          "Kira", "Leo", "Mia", "Noah", "Olive", "Paul", "Rosa", "Sam", "Tara", "Omar")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "cards",
          "coins", "eggs", "stamps", "balloons")
_CONTAINERS = ("boxes", "bags", "packs", "jars", "baskets")


def _arith_problem(rng: random.Random) -> Tuple[str, str, int]:
    """(question, reasoning ending in '#### N', N): one of a few multi-step shapes."""
    name = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    box = rng.choice(_CONTAINERS)
    shape = rng.randrange(6)
    if shape == 0:
        a, b, c, d = rng.randint(5, 40), rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 20)
        got = b * c
        total = a + got
        d = min(d, total)
        q = (f"{name} has {a} {item}. {name} buys {b} {box} with {c} {item} each, then gives away {d} {item}. "
             f"How many {item} does {name} have now?")
        r = f"{b} {box} of {c} is {b} * {c} = {got}. {a} + {got} = {total}. {total} - {d} = {total - d}."
        ans = total - d
    elif shape == 1:
        a, k, c = rng.randint(2, 6), rng.randint(1, 4), rng.randint(2, 5)
        b = c * k  # so that a * b divides evenly among c
        ans = a * b // c
        q = (f"{name} has {a} {box} with {b} {item} in each. {name} shares them equally among {c} friends. "
             f"How many {item} does each friend get?")
        r = f"{a} * {b} = {a * b}. {a * b} / {c} = {ans}."
    elif shape == 2:
        price, n = rng.randint(2, 15), rng.randint(2, 8)
        cost = price * n
        paid = (cost // 10 + 1 + rng.randint(0, 3)) * 10
        q = (f"{name} buys {n} {item} at ${price} each and pays with ${paid}. "
             f"How much change does {name} get?")
        r = f"{n} * {price} = {cost}. {paid} - {cost} = {paid - cost}."
        ans = paid - cost
    elif shape == 3:
        a, b = rng.randint(10, 60), rng.randint(2, 5)
        other = a * b
        c = rng.randint(3, 30)
        friend = rng.choice([n for n in _NAMES if n != name])
        q = (f"{name} has {a} {item}. {friend} has {b} times as many, then loses {c} of them. "
             f"How many {item} do they have together now?")
        r = f"{a} * {b} = {other}. {other} - {c} = {other - c}. {a} + {other - c} = {a + other - c}."
        ans = a + other - c
    elif shape == 4:
        days, per, extra = rng.randint(2, 7), rng.randint(3, 15), rng.randint(5, 30)
        base = days * per
        q = (f"{name} collects {per} {item} every day for {days} days, then finds {extra} more. "
             f"How many {item} does {name} have?")
        r = f"{days} * {per} = {base}. {base} + {extra} = {base + extra}."
        ans = base + extra
    else:
        a, b, c = rng.randint(20, 90), rng.randint(2, 15), rng.randint(2, 15)
        left = a - b - c
        if left < 0:
            a = b + c + rng.randint(0, 30)
            left = a - b - c
        q = (f"{name} had {a} {item}, used {b} on Monday and {c} on Tuesday. "
             f"How many {item} are left?")
        r = f"{b} + {c} = {b + c}. {a} - {b + c} = {left}."
        ans = left
    return q, f"{r}\n#### {ans}", ans


def _arith_split(question: str) -> str:
    """A problem's split is a function of its text, so train and test never overlap."""
    h = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "little")
    return "test" if h % 5 == 0 else "train"


ARITH_DEFAULT_SIZES = {"train": 2000, "test": 500, "validation": 500}


def arith_pairs(n: int, split: str = "train", seed: int = 0) -> List[Pair]:
    """The first n distinct `split` problems of the generator seeded with `seed`.

    A prefix property holds: arith_pairs(n) is the first n of arith_pairs(m) for m > n.
    `validation` is the test split's problems after its first ARITH_DEFAULT_SIZES['test'].
    """
    if split not in SPLITS:
        raise SftmergeError(f"arith: unknown split {split!r} (known: {', '.join(SPLITS)})")
    want, skip = split, 0
    if split == "validation":
        want, skip = "test", ARITH_DEFAULT_SIZES["test"]
    out: List[Pair] = []
    seen = set()
    i = 0
    while len(out) < n + skip:
        rng = random.Random(f"arith/{seed}/{i}")
        i += 1
        q, r, ans = _arith_problem(rng)
        if q in seen or _arith_split(q) != want:
            continue
        seen.add(q)
        out.append(Pair(id=f"arith-{want}-{i - 1}", prompt=q, response=r, answer=str(ans)))
        if i > 100 * (n + skip) + 1000:
            raise SftmergeError(f"arith: could not generate {n} distinct {split} problems")
    return out[skip:]


# ---------------------------------------------------------------------------- real sets

def _read_jsonl(path: Path, spec: str = "") -> List[Dict]:
    return [row for _, row in numbered_rows(path, f"data {spec!r}: " if spec else "")]


def _hub(data: str, split: str, spec: str) -> List[Dict]:
    """The `split` rows of training data set `data` from its Hub id (sftmerge.data.tasks.TRAINING)."""
    name, config = TRAINING[data].hub, TRAINING[data].hub_config
    try:
        from datasets import load_dataset

        ds = load_dataset(name, config, split=split) if config else load_dataset(name, split=split)
    except Exception as e:  # network, cache, or name problems: one line
        raise SftmergeError(
            f"data {spec!r}: cannot load {name} from the Hub ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"give a local copy as {spec.split(':')[0]}:PATH"
        ) from None
    return [dict(r) for r in ds]


def _find(path: Path, names: Tuple[str, ...], spec: str) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise SftmergeError(f"data {spec!r}: none of {', '.join(names)} in {path}")
    raise SftmergeError(f"data {spec!r}: {path} does not exist")


_CALC = re.compile(r"<<[^>]*>>")


def _gsm8k(path: Optional[Path], split: str, spec: str) -> List[Pair]:
    if split not in ("train", "test"):
        raise SftmergeError(f"data {spec!r}: gsm8k has splits train and test, not {split!r}")
    if path is None:
        rows = _hub("gsm8k", split, spec)
    else:
        file = _find(path, (f"{split}.jsonl",), spec)
        where = f"data {spec!r}: "
        rows = [_gsm8k_row(r, f"{where}{file} line {n}") for n, r in numbered_rows(file, where)]
    out = []
    for i, r in enumerate(rows):
        response = _CALC.sub("", r["answer"])
        out.append(Pair(id=f"gsm8k-{split}-{i}", prompt=r["question"], response=response,
                        answer=extract_answer(response, strict=True)))
    return out


def _gsm8k_row(row: Dict, where: str) -> Dict:
    """A local GSM8K row as the loader needs it: question and answer text, the answer ending in `#### N`."""
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise SftmergeError(f"{where} has no {key!r} text (GSM8K rows are {{\"question\": ..., \"answer\": ...}})")
    if extract_answer(row["answer"], strict=True) is None:
        raise SftmergeError(f"{where}: the answer has no final '#### N' (an incomplete GSM8K row?)")
    return row


def _alpaca(path: Optional[Path], split: str, spec: str) -> List[Pair]:
    if split != "train":
        raise SftmergeError(f"data {spec!r}: alpaca has only a train split, not {split!r}")
    if path is None:
        rows = _hub("alpaca", "train", spec)
    else:
        file = path
        if path.is_dir():
            found = sorted(path.glob("alpaca*.json")) or sorted(path.glob("*.json"))
            if not found:
                raise SftmergeError(f"data {spec!r}: no .json file in {path}")
            file = found[0]
        elif not path.is_file():
            raise SftmergeError(f"data {spec!r}: {path} does not exist")
        rows = json.loads(file.read_text(encoding="utf-8"))
    out = []
    for i, r in enumerate(rows):
        prompt = r["instruction"].strip()
        if (r.get("input") or "").strip():
            prompt += "\n\n" + r["input"].strip()
        out.append(Pair(id=f"alpaca-{i}", prompt=prompt, response=r["output"].strip()))
    return out


MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601), "train": range(601, 975)}


def code_prompt(text: str, tests: List[str]) -> str:
    return f"{text.strip()}\nYour code should pass these tests:\n\n" + "\n".join(t.strip() for t in tests)


def _code(path: Optional[Path], split: str, spec: str) -> List[Pair]:
    if split not in MBPP_SPLITS:
        raise SftmergeError(f"data {spec!r}: code (MBPP) splits are {', '.join(MBPP_SPLITS)}, not {split!r}")
    if path is None:
        rows = _hub("code", split, spec)
    else:
        rows = _read_jsonl(_find(path, ("mbpp.jsonl",), spec))
    ids = MBPP_SPLITS[split]
    out = []
    for r in sorted(rows, key=lambda r: int(r["task_id"])):
        if int(r["task_id"]) not in ids:
            continue
        code = r["code"].replace("\r\n", "\n").strip()
        out.append(Pair(id=f"mbpp-{r['task_id']}", prompt=code_prompt(r["text"], r["test_list"]),
                        response=f"```python\n{code}\n```"))
    return out


_LOADERS: Dict[str, Callable[[Optional[Path], str, str], List[Pair]]] = {
    "gsm8k": _gsm8k,
    "alpaca": _alpaca,
    "code": _code,
}
NAMES = tuple(TRAINING)  # arith is generated here, the others have a loader above


def parse_spec(spec: str) -> Tuple[str, Optional[Path]]:
    """'name[:path]' -> (name, path or None); unknown names are an error."""
    name, _, path = str(spec).partition(":")
    name = name.strip().lower()
    if name not in NAMES:
        raise SftmergeError(f"unknown data set {name!r} in {spec!r} (known: {', '.join(NAMES)})")
    if name == "arith" and path:
        raise SftmergeError(f"data {spec!r}: arith is built in and takes no path")
    return name, (Path(path).expanduser() if path else None)


def load_pairs(spec: str, split: str = "train", limit: Optional[int] = None, seed: int = 0) -> List[Pair]:
    """The pairs of data spec `name[:path]` for `split`, in the source's order.

    limit: the first `limit` pairs (arith: how many to generate; default
    ARITH_DEFAULT_SIZES[split]). seed: the arith generator's seed (ignored by the others).
    """
    name, path = parse_spec(spec)
    if limit is not None and limit < 1:
        raise SftmergeError(f"data {spec!r}: limit must be at least 1 (got {limit})")
    if name == "arith":
        return arith_pairs(limit if limit is not None else ARITH_DEFAULT_SIZES.get(split, 500), split, seed)
    pairs = _LOADERS[name](path, split, spec)
    if not pairs:
        raise SftmergeError(f"data {spec!r}: no {split} examples found")
    return pairs[:limit] if limit is not None else pairs
