"""A plain TRL SFTTrainer script: the reference `make bench-train` compares against.

What a TRL user would write for the same config: the same model, data, chat format
and optimisation settings, no sftmerge machinery. The samples come in the order that
`sftmerge train sft` gives order 0 (TRL's sequential sampler over the rows laid out in
that order, epoch after epoch), so both train on the same batches: the same padding,
the same arithmetic. With TRL's random sampler the batches differ, and so does the
padded work (1.7% more for sftmerge on the default benchmark), whatever the trainers do.
Prints one JSON line with its training throughput, counted as sftmerge counts it.

    python -m bench.train_plain CONFIG.yaml OUT_DIR
"""

from __future__ import annotations

import json
import sys

import torch
import yaml
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from sftmerge.data.pairs import load_pairs
from sftmerge.train.order import epoch_orders


def main(config_path: str, out: str) -> None:
    c = yaml.safe_load(open(config_path, encoding="utf-8"))
    pairs = load_pairs(c["data"], "train", c.get("num_samples"), c.get("data_seed", 0))
    epochs = c["num_train_epochs"]
    global_batch = c["per_device_train_batch_size"] * c.get("gradient_accumulation_steps", 1)
    orders = epoch_orders(len(pairs), epochs, c["order_seed"], 0, c.get("order_mode", "sample"), global_batch,
                          c.get("reshuffle_each_epoch", True))
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": pairs[i].prompt}],
         "completion": [{"role": "assistant", "content": pairs[i].response}]}
        for epoch in orders for i in epoch
    ])
    on_cpu = not torch.cuda.is_available()
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    args = SFTConfig(
        output_dir=out,
        num_train_epochs=1,  # the rows hold every epoch, in order
        train_sampling_strategy="sequential",
        per_device_train_batch_size=c["per_device_train_batch_size"],
        gradient_accumulation_steps=c.get("gradient_accumulation_steps", 1),
        learning_rate=c["learning_rate"],
        lr_scheduler_type=c.get("lr_scheduler_type", "linear"),
        warmup_steps=c.get("warmup_steps", 0),
        weight_decay=c.get("weight_decay", 0.0),
        max_grad_norm=c.get("max_grad_norm", 1.0),
        optim=c.get("optim", "adamw_torch"),
        max_length=c.get("max_length", 512),
        seed=c.get("seed", 42),
        bf16=bf16,
        activation_checkpointing=c.get("gradient_checkpointing", False),  # TRL's default is on
        logging_steps=c.get("logging_steps", 5),
        save_steps=c.get("save_steps", 50),
        save_total_limit=1,
        completion_only_loss=True,
        report_to="none",
        use_cpu=on_cpu,
    )
    model = AutoModelForCausalLM.from_pretrained(c["base"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(c["base"])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    metrics = trainer.train().metrics
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])  # every epoch's rows
    print(json.dumps({"train_seconds": metrics["train_runtime"], "tokens": tokens,
                      "tokens_per_second": tokens / metrics["train_runtime"], "steps": trainer.state.global_step,
                      "precision": "bf16" if bf16 else "fp32"}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
