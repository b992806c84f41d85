"""Results kept as files (docs/results/<run>/) and the README tables rendered from them.

`keep` copies a run's small result files (evaluation results and per-sample scores,
summaries, paired tests, stage times, report, figures, configs and training records;
never weights) into a folder that can be committed. `render_readme` rewrites every
block of the README between

    <!-- results FOLDER KIND [key=value ...] -->
    ...
    <!-- /results -->

from the files in FOLDER, so a table can only say what the kept files say; `--check`
(used by the test suite) fails when the README and the files disagree.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from sftmerge.errors import SftmergeError
from sftmerge.io.fsutil import atomic_output_dir, write_text

# What a kept run may hold: small text and figure files. Anything else (weights, tokenizers'
# binaries, optimizer states) stays behind, and so do folders of training checkpoints.
KEPT_SUFFIXES = (".json", ".jsonl", ".md", ".png", ".yaml", ".yml", ".csv", ".txt")
SKIPPED_DIRS = ("checkpoints", "trainer", "merged")  # model folders' insides; merges keep their report only
SKIPPED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "config.json", "model.safetensors.index.json", "chat_template.jinja", "vocab.json")
MAX_FILE_BYTES = 2_000_000
KEPT_FROM_MERGES = ("merge_report.json", "README.md", "mergekit_config.yml")

BLOCK = re.compile(r"(<!-- results (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def _kept(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    if any(part.startswith(".") for part in rel.parts):
        return False  # work folders, locks, markers
    if rel.parts[0] == "merged":
        return len(rel.parts) == 3 and rel.name in KEPT_FROM_MERGES
    if any(part in SKIPPED_DIRS for part in rel.parts[:-1]):
        return False
    return (path.suffix in KEPT_SUFFIXES and path.name not in SKIPPED_FILES
            and path.stat().st_size <= MAX_FILE_BYTES)


def keep(run: str, dest: str, overwrite: bool = False) -> List[Path]:
    """Copy RUN's result files into DEST (replaced as a whole, only once complete); returns what was copied."""
    root = Path(run)
    if not root.is_dir():
        raise SftmergeError(f"run folder {run} not found")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and _kept(p, root))
    if not files:
        raise SftmergeError(f"run folder {run} has no result files to keep")
    with atomic_output_dir(dest, overwrite=overwrite, inputs=[root]) as tmp:
        for p in files:
            target = tmp / p.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
    return [Path(dest) / p.relative_to(root) for p in files]


# --- rendering -------------------------------------------------------------------------


def _load(folder: Path, name: str):
    path = folder / name
    if not path.is_file():
        raise SftmergeError(f"results {folder}: {name} not found")
    return json.loads(path.read_text(encoding="utf-8"))


def _cell(cell) -> str:
    if not cell or cell.get("value") is None:
        return "-"
    text = f"{cell['value']:.3f}"
    if cell.get("ci95"):
        text += f" [{cell['ci95'][0]:.3f}, {cell['ci95'][1]:.3f}]"
    return text


def _names(value: str) -> List[str]:
    return [v for v in value.split(",") if v]


def models_table(folder: Path, opts: Dict[str, str]) -> List[str]:
    """One row per model (eval/summary.json): value [95% interval] per task/metric; bold = best."""
    t = _load(folder, "eval/summary.json")
    models = _names(opts["models"]) if "models" in opts else t["models"]
    columns = _names(opts["columns"]) if "columns" in opts else t["columns"]
    for m in models:
        if m not in t["cells"]:
            raise SftmergeError(f"results {folder}: no model {m!r} in eval/summary.json")
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for m in models:
        cells = []
        for c in columns:
            text = _cell(t["cells"][m].get(c))
            cells.append(f"**{text}**" if m in t["best"].get(c, []) else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def paired_table(folder: Path, opts: Dict[str, str]) -> List[str]:
    """Rows of the run's paired.json, filtered by `a=`, `b=` (comma lists) and `metric=`."""
    from sftmerge.eval.paired_table import paired_table_markdown

    rows = _load(folder, "paired.json")
    if isinstance(rows, dict):  # `sftmerge eval --run`'s paired.json: per task
        rows = [r for task in rows["tasks"].values() for r in task["rows"]]
    a, b = _names(opts.get("a", "")), _names(opts.get("b", ""))
    metric = opts.get("metric", "").replace("_", " ")
    if a and b:
        # Every named pair, in the order the block names them, turned round where the file
        # holds B vs A; a pair the run does not have is an error, not a silently shorter table.
        picked = []
        for x, y in ((x, y) for x in a for y in b if x != y):
            pair = _oriented(rows, x, y)
            if not pair:
                raise SftmergeError(f"results {folder}: no paired rows for {x} vs {y}")
            picked += pair
    else:  # one side named: its rows, in the order the block names them
        side, names = ("a", a) if a else ("b", b)
        picked = sorted((r for r in rows if not names or r[side] in names),
                        key=lambda r: names.index(r[side]) if names else 0)
    picked = [r for r in picked if not metric or r["metric"] == metric]
    if not picked:
        raise SftmergeError(f"results {folder}: no paired rows for {opts}")
    return paired_table_markdown(picked)


def stages_table(folder: Path, opts: Dict[str, str]) -> List[str]:
    """The pipeline's stage times (stages.json) and their total; the CPU time taken by other
    machines on the host (steal) beside them where the run recorded it."""
    stages = _load(folder, "stages.json")
    steal = any("cpu_steal" in s for s in stages.values())
    lines = ["| stage | seconds | what it did |" + (" CPU steal |" if steal else ""),
             "|---|---|---|" + ("---|" if steal else "")]
    for name, s in stages.items():
        share = f" {100 * s['cpu_steal']:.0f}% |" if "cpu_steal" in s else " |"
        lines.append(f"| {name} | {s['seconds']:.0f} | {s.get('result', '')} |" + (share if steal else ""))
    lines.append(f"| total | {sum(s['seconds'] for s in stages.values()):.0f} | |" + (" |" if steal else ""))
    return lines


def imbalance_table(folder: Path, opts: Dict[str, str]) -> List[str]:
    """Spearman's rho of final loss against first-epoch position (imbalance/spearman.json)."""
    from sftmerge.eval.imbalance import spearman_lines

    return spearman_lines(_load(folder, "imbalance/spearman.json"))


def base_equal_table(folder: Path, opts: Dict[str, str]) -> List[str]:
    """The sub-models' shares of elements equal to the base (imbalance/base_equal.json)."""
    from sftmerge.eval.sparsity import base_equal_lines

    return base_equal_lines(_load(folder, "imbalance/base_equal.json"))


def steps_table(folder: Path, opts: Dict[str, str]) -> List[str]:
    """Held-out loss against training step, single runs and their same-step merge (steps/steps.json)."""
    from sftmerge.pipelines.steps import steps_lines

    return steps_lines(_load(folder, "steps/steps.json"))


def paft_table(folder: Path, opts: Dict[str, str]) -> List[str]:
    """A PAFT run's report.json (`sftmerge train paft`): its models table, or with `part=paired`
    the paired comparisons against sequential SFT -> DPO and plain SFT."""
    from sftmerge.eval.paired_table import paired_table_markdown
    from sftmerge.pipelines.paft import report_markdown

    doc = _load(folder, "report.json")
    if opts.get("part") == "paired":
        return paired_table_markdown(doc["paired"])
    results = {label: {"metrics": metrics, "n": doc["n"][label]} for label, metrics in doc["arith"].items()}
    return [line for line in report_markdown(results, doc["sparsity"], doc["tolerance"]).splitlines()
            if line.startswith("|")]


# The two papers' claims, as (A, B) pairs of each run's paired.json (A - B > 0: A scores higher).
CLAIMS = (
    ("merged beats single SFT", (("select", "mean-of-singles"), ("resample", "mean-of-singles"))),
    ("merged beats the same compute on one order", (("select", "compute-matched"), ("resample", "compute-matched"))),
    ("selection beats averaging", (("select", "average"),)),
    ("resampling adds about 2 points", (("resample", "select"),)),
    ("a merge comes close to the output ensemble", (("select", "ensemble"), ("resample", "ensemble"))),
)


# Claims that compare two runs on the same problems (`KEY=RUN_A:RUN_B` in a claims block): the
# paper's batch-order ablation, and the training precision the demo's headline turned on.
CROSS_RUN = {
    "batch": "permuting only batch positions gives nearly the same gain",
    "precision": "the gain does not depend on the training precision",
}


def _oriented(rows: List[Dict], a: str, b: str) -> List[Dict]:
    """The rows of A vs B, turned round where the file holds B vs A."""
    out = [r for r in rows if (r["a"], r["b"]) == (a, b)]
    for r in rows:
        if (r["a"], r["b"]) == (b, a):
            lo, hi = r["ci95"]
            out.append({**r, "a": a, "b": b, "diff": 0.0 - r["diff"], "ci95": [0.0 - hi, 0.0 - lo]})  # no -0.0
    return out


def claims_table(folder: Path, opts: Dict[str, str]) -> List[str]:
    """Each claim's paired comparisons in every run of `runs=` (kept folders under FOLDER); with
    `batch=A:B` or `precision=A:B` (CROSS_RUN) each merge's gain over the singles' mean in run A
    against that in run B; with `paft=` that run's PAFT merge against sequential SFT -> DPO."""
    from sftmerge.eval.paired_table import gain_difference, paired_table_markdown

    lines = ["| claim | run | A | B | metric | A - B [95% interval] | p | test |", "|---|---|---|---|---|---|---|---|"]

    def add(claim: str, run: str, rows: List[Dict]) -> None:
        lines.extend(f"| {claim} | {run} " + line for line in paired_table_markdown(rows)[2:])

    runs = {run: _load(folder / run, "paired.json") for run in _names(opts.get("runs", ""))}
    for claim, pairs in CLAIMS:
        for run, rows in runs.items():
            add(claim, run, [r for a, b in pairs for r in _oriented(rows, a, b)])
    for key in (k for k in CROSS_RUN if k in opts):  # KEY=RUN_A:RUN_B, same problems: each merge's gain, A - B
        ra, _, rb = opts[key].partition(":")
        for m in ("select", "resample"):
            rows = [{**r, "a": f"{m} gain in {ra} ({r['gain_a']:+.3f})", "b": f"in {rb} ({r['gain_b']:+.3f})"}
                    for r in gain_difference(folder / ra / "eval", folder / rb / "eval", opts.get("task", "arith"), m)]
            add(CROSS_RUN[key], f"{ra} - {rb}", rows)
    if "paft" in opts:
        doc = _load(folder / opts["paft"], "report.json")
        add("PAFT beats sequential training", opts["paft"], _oriented(doc["paired"], "paft", "sft-dpo"))
    if len(lines) == 2:
        raise SftmergeError(f"results {folder}: no claims to show for {opts}")
    return lines


KINDS: Dict[str, Callable[[Path, Dict[str, str]], List[str]]] = {
    "models": models_table, "paired": paired_table, "stages": stages_table,
    "imbalance": imbalance_table, "base_equal": base_equal_table, "steps": steps_table,
    "paft": paft_table, "claims": claims_table,
}


def _parse(spec: str) -> Tuple[str, str, Dict[str, str]]:
    parts = spec.split()
    if len(parts) < 2:
        raise SftmergeError(f"results block {spec!r}: expected FOLDER KIND [key=value ...]")
    opts = {}
    for p in parts[2:]:
        if "=" not in p:
            raise SftmergeError(f"results block {spec!r}: {p!r} is not key=value")
        k, v = p.split("=", 1)
        opts[k] = v
    if parts[1] not in KINDS:
        raise SftmergeError(f"results block {spec!r}: unknown kind {parts[1]!r} (known: {', '.join(KINDS)})")
    return parts[0], parts[1], opts


def render(text: str, base: Path) -> Tuple[str, List[str]]:
    """`text` with every results block rendered from its folder (relative to `base`); and the stale specs."""
    stale: List[str] = []

    def one(m: re.Match) -> str:
        folder, kind, opts = _parse(m.group("spec"))
        body = "\n".join(KINDS[kind](base / folder, opts)) + "\n"
        if body != m.group("body"):
            stale.append(m.group("spec"))
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(one, text), stale


def render_readme(readme: str, check: bool = False) -> List[str]:
    """Rewrite the README's results blocks (or, with `check`, only report the stale ones)."""
    path = Path(readme)
    if not path.is_file():
        raise SftmergeError(f"{readme} not found")
    text = path.read_text(encoding="utf-8")
    new, stale = render(text, path.parent)
    if not BLOCK.search(text):
        raise SftmergeError(f"{readme} has no results blocks (<!-- results FOLDER KIND --> ... <!-- /results -->)")
    if stale and not check:
        write_text(path, new)
    return stale
