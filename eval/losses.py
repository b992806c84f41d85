"""Per-sample losses: a model's mean NLL over each sample's trained (response) tokens.

`sftmerge train sft` records them for every training sample (sample_losses.jsonl, through
the scorer the CLI and the pipelines hand to training); the imbalance and step
diagnostics score merged models and snapshots with the same function, so all these
numbers are comparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch

from sftmerge.train.base import base_dtype
from sftmerge.train.response_logits import IGNORE, accepts_positions, response_logits, token_nll


@torch.no_grad()
def sample_losses(model_dir: Path, dataset, batch_size: int = 16, device: Optional[str] = None) -> List[Dict]:
    """Mean loss over each sample's trained (response) tokens under the model saved in `model_dir`.

    `dataset` is the trainer's prepared one: `input_ids`, and `labels` at -100 on the prompt.
    One {"loss", "tokens"} per row, in row order.
    """
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if device == "cpu" else base_dtype(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    positions = accepts_positions(model)
    rows = dataset.with_format(None)
    ids, labels = rows["input_ids"], rows["labels"]
    out = []
    for start in tqdm(range(0, len(ids), batch_size), desc=f"sample losses ({Path(model_dir).name})", leave=False):
        chunk = range(start, min(start + batch_size, len(ids)))
        x, y, attn = _padded_batch(ids, labels, chunk)
        y = y.to(device)
        _, logits, targets = response_logits(model, {"input_ids": x.to(device), "attention_mask": attn.to(device)},
                                             y, positions)
        nll, target = token_nll(logits, targets).cpu(), (targets != IGNORE).cpu()
        for row in range(len(chunk)):
            n = int(target[row].sum())
            out.append({"loss": float(nll[row][target[row]].sum() / max(n, 1)), "tokens": n})
    del model
    return out


def _padded_batch(ids, labels, chunk: range):
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
