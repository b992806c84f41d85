"""Parameter-selection merging (Ju et al., EMNLP 2024, arXiv 2410.03743).

Every element of the merged tensor is copied whole from ONE non-base model, drawn at
random with probability proportional to the model's `weight`; nothing is averaged.
With `resample: true`, an element whose drawn value equals the base model's value (an
unchanged parameter) is drawn again among the models that did change it.

Determinism: the draw for element i of tensor T is a function of (seed, T, i) only:
its uniform is the i-th output of a counter-based stream keyed by a hash of (seed, T)
(`uniforms.py`), so thread count, execution order, shard layout and `--cuda` leave the
output bit-identical. The resampling draw reuses the same uniform,
rescaled inside the interval that picked the first model (still uniform on [0, 1)
given that pick, and independent of it), so no second random stream is needed.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

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

from sftmerge.plugins import page_release, select_kernel, workers
from sftmerge.plugins.uniforms import Uniforms, element_uniforms
from sftmerge.plugins.stats import SELECTION_STATS

PAPER_URL = "https://arxiv.org/abs/2410.03743"
# Elements examined per resampling step: bounds index and candidate temporaries.
RESAMPLE_CHUNK = 1 << 22


def validate_weights(weights: Sequence[float]) -> None:
    if any(w < 0 for w in weights):
        raise ValueError(f"param_select weights must be >= 0; got {list(weights)}")
    if not any(w > 0 for w in weights):
        raise ValueError(f"param_select weights must not all be 0; got {list(weights)}")


def select_elements(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    uniforms: Union[Uniforms, torch.Tensor],
    base: Optional[torch.Tensor] = None,
    resample: bool = False,
    tensor_name: Optional[str] = None,
    model_ids: Optional[Sequence[str]] = None,
    kernel: str = "auto",
) -> torch.Tensor:
    """Pick each element from one of `tensors` (the kernel, free of mergekit types).

    `uniforms`: the tensor's stream (`element_uniforms`), or explicit float32 values, one
    per element (any device).
    Selection statistics for the tensor are recorded in `SELECTION_STATS`, per model
    under `model_ids` (default: the position).
    """
    validate_weights(weights)
    if resample and base is None:
        raise ValueError("param_select: resample: true needs a base_model")
    if kernel not in ("auto", "torch", "cpu"):
        raise ValueError(f"param_select: unknown kernel {kernel!r}")
    shape = tensors[0].shape
    edges = _interval_edges(weights)
    positive = [k for k, w in enumerate(weights) if w > 0]
    inputs = list(tensors) + ([base] if base is not None else [])
    fused = kernel == "cpu" or (
        kernel == "auto" and len(positive) <= select_kernel.MAX_MODELS
        and all(select_kernel.supports(t) and t.dtype == tensors[0].dtype for t in inputs)
    )
    if fused:
        out, picks, equal_before, equal_after = select_kernel.select_positive(
            [tensors[k] for k in positive], [weights[k] for k in positive], [edges[k] for k in positive],
            uniforms, base, resample,
        )
        counts = [0] * len(tensors)
        for k, n in zip(positive, picks):
            counts[k] = n
    else:
        u = uniforms.tensor() if isinstance(uniforms, Uniforms) else uniforms
        out, counts, equal_before, equal_after = _select_torch(tensors, weights, edges, positive, u, base, resample)

    ids = [str(i) for i in (model_ids or range(len(tensors)))]
    SELECTION_STATS.record(
        tensor_name,
        numel=out.numel(),
        picks=dict(zip(ids, counts)),
        equal_base_before=equal_before,
        equal_base_after=equal_after,
    )
    return out.reshape(shape)


def _select_torch(tensors, weights, edges, positive, uniforms, base, resample):
    """The rule as whole-tensor torch passes (any device); `select_kernel` is its fused CPU twin."""
    flat = [t.reshape(-1) for t in tensors]
    u = uniforms.to(device=flat[0].device)

    # Model k owns [edges[k], edges[k + 1]); zero-weight models own empty intervals and
    # are never an interval start, so never picked. Intervals are nested by start, so
    # assigning model k wherever u >= edges[k], in order, leaves each element with the
    # model whose interval holds u. `at_least[k]` counts u >= edges[k] for the report.
    out = None
    at_least = {positive[0]: u.numel()}
    for k in positive[1:]:
        take = u >= edges[k]
        at_least[k] = int(torch.count_nonzero(take))
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
        equal_before = equal_after = 0
        # Element ranges bound the index tensors' memory on huge tensors (embeddings).
        for start in range(0, out.numel(), RESAMPLE_CHUNK):
            stop = min(start + RESAMPLE_CHUNK, out.numel())
            idx = (out[start:stop] == b[start:stop]).nonzero().squeeze(1).add_(start)
            equal_before += idx.numel()
            if resample and idx.numel():
                equal_after += _resample(flat, b, weights, edges, u, out, idx, counts)
            else:
                equal_after += idx.numel()
    return out, counts, equal_before, equal_after


def _interval_edges(weights: Sequence[float]) -> list:
    total = float(sum(weights))
    edges = [0.0]
    for w in weights:
        edges.append(edges[-1] + w / total)
    edges[-1] = 1.0
    return edges


def _resample(flat, base, weights, edges, u, out, idx, counts) -> int:
    """Redraw the base-equal elements `idx` among the positive-weight models that changed them.

    Updates `out` and `counts` in place and returns how many elements still equal the
    base (those no such model changed). Every operation is on contiguous 1-D tensors of
    one dtype (bool masks viewed as uint8): each pass costs about as much as the whole
    selection does per element, and mixed-dtype in-place ops take slow casting paths.
    """
    positive = [k for k, w in enumerate(weights) if w > 0]
    n_pos = len(positive)
    pos_weights = [weights[k] for k in positive]
    equal = all(w == pos_weights[0] for w in pos_weights)
    base_sel = base.index_select(0, idx)
    cand = [flat[k].index_select(0, idx) for k in positive]
    changed = [(c != base_sel).view(torch.uint8) for c in cand]  # 0/1 per positive model

    # Slot (index into `positive`) of the first draw, by the selection pass's own rule,
    # and the uniform rescaled inside its interval: again uniform on [0, 1), independent
    # of the first draw.
    u2 = u.index_select(0, idx)
    slot = torch.zeros(idx.shape, dtype=torch.uint8, device=u.device)
    for k in positive[1:]:
        slot.add_((u2 >= edges[k]).view(torch.uint8))
    if equal:
        u2.mul_(n_pos).sub_(slot.to(torch.float32))
    else:
        index = slot.to(torch.int64)
        lo = torch.tensor([edges[k] for k in positive], dtype=torch.float32, device=u.device)
        width = torch.tensor([w / sum(weights) for w in pos_weights], dtype=torch.float32, device=u.device)
        u2.sub_(lo[index]).div_(width[index])
    u2.clamp_(0.0, 1.0 - 2.0**-23)

    # The redraw picks the first changed model whose cumulative (renormalised) weight
    # exceeds u2 * total; `chosen` counts the models passed before it. Where no model
    # changed the element, every model is passed (chosen == n_pos) and the base stays.
    chosen = torch.zeros(idx.shape, dtype=torch.uint8, device=u.device)
    if equal:
        # The same rule in integers: the first model whose running count of changed
        # models exceeds floor(u2 * number changed).
        n_changed = torch.zeros_like(chosen)
        for ch in changed:
            n_changed.add_(ch)
        threshold = u2.mul_(n_changed.to(torch.float32)).to(torch.uint8)
        running = n_changed.zero_()
        for ch in changed:
            running.add_(ch)
            chosen.add_((running <= threshold).view(torch.uint8))
    else:
        as_float = [ch.to(torch.float32) for ch in changed]
        total = torch.zeros(idx.shape, dtype=torch.float32, device=u.device)
        for w, ch in zip(pos_weights, as_float):
            total.add_(ch, alpha=w)
        threshold = u2.mul_(total)
        running = total.zero_()
        for w, ch in zip(pos_weights, as_float):
            running.add_(ch, alpha=w)
            chosen.add_((running <= threshold).view(torch.uint8))

    values = base_sel
    for j, c in enumerate(cand):
        torch.where(chosen == j, c, values, out=values)
    out.index_copy_(0, idx, values)

    kept = chosen == n_pos
    moved_to = torch.bincount(chosen, minlength=n_pos + 1).tolist()
    first = torch.bincount(slot, minlength=n_pos).tolist()
    not_moved = torch.bincount(slot[kept], minlength=n_pos).tolist()
    for j, k in enumerate(positive):
        counts[k] += moved_to[j] - (first[j] - not_moved[j])
    return moved_to[n_pos]


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
    merged = select_elements(
        tensors,
        weight.values_for(models),
        uniforms,
        base=base,
        resample=resample,
        tensor_name=group.metadata.name,
        model_ids=[str(entry.id) for entry in models],
    )
    # The inputs are read; their mapped file pages need not stay in this process. Dropping
    # them (page tables walked twice, a system call per tensor) overlaps the next tensor.
    inputs = tensors + [base]
    workers.later(lambda: page_release.release(inputs))
    return merged


def register() -> None:
    """Add `param_select` to mergekit's registry unless it is there (idempotent)."""
    from mergekit import merge_methods

    if param_select_merge.spec.name not in {m.spec.name for m in merge_methods.registered_methods()}:
        merge_methods.register(param_select_merge)


# Importing this module is enough to make the method available by name.
register()
