"""What the HTTP layer calls: from `model` (auto, base, a ref or a mix) to an adapter the
engine can load, and from a prompt to a generation through the engine. Routing is the
router's (explicit mixes included), arms are `experiment_arms`', mixtures `mixture`'s."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from switchboard_lora.registry.bases import BaseModelInfo
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.registry.store import Registry
from switchboard_lora.router.router import Router, request_text
from switchboard_lora.serving.decision_recorder import DecisionRecorder
from switchboard_lora.serving.engines.interface import (
    SEED_RANGE,
    AdapterSpec,
    Engine,
    Generation,
    GenerationRequest,
    SamplingParams,
    TokenCallback,
    check_context,
    unservable_by,
)
from switchboard_lora.serving.experiment_arms import ExperimentArms
from switchboard_lora.serving.mixture import WEIGHT_STEP, build_mixture, collect_mixes
from switchboard_lora.serving.served import Served

# What a request asks to continue: text, token ids, or chat messages.
Prompt = str | tuple[int, ...] | list[dict[str, str]]


def _sample(params: SamplingParams, index: int) -> SamplingParams:
    """The settings of a request's sample `index`: its own seed, if the request has one."""
    if params.seed is None or index == 0:
        return params
    low, high = SEED_RANGE
    return replace(params, seed=low + (params.seed + index - low) % (high - low + 1))


def unservable(
    version: VersionInfo, base: BaseModelInfo, engine: Engine
) -> SwitchboardError | None:
    """Why `engine`, serving `base`, cannot serve this version (None: it can): behind refusing
    a request, listing models and choosing routes."""
    refusal = engine.refuses(version.method, version.rank)
    served_by = f"served by the {engine.name} engine"
    return unservable_by(version, base.fingerprint, base.id, served_by, refusal)


@dataclass
class Service:
    registry: Registry
    router: Router
    engine: Engine
    base: BaseModelInfo
    mix_step: float = WEIGHT_STEP
    max_mixes: int = 32
    record: DecisionRecorder | None = None  # logs routed decisions for review
    _specs: dict[str, AdapterSpec] = field(default_factory=dict)
    _mixes_used: dict[str, float] = field(default_factory=dict)  # served name -> last use
    arms: ExperimentArms = field(init=False)

    def __post_init__(self) -> None:
        self.arms = ExperimentArms(self.registry, self.adapter)

    def resolve(
        self,
        model: str,
        request: str | list[dict[str, str]],
        mix: list[tuple[str, float]],
        headers: Mapping[str, str] | None = None,
    ) -> Served:
        decision = self.router.decide(request, model=model, mix=mix)
        if model == "auto" and not mix and self.record is not None:
            self.record(request_text(request), decision)
        if decision.kind == "base":
            return Served(decision, None)
        if decision.kind == "mix":
            return Served(decision, self._mixture([(c.ref, c.weight) for c in decision.choices]))
        version = decision.choices[0].version
        assert version is not None  # registry routes always name versions
        if model in ("auto", version.name):  # a pinned version or alias is not split
            split = self.arms.split(decision, version, headers or {})
            if split is not None:
                return split
        return Served(decision, version)

    def _mixture(self, parts: list[tuple[str, float]]) -> VersionInfo:
        mixture = build_mixture(self.registry, parts, self.base, self.mix_step)
        self._mixes_used[mixture.version.served_name] = time.time()
        if mixture.built:  # one more in the registry: the least recently used may go
            collect_mixes(self.registry, self.max_mixes, self._mixes_used)
        return mixture.version

    def adapter(self, version: VersionInfo | None) -> AdapterSpec | None:
        """The engine's view of a version. Its files are checked out (verified) here, before
        the request joins a batch, and again by the engine whenever it (re)loads them."""
        if version is None:
            return None
        refusal = unservable(version, self.base, self.engine)
        if refusal is not None:
            raise refusal
        spec = self._specs.get(version.served_name)
        if spec is None:
            ref = version.ref
            spec = AdapterSpec(
                version.served_name,
                lambda: self.registry.checkout(ref, self.base)[1],
                "prefix" if version.method == "prefix" else "lora",
            )
            spec.checkout()
            self._specs[version.served_name] = spec
        return spec

    def admit(
        self,
        model: str,
        prompts: list[Prompt],
        mix: list[tuple[str, float]],
        headers: Mapping[str, str],
        params: SamplingParams,
        n: int = 1,
    ) -> tuple[Served, list[GenerationRequest]]:
        """What serves a request, and its generations: one per prompt and sample, prompt by
        prompt (chat messages are rendered by the base's template; token ids are taken as
        they are); a seeded request's samples are seeded seed, seed + 1, … as vLLM seeds
        them. The blocking part of a request, in one call."""
        if len(prompts) > 1 and model == "auto" and not mix:
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT,
                "model 'auto' routes one prompt at a time: send one prompt per request, or "
                "name the model (base, an adapter) for a list of prompts",
            )
        tokens = self.engine.tokens
        texts = [
            p if isinstance(p, str) else tokens.decode(p) if isinstance(p, tuple) else p
            for p in prompts
        ]
        served = self.resolve(model, texts[0], mix, headers)
        requests = []
        for prompt, text in zip(prompts, texts, strict=True):
            rendered = text if isinstance(text, str) else tokens.render_chat(text)
            # Encoded once: every sample, and the engine, take these ids.
            ids = prompt if isinstance(prompt, tuple) else tuple(tokens.encode(rendered))
            for sample in range(n):
                requests.append(
                    self.prepare(rendered, served.version, _sample(params, sample), ids)
                )
        return served, requests

    def prepare(
        self,
        prompt: str,
        version: VersionInfo | None,
        params: SamplingParams,
        prompt_ids: tuple[int, ...] | None = None,
    ) -> GenerationRequest:
        """A generation, checked here, before batching (in the engine a bad request would
        fail the whole batch): its length, its token ids, what the engine declines, its guide
        (compiled once, and kept for the engine). The prompt's ids go with it: the engine
        does not encode it again."""
        tokens = self.engine.tokens
        ids = prompt_ids if prompt_ids is not None else tuple(tokens.encode(prompt))
        request = GenerationRequest(prompt, self.adapter(version), params, ids)
        check_context(len(ids), params.max_tokens, self.engine.max_model_len)
        named = params.token_ids() | set(ids)
        outside = sorted(t for t in named if t >= tokens.vocab_size)
        if outside:
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT,
                f"token id {outside[0]} is outside the vocabulary (0 to {tokens.vocab_size - 1})",
            )
        declined = self.engine.declines(params)
        if declined is not None:
            field_name, why = declined
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT,
                f"{field_name} is not supported by the {self.engine.name} engine: {why}",
            )
        if params.guide is not None:
            tokens.grammars.compile(params.guide)
        return request

    async def generate(
        self, request: GenerationRequest, on_token: TokenCallback | None = None
    ) -> Generation:
        return await self.engine.submit(request, on_token)
