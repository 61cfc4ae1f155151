"""Trainer benchmark: throughput against transformers' Trainer, time per domain, effect.

    python -m bench.train [--part all|throughput|domains] [--examples 128] [--json]

- throughput: training tokens/s of Switchboard's loop and of a plain `transformers.Trainer`
  + PEFT on the same tokenised examples, model, LoRA settings, batch size and learning rate,
  one after the other in this run. Target: ratio >= 1.0.
- domains: every demo domain (500 examples, 1 epoch, max length 256) on the real base: time,
  held-out loss before/after, and the general-text loss with the adapter applied.
  Target: <= 5 minutes per domain on the 2-core CPU.
Tokens are real (non-padding) tokens, counted the same way for both loops.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bench._common import HomeOption, default_base, run_benchmark
from support.paths import DATA
from switchboard_lora.demo_data import DOMAINS
from switchboard_lora.registry import BaseModelInfo
from switchboard_lora.trainer.config import TrainConfig
from switchboard_lora.trainer.data import Dataset, load_jsonl
from switchboard_lora.trainer.encoding import encode
from switchboard_lora.trainer.loop import train_adapter


def _baseline_tokens_per_second(
    base: BaseModelInfo, dataset: Dataset, config: TrainConfig
) -> float:
    """A plain transformers Trainer + PEFT over the same encoded examples."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    encoded = [encode(tokenizer, e, config.max_length) for e in dataset.examples]
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded if e is not None]
    torch.manual_seed(config.seed)
    model: Any = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
    )
    model = get_peft_model(model, lora)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=config.batch_size,
            num_train_epochs=config.epochs,
            learning_rate=config.learning_rate,
            warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio in transformers 5
            max_grad_norm=config.max_grad_norm,
            lr_scheduler_type="linear",
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            seed=config.seed,
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
        trainer.remove_callback(PrinterCallback)  # it prints metrics to stdout: keeps --json clean
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return sum(len(r["input_ids"]) for r in rows) * config.epochs / seconds


def throughput(base: BaseModelInfo, examples: int) -> dict[str, Any]:
    full = load_jsonl(DATA / "math" / "train.jsonl")
    dataset = Dataset(full.path, full.format, full.examples[:examples], ())
    config = TrainConfig(eval_fraction=0.0, max_general_examples=0)
    baseline = _baseline_tokens_per_second(base, dataset, config)
    with tempfile.TemporaryDirectory() as out:
        ours = train_adapter(base, dataset, config, Path(out), progress=False)
    switchboard = ours.metrics["train_tokens_per_second"]
    return {
        "examples": examples,
        "switchboard_tokens_per_s": switchboard,
        "trainer_tokens_per_s": baseline,
        "ratio": switchboard / baseline,
    }


def domains(base: BaseModelInfo, names: list[str]) -> dict[str, dict[str, float]]:
    general = load_jsonl(DATA / "general" / "eval.jsonl")
    results = {}
    for name in names:
        train = load_jsonl(DATA / name / "train.jsonl")
        held_out = load_jsonl(DATA / name / "eval.jsonl")
        config = TrainConfig(epochs=1.0, max_length=256)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = train_adapter(
                base,
                train,
                config,
                Path(out),
                eval_data=held_out,
                general_data=general,
                progress=False,
            )
            seconds = time.perf_counter() - start
        results[name] = {
            "seconds_total": seconds,
            "seconds_training": result.metrics["train_seconds"],
            "steps": float(result.steps),
            "examples": result.metrics["train_examples"],
            "tokens_per_s": result.metrics["train_tokens_per_second"],
            **{
                k: result.metrics[k]
                for k in (
                    "eval_loss_before",
                    "eval_loss_after",
                    "general_loss_before",
                    "general_loss_after",
                )
            },
        }
        print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
    return results


def main(
    part: Annotated[str, typer.Option(help="all | throughput | domains")] = "all",
    examples: Annotated[int, typer.Option(help="Examples for the throughput comparison.")] = 128,
    only: Annotated[
        str | None, typer.Option(help="Comma-separated domains (default: all five).")
    ] = None,
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    base = default_base(home)
    report: dict[str, Any] = {}
    if part in ("all", "throughput"):
        report["throughput"] = throughput(base, examples)
    if part in ("all", "domains"):
        report["domains"] = domains(base, only.split(",") if only else list(DOMAINS))
    if as_json:
        print(json.dumps(report, indent=2))
        return
    if "throughput" in report:
        t = report["throughput"]
        print(
            f"throughput on {t['examples']} math examples (LoRA r=8, 7 projections, batch 8, fp32)"
        )
        print(f"  switchboard loop   {t['switchboard_tokens_per_s']:8.1f} tokens/s")
        print(f"  transformers Trainer {t['trainer_tokens_per_s']:6.1f} tokens/s")
        print(f"  ratio              {t['ratio']:8.2f}  (target >= 1.0)")
    if "domains" in report:
        print("per domain: 500 examples, 1 epoch, max length 256 (target <= 300 s)")
        print(
            f"  {'domain':9} {'total s':>8} {'train s':>8} {'tok/s':>7} {'eval before':>12} "
            f"{'after':>7} {'general before':>15} {'after':>7}"
        )
        for name, r in report["domains"].items():
            print(
                f"  {name:9} {r['seconds_total']:8.1f} {r['seconds_training']:8.1f} "
                f"{r['tokens_per_s']:7.1f} {r['eval_loss_before']:12.3f} "
                f"{r['eval_loss_after']:7.3f} {r['general_loss_before']:15.3f} "
                f"{r['general_loss_after']:7.3f}"
            )


if __name__ == "__main__":
    run_benchmark(main)
