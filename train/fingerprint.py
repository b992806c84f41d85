"""A hash of a model's starting weights, recorded in summary.json: runs that claim the same
start (the K orders of a run, PAFT's branches) can be checked to have had it."""

from __future__ import annotations

import hashlib

import torch


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter's bytes (in the model's own dtype and order)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
