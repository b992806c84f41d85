"""Per-sample losses: a model's mean NLL over each sample's trained (response) tokens.

`sftmerge train sft` records them for every training sample (sample_losses.jsonl, through
the scorer the CLI and the pipelines hand to training); the imbalance and step
diagnostics score merged models and snapshots with the same function, so all these
numbers are comparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from sftmerge.train.base import base_dtype
from sftmerge.train.forward_args import accepts_positions
from sftmerge.train.response_logits import IGNORE, response_logits, token_nll


@torch.no_grad()
def sample_losses(model_dir: Path, dataset, batch_size: int = 16, device: Optional[str] = None) -> List[Dict]:
    """Mean loss over each sample's trained (response) tokens under the model saved in `model_dir`.

    `dataset` is the trainer's prepared one: `input_ids`, and `labels` at -100 on the prompt.
    One {"loss", "tokens"} per row, in row order.

    A sample whose trained tokens are one stretch at its end (a prompt, then the response) is
    scored as a continuation by eval/hf_direct.py: samples of similar length batched, a prefix
    common to a batch (the chat template's system turn) run once. Any other label pattern
    takes a plain right-padded pass.
    """
    from transformers import AutoModelForCausalLM

    from sftmerge.eval.hf_direct import score_tokens

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if device == "cpu" else base_dtype(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    rows = dataset.with_format(None)
    ids, labels = rows["input_ids"], rows["labels"]
    out: List[Optional[Dict]] = [None] * len(ids)
    split = {i: _response_start(x, y) for i, (x, y) in enumerate(zip(ids, labels))}
    tail = [i for i, start in split.items() if start is not None]
    pairs = [(ids[i][:split[i]], ids[i][split[i]:]) for i in tail]
    name = Path(model_dir).name
    for i, logprob in zip(tail, score_tokens(model, pairs, batch_size, desc=f"sample losses ({name})")):
        n = len(ids[i]) - split[i]
        out[i] = {"loss": -logprob / n, "tokens": n}
    other = [i for i in range(len(ids)) if out[i] is None]
    positions = accepts_positions(model) if other else False
    for start in range(0, len(other), batch_size):
        chunk = other[start:start + batch_size]
        x, y, attn = _padded_batch(ids, labels, chunk)
        y = y.to(device)
        _, logits, targets = response_logits(model, {"input_ids": x.to(device), "attention_mask": attn.to(device)},
                                             y, positions)
        nll, target = token_nll(logits, targets).cpu(), (targets != IGNORE).cpu()
        for row, i in enumerate(chunk):
            n = int(target[row].sum())
            out[i] = {"loss": float(nll[row][target[row]].sum() / max(n, 1)), "tokens": n}
    del model
    return out


def _response_start(ids: List[int], labels: List[int]) -> Optional[int]:
    """Where a sample's trained tokens begin when they are its whole end (labels = the tokens from
    there, -100 before; the first token is never predicted); None for any other pattern."""
    start = next((t for t in range(1, len(labels)) if labels[t] != IGNORE), None)
    if start is None or list(labels[start:]) != list(ids[start:]):
        return None
    return start


def _padded_batch(ids, labels, chunk: Sequence[int]):
    """Right-padded input ids, labels (-100 on padding) and attention mask of rows `chunk`."""
    width = max(len(ids[i]) for i in chunk)
    x = torch.zeros(len(chunk), width, dtype=torch.long)
    y = torch.full((len(chunk), width), -100, dtype=torch.long)
    attn = torch.zeros(len(chunk), width, dtype=torch.long)
    for row, i in enumerate(chunk):
        n = len(ids[i])
        x[row, :n] = torch.tensor(ids[i])
        y[row, :n] = torch.tensor(labels[i])
        attn[row, :n] = 1
    return x, y, attn
