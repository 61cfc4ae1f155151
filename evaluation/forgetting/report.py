"""The forgetting report: the demo domains trained in turn, and what each method forgets.

Methods: full fine-tuning of the base domain after domain (the baseline), the same with replay,
with EWC and with L2-SP (`trainer.continual`), and Switchboard: one LoRA per domain on the frozen
base, published to a registry, the router choosing per request: the base for requests like the
`base` route's examples (`data/general/routes.jsonl`) or matching no domain.

After each domain every domain seen so far is measured by its held-out loss (score = -loss);
at the start and the end, general ability too: perplexity on general text (XSum articles) and
BIG-bench `general_knowledge` by log-likelihood (accuracy, and the mean log-probability of the
right answer). Switchboard is measured through its router, as it serves: each request is scored
with whatever the router picks for it.

Backward transfer (Lopez-Paz & Ranzato, 2017) on scores: BWT = mean over all but the last
domain of (final score - score just after training it); negative means forgotten.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluation.forgetting.budget import Budget
from evaluation.forgetting.continual import Schedule, SequentialFineTuner
from evaluation.forgetting.probe import Meter, Scores, build_probe
from switchboard_lora.demo_data import DOMAINS
from switchboard_lora.registry.bases import BaseModelInfo
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.trainer.config import TrainConfig
from switchboard_lora.trainer.data import Dataset, Example, load_jsonl
from switchboard_lora.trainer.encoding import Encoded, encode, pad_id
from switchboard_lora.trainer.loop import train_adapter

if TYPE_CHECKING:
    from switchboard_lora.registry.store import Registry
    from switchboard_lora.router.router import Router

log = logging.getLogger(__name__)

SWITCHBOARD = "switchboard"
REMEDIES = ("full", "replay", "ewc", "l2sp")
METHODS = (*REMEDIES, SWITCHBOARD)
LABELS = {
    "full": "full fine-tuning",
    "replay": "full FT + replay",
    "ewc": "full FT + EWC",
    "l2sp": "full FT + L2-SP",
    SWITCHBOARD: "Switchboard (LoRA per domain + router)",
}


@dataclass
class MethodResult:
    method: str
    stages: list[Scores]  # after each domain, in order
    final: Scores
    trainable_parameters: int
    train_seconds: float
    bwt: float = math.nan
    final_domain_loss: float = math.nan

    def summarise(self, order: Sequence[str]) -> None:
        just_after = [self.stages[i].domain_loss[d] for i, d in enumerate(order)]
        final = [self.final.domain_loss[d] for d in order]
        earlier = range(len(order) - 1)
        self.bwt = sum(just_after[i] - final[i] for i in earlier) / max(len(earlier), 1)
        self.final_domain_loss = sum(final) / len(final)


@dataclass
class Report:
    order: list[str]
    budget: Budget
    base: Scores
    methods: list[MethodResult]

    def to_json(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "budget": asdict(self.budget),
            "base": asdict(self.base),
            "methods": [asdict(m) for m in self.methods],
        }


def training_rows(data: Path, domain: str, budget: Budget) -> Dataset:
    """The rows every method trains on for `domain`: the first steps x batch of its file."""
    return load_jsonl(data / domain / "train.jsonl").head(budget.steps * budget.batch_size)


@dataclass(frozen=True)
class Setting:
    """What every method is run on: base, data, domain order, budget, the shared meter."""

    base: BaseModelInfo
    data: Path
    order: Sequence[str]
    budget: Budget
    meter: Meter
    progress: Any = None  # a tqdm bar, advanced per training step


def run_remedy(name: str, setting: Setting) -> MethodResult:
    """Full fine-tuning of a fresh copy of the base over the domains, under remedy `name`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    budget, meter = setting.budget, setting.meter
    tokenizer = AutoTokenizer.from_pretrained(setting.base.path)
    torch.manual_seed(budget.seed)
    model = AutoModelForCausalLM.from_pretrained(setting.base.path, dtype=torch.float32)

    def encode_all(examples: Sequence[Example]) -> list[Encoded]:
        return [e for e in (encode(tokenizer, x, budget.max_length) for x in examples) if e]

    general = load_jsonl(setting.data / "general" / "eval.jsonl").examples
    replay_text = encode_all(general[: -budget.general_rows])  # the probe's rows stay unseen
    schedule = Schedule(budget.steps, budget.batch_size, budget.full_lr, seed=budget.seed)
    tuner = SequentialFineTuner(model, budget.remedy(name), schedule, meter.pad_id, replay_text)
    stages, seconds = [], 0.0
    for i, domain in enumerate(setting.order):
        rows = encode_all(training_rows(setting.data, domain, budget).examples)
        seconds += tuner.train_domain(rows, setting.progress)
        losses, _ = meter.domains(model, setting.order[: i + 1])
        stages.append(Scores(losses))
        log.info("%s after %s: %s", name, domain, losses)
    result = MethodResult(
        name, stages, meter.everything(model), tuner.trainable_parameters, seconds
    )
    result.summarise(setting.order)
    return result


def scratch_registry(home: Path, data: Path) -> tuple[Registry, Router]:
    """A registry of the report's own under `home`, its `base` route given the demo's general
    requests, and a router over it. Plain settings: it never follows SWITCHBOARD_* to a
    shared registry."""
    from switchboard_lora.registry.route_store import BASE_ROUTE
    from switchboard_lora.registry.settings import RegistrySettings
    from switchboard_lora.registry.store import Registry
    from switchboard_lora.router.files import read_routes
    from switchboard_lora.router.router import RegistryRoutes, build_router
    from switchboard_lora.router.settings import RouterSettings

    registry = Registry(RegistrySettings(home=home).registry_url, home)
    general_requests = read_routes(data / "general" / "routes.jsonl")[BASE_ROUTE]
    registry.routes.add_examples(BASE_ROUTE, general_requests, "demo data")
    return registry, build_router(RouterSettings(), RegistryRoutes(registry), home)


def run_switchboard(setting: Setting) -> MethodResult:
    """A LoRA per domain on the frozen base, published to a scratch registry, measured
    through the router after each domain is added (the router sees only what exists)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    budget, meter = setting.budget, setting.meter
    config = TrainConfig(
        max_steps=budget.steps,
        batch_size=budget.batch_size,
        max_length=budget.max_length,
        lr=budget.lora_lr,
        eval_fraction=0.0,
        max_general_examples=0,
        seed=budget.seed,
    )
    with tempfile.TemporaryDirectory(prefix="switchboard-forgetting-") as scratch:
        home = Path(scratch)
        registry, router = scratch_registry(home, setting.data)
        model: Any = AutoModelForCausalLM.from_pretrained(setting.base.path, dtype=torch.float32)
        stages, seconds, trainable = [], 0.0, 0

        def choose(texts: list[str]) -> list[str | None]:
            decisions = router.decide_texts(texts)
            return [d.choices[0].route if d.kind != "base" else None for d in decisions]

        for i, domain in enumerate(setting.order):
            out = home / "runs" / domain
            rows = training_rows(setting.data, domain, budget)
            result = train_adapter(setting.base, rows, config, out, progress=False)
            seconds += result.metrics["train_seconds"]
            trainable += int(result.metrics["trainable_parameters"])
            if setting.progress is not None:
                setting.progress.update(result.steps)
            registry.publish(out, domain, setting.base)
            if isinstance(model, PeftModel):
                model.load_adapter(str(out), adapter_name=domain)
            else:
                model = PeftModel.from_pretrained(model, str(out), adapter_name=domain)
            model.eval()
            losses, routes = meter.domains(model, setting.order[: i + 1], choose)
            stages.append(Scores(losses, routes=routes))
            log.info("switchboard after %s: %s", domain, losses)
        final = meter.everything(model, choose)
        registry.close()
    method = MethodResult(SWITCHBOARD, stages, final, trainable, seconds)
    method.summarise(setting.order)
    return method


def run(
    base: BaseModelInfo,
    data: Path,
    *,
    methods: Sequence[str] = METHODS,
    order: Sequence[str] = DOMAINS,
    budget: Budget | None = None,
    progress: bool = True,
) -> Report:
    """Measure the base, then every method over the domains in `order`."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    budget = budget or Budget()
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SwitchboardError(
            ErrorCode.INVALID_INPUT, f"methods must be among {', '.join(METHODS)}: {unknown}"
        )
    if len(order) < 2 or len(set(order)) < len(order):
        raise SwitchboardError(
            ErrorCode.INVALID_INPUT, "forgetting needs at least two domains, each once"
        )
    missing = [
        d for d in order if not all((data / d / f).is_file() for f in ("train.jsonl", "eval.jsonl"))
    ]
    if missing:
        raise SwitchboardError(
            ErrorCode.NOT_FOUND, f"no train.jsonl and eval.jsonl under {data} for: {missing}"
        )
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    meter = Meter(build_probe(tokenizer, data, order, budget), pad_id(tokenizer), budget.batch_size)
    base_scores = meter.everything(
        AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    )
    results = []
    total = len(methods) * len(order) * budget.steps
    with tqdm(total=total, desc="forgetting", unit="step", disable=not progress) as bar:
        for name in methods:
            bar.set_postfix(method=name)
            setting = Setting(base, data, order, budget, meter, bar)
            if name == SWITCHBOARD:
                results.append(run_switchboard(setting))
            else:
                results.append(run_remedy(name, setting))
    return Report(list(order), budget, base_scores, results)


def _delta(value: float | None, before: float | None, fmt: str) -> str:
    if value is None or before is None:
        return "-"
    return f"{value:{fmt}} ({value - before:+{fmt}})"


def table(report: Report) -> str:
    """The report as a Markdown table, one row per method, the base first."""
    base = report.base
    header = (
        "| method | BWT ↑ | final domain loss ↓ | general perplexity ↓ (Δ) "
        "| general_knowledge acc (Δ) | log p right answer (Δ) | trainable params | train s |"
    )
    lines = [header, "|" + "---|" * 8]
    lines.append(
        f"| base model | - | {sum(base.domain_loss.values()) / len(base.domain_loss):.3f} "
        f"| {base.general_perplexity:.2f} | {base.knowledge_accuracy:.3f} "
        f"| {base.knowledge_logprob:.3f} | 0 | 0 |"
    )
    for m in report.methods:
        final = m.final
        lines.append(
            f"| {LABELS[m.method]} | {m.bwt:+.3f} | {m.final_domain_loss:.3f} "
            f"| {_delta(final.general_perplexity, base.general_perplexity, '.2f')} "
            f"| {_delta(final.knowledge_accuracy, base.knowledge_accuracy, '.3f')} "
            f"| {_delta(final.knowledge_logprob, base.knowledge_logprob, '.3f')} "
            f"| {m.trainable_parameters / 1e6:.1f} M | {m.train_seconds:.0f} |"
        )
    return "\n".join(lines)


def plot(report: Report, path: Path) -> None:
    """Three panels: the first domain's loss as later domains are trained, BWT, and the
    change in general-text perplexity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = report.order[0]
    fig, (curve, bwt, general) = plt.subplots(1, 3, figsize=(15, 4.2))
    for m in report.methods:
        losses = [report.base.domain_loss[first]] + [s.domain_loss[first] for s in m.stages]
        curve.plot(range(len(losses)), losses, marker="o", label=LABELS[m.method])
    curve.set_xticks(range(len(report.order) + 1), ["base", *report.order])
    curve.set_xlabel("after training on")
    curve.set_ylabel(f"held-out loss on {first}")
    curve.set_title(f"Forgetting of the first domain ({first})")
    curve.legend(fontsize=8)
    names = [m.method for m in report.methods]
    bwt.bar(names, [m.bwt for m in report.methods], color="tab:red")
    bwt.axhline(0, color="black", linewidth=0.8)
    bwt.set_title("Backward transfer (score = -loss; < 0: forgotten)")
    before = report.base.general_perplexity or math.nan
    general.bar(
        names,
        [(m.final.general_perplexity or math.nan) - before for m in report.methods],
        color="tab:blue",
    )
    general.axhline(0, color="black", linewidth=0.8)
    general.set_title(f"General-text perplexity change (base {before:.2f})")
    for axis in (bwt, general):
        axis.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
