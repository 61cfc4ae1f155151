"""What the forgetting report measures every method on, and how (the *probe*).

Held-out rows of every domain, general text (perplexity) and BIG-bench `general_knowledge`
questions (log-likelihood of each choice), encoded once. The `Meter` scores a model on them;
given a chooser (the router, for Switchboard), each request under the adapter it picks.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.forgetting.budget import Budget
from switchboard_lora.trainer.data import Example, load_jsonl
from switchboard_lora.trainer.encoding import IGNORE, Encoded, encode
from switchboard_lora.trainer.losses import loss_per_row, token_mean

# Chooses, per request text, the adapter to score it with (None: the base).
Chooser = Callable[[list[str]], list[str | None]]


@dataclass(frozen=True)
class Item:
    """One scored sequence and the request text the router sees for it."""

    encoded: Encoded
    request: str


@dataclass(frozen=True)
class Question:
    request: str
    choices: tuple[Encoded, ...]
    answer: int


@dataclass
class Probe:
    """The fixed measurement sets, encoded once."""

    domains: dict[str, list[Item]]
    general: list[Item]
    knowledge: list[Question]


@dataclass
class Scores:
    domain_loss: dict[str, float]  # the domains measured
    general_perplexity: float | None = None
    knowledge_accuracy: float | None = None
    knowledge_logprob: float | None = None  # mean log p(right answer)
    routes: dict[str, dict[str, int]] = field(default_factory=dict)  # probe -> route -> count


def encode_question(tokenizer: Any, question: str, choice: str) -> Encoded:
    """`Question: …\\nAnswer: <choice>`, the loss taken on the choice's tokens only."""
    prompt = tokenizer(f"Question: {question}\nAnswer:", add_special_tokens=False)["input_ids"]
    answer = tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
    return Encoded(prompt + answer, [IGNORE] * len(prompt) + answer)


def build_probe(tokenizer: Any, data: Path, order: Sequence[str], budget: Budget) -> Probe:
    def items(examples: Sequence[Example]) -> list[Item]:
        out = []
        for example in examples:
            encoded = encode(tokenizer, example, budget.max_length)
            if encoded is not None:
                out.append(Item(encoded, example.request))
        return out

    domains = {
        d: items(load_jsonl(data / d / "eval.jsonl").examples[: budget.eval_rows]) for d in order
    }
    # The last rows of the general file: the first ones are replay's general text.
    general = items(load_jsonl(data / "general" / "eval.jsonl").examples[-budget.general_rows :])
    knowledge = []
    with (data / "general" / "knowledge.jsonl").open(encoding="utf-8") as f:
        for line in list(f)[: budget.knowledge]:
            row = json.loads(line)
            choices = tuple(encode_question(tokenizer, row["question"], c) for c in row["choices"])
            knowledge.append(Question(row["question"], choices, int(row["answer"])))
    return Probe(domains, general, knowledge)


@contextlib.contextmanager
def _active(model: Any, adapter: str | None) -> Iterator[None]:
    """Score with `adapter` (a PEFT adapter name) or, for None, with the plain base."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        yield
    elif adapter is None:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(adapter)
        yield


class Meter:
    """Measures a model on the probe; with a chooser, each request under its chosen adapter."""

    def __init__(self, probe: Probe, pad_id: int, batch_size: int) -> None:
        self.probe = probe
        self.pad_id = pad_id
        self.batch_size = batch_size

    def losses(
        self, model: Any, items: Sequence[Item], choose: Chooser | None
    ) -> tuple[list[tuple[float, int]], Counter[str]]:
        chosen: list[str | None] = [None] * len(items)
        if choose:  # each distinct request routed once (a question's choices share one)
            unique = list(dict.fromkeys(i.request for i in items))
            picks = dict(zip(unique, choose(unique), strict=True))
            chosen = [picks[i.request] for i in items]
        out: list[tuple[float, int]] = [(0.0, 0)] * len(items)
        for adapter in set(chosen):
            picked = [i for i, c in enumerate(chosen) if c == adapter]
            with _active(model, adapter):
                rows = loss_per_row(
                    model, [items[i].encoded for i in picked], self.batch_size, self.pad_id
                )
            for i, row in zip(picked, rows, strict=True):
                out[i] = row
        return out, Counter(c or "base" for c in chosen) if choose else Counter()

    def domains(
        self, model: Any, names: Sequence[str], choose: Chooser | None = None
    ) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
        losses, routes = {}, {}
        for name in names:
            rows, counts = self.losses(model, self.probe.domains[name], choose)
            losses[name] = token_mean(rows)
            routes[name] = dict(counts)
        return losses, routes

    def everything(self, model: Any, choose: Chooser | None = None) -> Scores:
        losses, routes = self.domains(model, list(self.probe.domains), choose)
        rows, counts = self.losses(model, self.probe.general, choose)
        perplexity = math.exp(token_mean(rows))
        routes["general"] = dict(counts)
        flat = [Item(choice, q.request) for q in self.probe.knowledge for choice in q.choices]
        rows, counts = self.losses(model, flat, choose)
        routes["knowledge"] = dict(counts)
        right, logprob, at = 0, 0.0, 0
        for q in self.probe.knowledge:
            logps = [-total for total, _ in rows[at : at + len(q.choices)]]
            at += len(q.choices)
            right += max(range(len(logps)), key=logps.__getitem__) == q.answer
            logprob += logps[q.answer]
        count = max(len(self.probe.knowledge), 1)
        return Scores(losses, perplexity, right / count, logprob / count, routes)
