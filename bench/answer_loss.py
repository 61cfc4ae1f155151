"""Routing judged by its answers: the loss of a reference answer under what a request is
served with (the base, one adapter, or an exact mixture as the server builds it).

Shared by `bench.mixing` and `bench.router --part regret`. The demo's adapters are trained
with the demo's full budget once, into a scratch registry under the home's `bench/mixing`,
and reused by later runs.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

from support.paths import DATA
from switchboard_lora.demo import FULL, ensure_adapters
from switchboard_lora.registry import BaseModelInfo, Registry, RegistrySettings
from switchboard_lora.router.router import Router
from switchboard_lora.serving.mixture import build_mixture
from switchboard_lora.trainer.data import Example
from switchboard_lora.trainer.encoding import encode
from switchboard_lora.trainer.losses import loss_per_row

Plan = list[tuple[str, float]]  # what serves a request: (ref, weight) pairs; [] is the base


def routed(router: Router, texts: list[str]) -> list[Plan]:
    """Per request, the adapters the router serves it with and their weights ([] = base)."""
    return [[(c.ref, c.weight) for c in d.choices] for d in router.decide_texts(texts)]


def chat(question: str, answer: str) -> Example:
    return Example(line=0, messages=(("user", question.strip()), ("assistant", answer.strip())))


def demo_registry(home: Path | None) -> Path:
    """Where the benchmarks' demo adapters live (trained once, reused)."""
    settings = RegistrySettings() if home is None else RegistrySettings(home=home)
    scratch = settings.home_dir / "bench" / "mixing"
    scratch.mkdir(parents=True, exist_ok=True)
    return scratch


def trained(registry: Registry, base: BaseModelInfo, domains: tuple[str, ...]) -> dict[str, str]:
    """Each domain's served ref, trained now if its adapter is missing (progress on stderr:
    stdout is for --json)."""
    say = partial(print, file=sys.stderr, flush=True)
    return ensure_adapters(registry, base, DATA, FULL, say, domains)


class AnswerLoss:
    """The base model with the adapters loaded as plans need them (each once)."""

    def __init__(self, registry: Registry, base: BaseModelInfo, max_tokens: int = 256) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.registry = registry
        self.base = base
        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(base.path)
        pad = self.tokenizer.pad_token_id
        self.pad = pad if pad is not None else 0
        self.model: Any = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
        self._loaded: dict[tuple[tuple[str, float], ...], str] = {}

    def _adapter(self, plan: Plan) -> str | None:
        """The PEFT adapter serving `plan` (a single LoRA, or the exact mixture the server
        would build), loaded once."""
        from peft import PeftModel

        if not plan:
            return None
        key = tuple(sorted(plan))
        if key not in self._loaded:
            if len(plan) == 1:
                version, path = self.registry.checkout(plan[0][0])
            else:
                mix = build_mixture(self.registry, plan, self.base)
                version, path = self.registry.checkout(mix.version.ref)
            name = version.served_name
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            self._loaded[key] = name
        return self._loaded[key]

    def encode(self, example: Example) -> Any:
        """The example's encoding, or None where it does not fit `max_tokens`."""
        return encode(self.tokenizer, example, self.max_tokens)

    def usable(self, examples: list[Example]) -> list[tuple[Example, Any]]:
        """The examples that fit `max_tokens`, each with its encoding."""
        found = [(x, self.encode(x)) for x in examples]
        return [(x, e) for x, e in found if e is not None]

    def rows(self, encoded: list[Any], plans: list[Plan]) -> list[tuple[float, int]]:
        """(summed answer loss, answer tokens) per request, each under its plan."""
        from peft import PeftModel

        out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
        for adapter in {self._adapter(p) for p in plans}:
            picked = [i for i, p in enumerate(plans) if self._adapter(p) == adapter]
            batch = [encoded[i] for i in picked]
            if isinstance(self.model, PeftModel) and adapter is None:
                with self.model.disable_adapter():
                    scored = loss_per_row(self.model, batch, 8, self.pad)
            else:
                if adapter is not None:
                    self.model.set_adapter(adapter)
                scored = loss_per_row(self.model, batch, 8, self.pad)
            for i, row in zip(picked, scored, strict=True):
                out[i] = row
        return out
