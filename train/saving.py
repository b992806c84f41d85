"""Trained models as HF folders in the base's dtype, with tokenizer and chat template."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Dict, Optional

import torch


def save_hf_folder(model: torch.nn.Module, folder: Path, dtype: torch.dtype, tokenizer,
                   state_dict: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """An HF model folder in `dtype` (the base's), with tokenizer and chat template."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else model.state_dict()
    drop = tied_duplicates(model)
    sd = {k: v.detach().to("cpu", dtype) for k, v in sd.items() if k not in drop}
    model.save_pretrained(folder, state_dict=sd, safe_serialization=True)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(folder)


def tied_duplicates(model: torch.nn.Module) -> set:
    """Parameter names that are the same tensor as an earlier name (tied embeddings): saved once."""
    seen, dups = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            dups.add(name)
        seen.add(id(p))
    return dups


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model as full weights: LoRA adapters merged into a copy (training goes on untouched)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model
