"""What every engine takes and gives: requests with an adapter (or none), generations.

Engines see adapter *versions* only as served names and verified local directories (from
`Registry.checkout`): a served name is unique per content, so an engine never gets new
weights under a name it has seen.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.records import VersionInfo
from switchboard_lora.serving.engines.grammar import Guide
from switchboard_lora.serving.engines.tokens import Tokens

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

FinishReason = Literal["stop", "length"]

# Below this a temperature is greedy (as in vLLM): dividing logits by 1e-300 gives inf/nan.
GREEDY_BELOW = 1e-5
# What torch's generators (and so both engines) take as a seed.
SEED_RANGE = (-(2**63), 2**64 - 1)
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """An adapter as an engine loads it. `checkout` gives its directory verified (re-hashed,
    repaired from the registry's blobs if damaged): engines call it on every (re)load, never
    trusting a copy they read before."""

    served_name: str
    checkout: Callable[[], Path] = field(compare=False)
    method: Literal["lora", "prefix"]

    @classmethod
    def local(cls, served_name: str, path: Path, method: Literal["lora", "prefix"]) -> AdapterSpec:
        """An adapter directory the caller vouches for (tests, benchmarks): no re-check."""
        return cls(served_name, lambda: path, method)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """One request's sampling, as both engines take it (vLLM's fields and meanings)."""

    max_tokens: int = 64  # 0: none made (a prompt's log probabilities only, `echo`)
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely
    ignore_eos: bool = False  # decode past end of sequence, to max_tokens
    top_k: int = 0  # 0 (or vLLM's -1): every token
    min_p: float = 0.0  # drop tokens below min_p times the most likely one's probability
    repetition_penalty: float = 1.0  # on tokens of the prompt and the answer (>1 discourages)
    presence_penalty: float = 0.0  # OpenAI's: on tokens of the answer, once each
    frequency_penalty: float = 0.0  # OpenAI's: on tokens of the answer, per occurrence
    min_tokens: int = 0  # no end (end of sequence, stop_token_ids) before this many tokens
    stop_token_ids: tuple[int, ...] = ()  # more tokens that end the answer (not part of it)
    logit_bias: tuple[tuple[int, float], ...] = ()  # added to the logits before sampling
    allowed_token_ids: tuple[int, ...] | None = None  # only these tokens may be chosen
    prompt_logprobs: int | None = None  # the prompt's tokens' log probabilities (k more each)
    guide: Guide | None = None

    def __post_init__(self) -> None:
        low, high = SEED_RANGE
        biases = [bias for _, bias in self.logit_bias]
        problems = {
            "max_tokens must be at least 0": self.max_tokens >= 0,
            "temperature must be between 0 and 2": 0.0 <= self.temperature <= 2.0,
            "top_p must be in (0, 1]": 0.0 < self.top_p <= 1.0,
            f"seed must be between {low} and {high}": self.seed is None or low <= self.seed <= high,
            f"top logprobs must be between 0 and {MAX_TOP_LOGPROBS}": all(
                k is None or 0 <= k <= MAX_TOP_LOGPROBS
                for k in (self.logprobs, self.prompt_logprobs)
            ),
            "top_k must be -1, 0 (all tokens) or more": self.top_k >= -1,
            "min_p must be between 0 and 1": 0.0 <= self.min_p <= 1.0,
            "repetition_penalty must be in (0, 2]": 0.0 < self.repetition_penalty <= 2.0,
            "presence_penalty and frequency_penalty must be between -2 and 2": all(
                -2.0 <= x <= 2.0 for x in (self.presence_penalty, self.frequency_penalty)
            ),
            "min_tokens must be between 0 and max_tokens": self.min_tokens >= 0
            and (self.min_tokens <= self.max_tokens),
            "logit_bias values must be between -100 and 100": all(
                -100.0 <= b <= 100.0 for b in biases
            ),
            "allowed_token_ids must not be empty": self.allowed_token_ids != (),
        }
        wrong = [message for message, ok in problems.items() if not ok]
        if wrong:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "; ".join(wrong))

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def token_ids(self) -> set[int]:
        """Every token id these settings name (checked against the vocabulary)."""
        named = {*self.stop_token_ids, *(t for t, _ in self.logit_bias)}
        return named | set(self.allowed_token_ids or ())


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: str  # already rendered (chat template applied by the caller)
    adapter: AdapterSpec | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt_ids: tuple[int, ...] | None = None  # the prompt's tokens; None: encode `prompt`

    def ids(self, tokens: Tokens) -> list[int]:
        """The prompt's token ids, as the engines are fed them."""
        return list(self.prompt_ids) if self.prompt_ids is not None else tokens.encode(self.prompt)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token's log probability under the model (before sampling settings), the most likely
    alternatives at that step, most likely first, and its rank among all (1: the most likely;
    given for a prompt's tokens, as vLLM's `prompt_logprobs` carry it)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    rank: int | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    finish_reason: FinishReason
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per token id, when asked for
    # The prompt's tokens and their log probabilities (the first has none), when asked for
    prompt_ids: tuple[int, ...] = ()
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


TokenCallback = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class EngineChoice:
    """Which engine serves, where, and why (the reason `engine auto` gives, or the setting
    that named it): logged at start and answered by `/readyz`."""

    engine: str
    device: str
    dtype: str
    reason: str


class Engine(Protocol):
    """One interface over vLLM, transformers+PEFT and a gateway's upstreams, as the service
    drives it."""

    name: str
    max_model_len: int
    tokens: Tokens
    choice: EngineChoice | None  # set by `build_engine`

    @property
    def ready(self) -> bool:
        """Whether it can take requests once started (a gateway: while an upstream is up)."""
        ...

    @property
    def unready_reason(self) -> str | None:
        """Why it cannot take requests now (`/readyz` says it), or None."""
        ...

    def refuses(self, method: str, rank: int | None) -> str | None:
        """Why this engine cannot serve an adapter of this method and rank (None: it can)."""
        ...

    def declines(self, params: SamplingParams) -> tuple[str, str] | None:
        """The field of these settings this engine does not serve, and why (None: it serves
        them all)."""
        ...

    def collectors(self) -> list[Collector]:
        """Prometheus collectors of the engine's own state, read at each scrape of /metrics
        (a gateway: its upstreams' health, load and errors); most engines have none."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(
        self, request: GenerationRequest, on_token: TokenCallback | None = None
    ) -> Generation:
        """Generate for one request, concurrently with others; `on_token(id)` sees each new
        token as it is made (streaming hooks in there)."""
        ...


def served_context(base_dir: Path, wanted: int | None = None) -> int:
    """The context length served: `wanted` (SWITCHBOARD_MAX_MODEL_LEN), at most the base's
    own (its config's max_position_embeddings; 2048 where it names none)."""
    config = json.loads((base_dir / "config.json").read_text())
    limit = int(config.get("max_position_embeddings", 2048))
    return min(wanted or limit, limit)


def check_context(prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
    if prompt_tokens + max_tokens > max_model_len:
        raise SwitchboardError(
            ErrorCode.INVALID_INPUT,
            f"prompt of {prompt_tokens} tokens + max_tokens {max_tokens} exceeds "
            f"the model's context of {max_model_len}",
        )


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def unservable_by(
    version: VersionInfo, fingerprint: str, base_name: str, served_by: str, refusal: str | None
) -> SwitchboardError | None:
    """Why a version cannot be `served_by` something serving the base `base_name` (whose
    weights' fingerprint is `fingerprint`), or None. The one rule behind an engine's requests,
    model list and routes, a mixture's components and vLLM's resolver: the adapter was made
    for this base, and the server has no reason of its own against it (`refusal`)."""
    if version.base_fingerprint != fingerprint:
        return SwitchboardError(
            ErrorCode.INCOMPATIBLE_BASE,
            f"{version.ref} was made for another base model than the one served ({base_name})",
        )
    if refusal is not None:
        return SwitchboardError(
            ErrorCode.INVALID_ADAPTER, f"{version.ref} cannot be {served_by}: {refusal}"
        )
    return None
