"""`switchboard train …`: one adapter on the frozen base, optionally published."""

from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from switchboard_lora.cli.kit import JsonFlag, emit, open_base, open_registry, settings_of

log = logging.getLogger(__name__)

_DEFAULT_DATA = Path("data")


def train(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter (domain) name.")],
    data: Annotated[
        Path,
        typer.Option(help="Training JSONL: chat, prompt/completion, instruction or text rows."),
    ],
    method: Annotated[str, typer.Option(help="lora or prefix.")] = "lora",
    base: Annotated[str | None, typer.Option(help="Cached base name or model directory.")] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 16,
    target_modules: Annotated[
        str | None, typer.Option(help="Comma-separated LoRA targets (default: attention + MLP).")
    ] = None,
    virtual_tokens: Annotated[int, typer.Option(help="Prefix length (prefix tuning).")] = 16,
    epochs: Annotated[float, typer.Option()] = 1.0,
    lr: Annotated[float | None, typer.Option(help="Default: 3e-4 LoRA, 3e-3 prefix.")] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    max_length: Annotated[int, typer.Option(help="Tokens per example (longer are cut).")] = 256,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    eval_fraction: Annotated[float, typer.Option(help="Held-out share of --data.")] = 0.1,
    eval_data: Annotated[
        Path | None, typer.Option(help="Held-out JSONL instead of a split of --data.")
    ] = None,
    general_data: Annotated[
        Path | None,
        typer.Option(help="General text for the general-ability loss (default: data/general)."),
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    routing_examples: Annotated[int, typer.Option(help="Requests kept for the router.")] = 50,
    max_bad_fraction: Annotated[
        float, typer.Option(help="Refuse a data file with a larger share of bad rows.")
    ] = 0.1,
    out: Annotated[
        Path | None, typer.Option(help="Adapter directory (default: a run dir).")
    ] = None,
    publish: Annotated[bool, typer.Option(help="Publish as a new registry version.")] = False,
    parent: Annotated[
        str | None, typer.Option(help="Lineage (default: NAME's current version, if any).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train one adapter on the frozen base; with --publish it becomes NAME's next version."""
    from switchboard_lora.registry.refs import validate_name
    from switchboard_lora.trainer.config import DEFAULT_TARGETS, TrainConfig
    from switchboard_lora.trainer.data import load_jsonl
    from switchboard_lora.trainer.loop import train_adapter

    validate_name(name)
    config = TrainConfig(
        method=method,  # type: ignore[arg-type]  # TrainConfig refuses anything else
        rank=rank,
        alpha=alpha,
        target_modules=tuple(target_modules.split(",")) if target_modules else DEFAULT_TARGETS,
        num_virtual_tokens=virtual_tokens,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        max_steps=max_steps,
        eval_fraction=eval_fraction,
        seed=seed,
        routing_examples=routing_examples,
    )
    settings = settings_of(ctx)
    base_info = open_base(ctx, base)
    train_set = load_jsonl(data, max_bad_fraction=max_bad_fraction)
    eval_set = load_jsonl(eval_data, max_bad_fraction=max_bad_fraction) if eval_data else None
    general_path = general_data or _DEFAULT_DATA / "general" / "eval.jsonl"
    general_set = load_jsonl(general_path) if general_path.is_file() else None
    if general_set is None:
        log.info("no %s: the general-text loss is not measured", general_path)
    registry = open_registry(ctx) if publish else None
    if registry is not None and parent is None:
        current = registry.find(name)
        parent = current.ref if current else None
    made_out = out is None
    if out is None:
        runs = settings.home_dir / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out = Path(tempfile.mkdtemp(prefix=f"{name}-{stamp}-", dir=runs))
    try:
        result = train_adapter(
            base_info, train_set, config, out, eval_data=eval_set, general_data=general_set
        )
    except BaseException:
        if made_out:
            shutil.rmtree(out, ignore_errors=True)  # interrupted or failed: no half a run left
        raise
    ref = None
    if registry is not None:
        ref = registry.publish(out, name, base_info, parent=parent).ref
    report = {
        "ref": ref,
        "adapter_dir": str(out),
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        **{k: round(v, 5) for k, v in result.metrics.items()},
    }
    report.setdefault("eval_loss_before", None)
    report.setdefault("eval_loss_after", None)
    lines = [f"{k}: {v}" for k, v in report.items()]
    emit(report, as_json, "\n".join(lines))
