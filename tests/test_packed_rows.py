"""A CPU batch as its shared prefix once and its rows packed (train/packed_rows.py): the same loss
and gradients as TRL's padded batch, on the batches TRL's own collator makes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.common import tiny_llama
from sftmerge.train.config import SFTRunConfig
from sftmerge.train.packed_rows import packable, packed_nll, packs, shared_prefix


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("packed") / "base", max_positions=512)


def trainer_for(base: Path, tmp: Path, pack_rows: bool, batch: int = 8, samples: int = 24):
    """The trainer `sftmerge train sft` builds, on the tiny model and arith's chat-template rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftmerge.data.pairs import load_pairs
    from sftmerge.train.order import epoch_orders
    from sftmerge.train.trainer_inputs import sft_args, training_dataset
    from sftmerge.train.trainers import OrderedSFTTrainer

    config = SFTRunConfig(base=str(base), data="arith", num_samples=samples, output_dir=str(tmp / "run"),
                          per_device_train_batch_size=batch, max_length=256, pack_rows=pack_rows)
    pairs = load_pairs(config.data, "train", config.num_samples, config.data_seed)
    torch.manual_seed(0)
    return OrderedSFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        args=sft_args(config, tmp / "trainer", "fp32"), train_dataset=training_dataset(config, pairs),
        processing_class=AutoTokenizer.from_pretrained(base), pack_rows=pack_rows,
        epoch_orders=epoch_orders(len(pairs), 1, config.order_seed, 0, "sample", batch, True))


def loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=(batch["labels"][:, 1:] != -100).sum())
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


def test_packed_batches_give_the_padded_loss_and_gradients(tiny, tmp_path, monkeypatch):
    padded = trainer_for(tiny, tmp_path / "a", pack_rows=False)
    packed = trainer_for(tiny, tmp_path / "b", pack_rows=True)
    batches = list(padded.get_train_dataloader())
    assert len(batches) == 3 and set(batches[0]) == {"input_ids", "attention_mask", "labels"}
    first = batches[0]
    lengths = first["attention_mask"].sum(1)
    assert int(lengths.min()) < first["input_ids"].shape[1]  # padding for the packs to leave out
    prefix = shared_prefix(first["input_ids"], first["labels"], lengths.tolist())
    assert 20 <= prefix < int(lengths.min())  # the system turn of SmolLM2's chat template

    import sftmerge.train.packed_rows as packed_rows

    for budget in (packed_rows.PACK_TOKENS, 100):  # one pack, and several (rows alone or in pairs)
        monkeypatch.setattr(packed_rows, "PACK_TOKENS", budget)
        for batch in batches:
            want, want_grads = loss_and_grads(padded, batch)
            got, got_grads = loss_and_grads(packed, batch)
            assert got == pytest.approx(want, rel=1e-5)
            for name, g in want_grads.items():
                scale = float(g.abs().max())
                assert float((got_grads[name] - g).abs().max()) <= 2e-5 * scale + 1e-9, name
    assert packed.packed_batches == 2 * len(batches) and padded.packed_batches == 0


def test_rows_without_a_shared_prefix_or_on_the_left_are_still_right(tiny):
    from transformers import AutoModelForCausalLM

    from sftmerge.train.response_logits import response_logits, token_nll

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (3, 12), generator=gen)
    ids[1, 0] = ids[0, 0] + 1  # no common first token
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    assert shared_prefix(ids, labels, mask.sum(1).tolist()) == 0
    total, count = packed_nll(model, ids, mask, labels)
    _, logits, targets = response_logits(model, {"input_ids": ids, "attention_mask": mask}, labels)
    assert count == int((targets != -100).sum())
    assert float(total) == pytest.approx(float(token_nll(logits, targets).sum()), rel=1e-5)
    left = torch.cat([mask[2:, 9:], mask[2:, :9]], dim=1)  # padding first: not packed
    assert packed_nll(model, ids[2:], left, labels[2:]) is None
    assert packed_nll(model, ids, mask, torch.full_like(ids, -100)) is None  # nothing trained


def test_packs_keep_the_batch_order_within_the_budget():
    assert packs([30, 40, 50, 300, 10], prefix=10, budget=100) == [[0, 1, 2], [3], [4]]
    assert packs([30, 40], prefix=10, budget=1000) == [[0, 1]]


def test_only_models_that_run_packs_take_them(tiny):
    from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    assert packable(model)
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    assert not packable(model)  # no KV cache in training
    eager = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32, attn_implementation="eager")
    assert not packable(eager)  # its masks are additive floats
    windowed = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                sliding_window=8, attn_implementation="sdpa"))
    assert not packable(windowed)
