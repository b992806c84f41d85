"""Parameter-selection merging (Ju et al., EMNLP 2024, arXiv 2410.03743).

Every element of the merged tensor is copied whole from ONE non-base model, drawn at
random with probability proportional to the model's `weight`; nothing is averaged.
With `resample: true`, an element whose drawn value equals the base model's value (an
unchanged parameter) is drawn again among the models that did change it.

Determinism: the draw for element i of tensor T is a function of (seed, T, i) only.
The uniforms come from a CPU generator seeded with a hash of (seed, T) and are then
moved to the merge device, so thread count, execution order, shard layout and
`--cuda` leave the output bit-identical. The resampling draw reuses the same uniform,
rescaled inside the interval that picked the first model (still uniform on [0, 1)
given that pick, and independent of it), so no second random stream is needed.
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch
from pydantic import Field
from typing_extensions import Annotated

from mergekit.merge_methods import (
    BasePolicy,
    InputContract,
    PerNonBase,
    TensorGroup,
    merge_method,
)

from sftmerge.plugins.stats import SELECTION_STATS

PAPER_URL = "https://arxiv.org/abs/2410.03743"
# Elements redrawn per step: bounds the [K, chunk] temporaries on huge tensors.
RESAMPLE_CHUNK = 1 << 22


def tensor_seed(seed: int, tensor_name: Optional[str]) -> int:
    """A 63-bit generator seed for one tensor, stable across processes and platforms."""
    key = f"sftmerge.param_select:{seed}:{tensor_name or ''}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def element_uniforms(seed: int, tensor_name: Optional[str], numel: int) -> torch.Tensor:
    """float32 uniforms in [0, 1), one per element, generated on the CPU."""
    generator = torch.Generator(device="cpu").manual_seed(tensor_seed(seed, tensor_name))
    return torch.rand(numel, generator=generator, dtype=torch.float32)


def validate_weights(weights: Sequence[float]) -> None:
    if any(w < 0 for w in weights):
        raise ValueError(f"param_select weights must be >= 0; got {list(weights)}")
    if not any(w > 0 for w in weights):
        raise ValueError(f"param_select weights must not all be 0; got {list(weights)}")


def select_elements(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    uniforms: torch.Tensor,
    base: Optional[torch.Tensor] = None,
    resample: bool = False,
    tensor_name: Optional[str] = None,
    model_ids: Optional[Sequence[str]] = None,
) -> torch.Tensor:
    """Pick each element from one of `tensors` (the kernel, free of mergekit types).

    `uniforms` is a flat float32 tensor with one value per element (any device).
    Selection statistics for the tensor are recorded in `SELECTION_STATS`, per model
    under `model_ids` (default: the position).
    """
    validate_weights(weights)
    if resample and base is None:
        raise ValueError("param_select: resample: true needs a base_model")
    shape = tensors[0].shape
    flat = [t.reshape(-1) for t in tensors]
    u = uniforms.to(device=flat[0].device)

    # Model k owns [edges[k], edges[k + 1]); zero-weight models own empty intervals and
    # are never an interval start, so never picked. Intervals are nested by start, so
    # assigning model k wherever u >= edges[k], in order, leaves each element with the
    # model whose interval holds u. `at_least[k]` counts u >= edges[k] for the report.
    edges = _interval_edges(weights)
    positive = [k for k, w in enumerate(weights) if w > 0]
    out = None
    at_least = {positive[0]: u.numel()}
    for k in positive[1:]:
        take = u >= edges[k]
        at_least[k] = int(take.sum())
        if out is None:
            out = torch.where(take, flat[k], flat[positive[0]])
        else:
            torch.where(take, flat[k], out, out=out)
        del take
    if out is None:
        out = flat[positive[0]].clone()
    counts = [0] * len(flat)
    for i, k in enumerate(positive):
        counts[k] = at_least[k] - (at_least[positive[i + 1]] if i + 1 < len(positive) else 0)

    equal_before = equal_after = None
    if base is not None:
        b = base.reshape(-1)
        idx = (out == b).nonzero().squeeze(1)
        equal_before = equal_after = idx.numel()
        if resample and equal_before:
            for chunk in idx.split(RESAMPLE_CHUNK):
                _resample(flat, b, weights, edges, u, out, chunk, counts)
            equal_after = int((out == b).sum())

    ids = [str(i) for i in (model_ids or range(len(flat)))]
    SELECTION_STATS.record(
        tensor_name,
        numel=out.numel(),
        picks=dict(zip(ids, counts)),
        equal_base_before=equal_before,
        equal_base_after=equal_after,
    )
    return out.reshape(shape)


def _interval_edges(weights: Sequence[float]) -> list:
    total = float(sum(weights))
    edges = [0.0]
    for w in weights:
        edges.append(edges[-1] + w / total)
    edges[-1] = 1.0
    return edges


def _first_pick(u: torch.Tensor, weights: Sequence[float], edges: Sequence[float]) -> torch.Tensor:
    """The first draw's model index for a few uniforms (same rule as the full-tensor pass)."""
    pick = torch.full(u.shape, next(k for k, w in enumerate(weights) if w > 0), dtype=torch.int64, device=u.device)
    for k, w in enumerate(weights):
        if w > 0:
            pick.masked_fill_(u >= edges[k], k)
    return pick


def _resample(flat, base, weights, edges, u, out, idx, counts) -> None:
    """Redraw the base-equal elements `idx` among the positive-weight models that changed them.

    Updates `out` and `counts` in place; elements no such model changed keep the base value.
    """
    device = u.device
    base_sel = base.index_select(0, idx)
    cand = torch.stack([t.index_select(0, idx) for t in flat])  # [K, M]
    w = torch.tensor(list(weights), dtype=torch.float64, device=device).unsqueeze(1)
    changed = (cand != base_sel.unsqueeze(0)) & (w > 0)
    some = changed.any(dim=0)
    idx, cand, changed = idx[some], cand[:, some], changed[:, some]
    if idx.numel() == 0:
        return

    # The uniform rescaled inside the first pick's interval is again uniform on [0, 1).
    u_sel = u.index_select(0, idx)
    first = _first_pick(u_sel, weights, edges)
    lo = torch.tensor(edges[:-1], dtype=torch.float64, device=device)
    width = torch.tensor(edges[1:], dtype=torch.float64, device=device) - lo
    u2 = (u_sel.to(torch.float64) - lo[first]) / width[first]

    cw = (w * changed).cumsum(dim=0)  # renormalised cumulative weights, [K, M]
    chosen = (cw <= (u2 * cw[-1]).unsqueeze(0)).sum(dim=0)
    # Rounding at the top edge can overshoot: fall back to the last changed model.
    last = changed.shape[0] - 1 - changed.flip(0).to(torch.int8).argmax(dim=0)
    chosen = torch.minimum(chosen, last)

    out.index_copy_(0, idx, cand.gather(0, chosen.unsqueeze(0)).squeeze(0))
    moved_from = torch.bincount(first, minlength=len(flat)).tolist()
    moved_to = torch.bincount(chosen, minlength=len(flat)).tolist()
    for k in range(len(flat)):
        counts[k] += moved_to[k] - moved_from[k]


@merge_method(
    name="param_select",
    pretty_name="Parameter-Selection Merging",
    reference_url=PAPER_URL,
    contract=InputContract(base=BasePolicy.OPTIONAL, min_non_base=2),
)
def param_select_merge(
    group: TensorGroup,
    weight: PerNonBase[Annotated[float, Field(ge=0)]] = 1.0,
    resample: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    models = group.non_base
    base = group.base.tensor if group.base is not None else None
    tensors = [entry.tensor for entry in models]
    uniforms = element_uniforms(seed, group.metadata.name, tensors[0].numel())
    return select_elements(
        tensors,
        weight.values_for(models),
        uniforms,
        base=base,
        resample=resample,
        tensor_name=group.metadata.name,
        model_ids=[str(entry.id) for entry in models],
    )


# Importing this module is enough to make the method available by name.
from sftmerge.plugins.registration import register_all as _register_all  # noqa: E402

_register_all()
