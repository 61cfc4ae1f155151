"""What the HTTP layer calls: from `model` (auto, base, a ref or a mix) to an adapter the
engine can load, and from a prompt to a generation through the engine."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from switchboard_lora.registry.bases import BaseModelInfo
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.experiments.model import Arm, Experiment
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.registry.store import Registry
from switchboard_lora.router.decision import Choice, Decision
from switchboard_lora.router.router import Router, request_text
from switchboard_lora.serving.decision_recorder import DecisionRecorder
from switchboard_lora.serving.engines.interface import (
    AdapterSpec,
    Engine,
    Generation,
    GenerationRequest,
    SamplingParams,
    TokenCallback,
    check_context,
)
from switchboard_lora.serving.mixture import WEIGHT_STEP, build_mixture, collect_mixes

log = logging.getLogger(__name__)

EXPERIMENTS_REFRESH_S = 1.0


@dataclass(frozen=True, slots=True)
class Served:
    """What served a request: the decision behind it, and the one adapter the engine ran
    (a mixture when several were chosen)."""

    decision: Decision
    version: VersionInfo | None
    experiment: Experiment | None = None
    arm: Arm | None = None

    def to_json(self) -> dict[str, object]:
        data = self.decision.to_json()
        data["served"] = (
            {"ref": self.version.ref, "served_name": self.version.served_name}
            if self.version
            else {"ref": "base", "served_name": None}
        )
        if self.experiment is not None and self.arm is not None:
            data["experiment"] = {"name": self.experiment.name, "arm": self.arm.ref}
        return data


def unservable(
    version: VersionInfo, base: BaseModelInfo, engine: Engine
) -> SwitchboardError | None:
    """Why `engine`, serving `base`, cannot serve this version (None: it can). The one check
    behind refusing a request, listing models and choosing routes."""
    if version.base_fingerprint != base.fingerprint:
        return SwitchboardError(
            ErrorCode.INCOMPATIBLE_BASE,
            f"{version.ref} was made for another base model than the one served ({base.id})",
        )
    reason = engine.refuses(version.method, version.rank)
    if reason is not None:
        return SwitchboardError(
            ErrorCode.INVALID_ADAPTER,
            f"{version.ref} cannot be served by the {engine.name} engine: {reason}",
        )
    return None


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
    _experiments: dict[str, Experiment] = field(default_factory=dict)  # by adapter name
    _experiments_read: float = -math.inf
    _arms: dict[tuple[int, int], VersionInfo] = field(default_factory=dict)
    _out_of_rotation: dict[int, frozenset[int]] = field(default_factory=dict)

    def resolve(
        self,
        model: str,
        request: str | list[dict[str, str]],
        mix: list[tuple[str, float]],
        headers: Mapping[str, str] | None = None,
    ) -> Served:
        if mix:
            decision = Decision(
                "mix",
                tuple(Choice(self.registry.resolve(ref), ref, weight) for ref, weight in mix),
                reason="explicit mix",
                model=model,
            )
        else:
            decision = self.router.decide(request, model=model)
            if model == "auto" and self.record is not None:
                self.record(request_text(request), decision)
        if decision.kind == "base":
            return Served(decision, None)
        if decision.kind == "mix":
            return Served(decision, self._mixture([(c.ref, c.weight) for c in decision.choices]))
        version = decision.choices[0].version
        assert version is not None  # registry routes always name versions
        if model in ("auto", version.name):  # a pinned version or alias is not split
            experiment = self._running().get(version.name)
            if experiment is not None:
                return self._split(decision, experiment, headers or {})
        return Served(decision, version)

    def _mixture(self, parts: list[tuple[str, float]]) -> VersionInfo:
        mixture = build_mixture(self.registry, parts, self.base, self.mix_step)
        self._mixes_used[mixture.version.served_name] = time.time()
        if mixture.built:  # one more in the registry: the least recently used may go
            collect_mixes(self.registry, self.max_mixes, self._mixes_used)
        return mixture.version

    def _running(self) -> dict[str, Experiment]:
        """Running experiments, re-read at most once a second (every replica sees a change
        within that; arms' versions are re-resolved with it, so a deleted one drops out)."""
        now = time.monotonic()
        if now - self._experiments_read > EXPERIMENTS_REFRESH_S:
            self._experiments = self.registry.experiments.running()
            self._experiments_read = now
            self._arms.clear()
        return self._experiments

    def _split(
        self, decision: Decision, experiment: Experiment, headers: Mapping[str, str]
    ) -> Served:
        key = headers.get(experiment.key_header) if experiment.key_header else None
        while True:
            excluded = self._out_of_rotation.get(experiment.id, frozenset())
            arm = experiment.assign(key, excluded)
            if arm is None:  # every arm is out: the adapter's live version serves
                return Served(decision, decision.choices[0].version)
            if arm.is_base:
                return Served(decision, None, experiment, arm)
            try:
                version = self._arms.get((experiment.id, arm.position))
                if version is None:
                    version = self.registry.resolve(arm.ref)
                    self.adapter(version)  # verified, and servable by this engine
                    self._arms[(experiment.id, arm.position)] = version
                return Served(decision, version, experiment, arm)
            except SwitchboardError as exc:
                log.error(
                    "experiment %s: arm %s leaves rotation: %s", experiment.name, arm.ref, exc
                )
                self._out_of_rotation[experiment.id] = excluded | {arm.position}

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
                lambda: self.registry.checkout(ref)[1],
                "prefix" if version.method == "prefix" else "lora",
            )
            spec.checkout()
            self._specs[version.served_name] = spec
        return spec

    def admit(
        self,
        model: str,
        request: str | list[dict[str, str]],
        mix: list[tuple[str, float]],
        headers: Mapping[str, str],
        params: SamplingParams,
    ) -> tuple[Served, GenerationRequest]:
        """What serves a request (a prompt, or chat messages rendered by the base's template),
        and the generation to submit: the blocking part of a request, in one call."""
        served = self.resolve(model, request, mix, headers)
        prompt = request if isinstance(request, str) else self.engine.tokens.render_chat(request)
        return served, self.prepare(prompt, served.version, params)

    def prepare(
        self, prompt: str, version: VersionInfo | None, params: SamplingParams
    ) -> GenerationRequest:
        # Checked here, before batching: in the engine it would fail the whole batch.
        prompt_tokens = len(self.engine.tokens.encode(prompt))
        check_context(prompt_tokens, params.max_tokens, self.engine.max_model_len)
        return GenerationRequest(prompt, self.adapter(version), params)

    async def generate(
        self, request: GenerationRequest, on_token: TokenCallback | None = None
    ) -> Generation:
        return await self.engine.submit(request, on_token)
