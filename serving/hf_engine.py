"""The transformers+PEFT engine: the light default, and the one for prefix-tuned adapters.

One base model in memory. LoRA adapters are loaded under their served names (least recently
used ones dropped past `max_adapters`), verified on every (re)load, into the batched LoRA
layers of `batched_lora`: a batch of requests for different LoRA adapters and the base runs
through one decoding loop (`hf_decode`), its rows grouped by adapter, each with its own
sampling settings and its own end. A prefix adapter has its own thin PEFT wrapper over the
same base weights; its rows run as their own batch, with no LoRA segments planned.

A request that fails (its adapter does not load, its prompt does not fit) gets its error in
its place; a batch that fails as a whole runs again row by row. `generate` is not
re-entrant: one caller (the server's batching worker) drives it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import Any, Generic, TypeVar

from serving.batched_lora import LoRASet, LoRAWeights, load_lora
from serving.batcher import Batcher
from serving.engine import (
    AdapterSpec,
    Generation,
    GenerationRequest,
    TokenCallback,
    check_context,
    cut_at_stop,
)
from serving.hf_decode import Rows, RowSampler, decode
from serving.tokens import Tokens

log = logging.getLogger(__name__)

RowCallback = Callable[[int, int], None]  # (row of the batch, new token id)
V = TypeVar("V")


class _LRU(Generic[V]):
    """Loaded adapters by served name; past `capacity` the least recently used is dropped."""

    def __init__(self, capacity: int, what: str) -> None:
        self.capacity = capacity
        self.what = what
        self.items: OrderedDict[str, V] = OrderedDict()

    def get(self, name: str, load: Callable[[], V]) -> V:
        item = self.items.get(name)
        if item is None:
            item = self.items[name] = load()
            log.info("loaded %s %s", self.what, name)
            while len(self.items) > self.capacity:
                evicted, _ = self.items.popitem(last=False)
                log.info("unloaded %s %s (least recently used)", self.what, evicted)
        self.items.move_to_end(name)
        return item


def _lora_name(request: GenerationRequest) -> str:
    adapter = request.adapter
    return adapter.served_name if adapter is not None and adapter.method == "lora" else ""


class HFEngine:
    name = "hf"

    def __init__(
        self,
        base_dir: Path,
        *,
        max_adapters: int = 8,
        dtype: str = "float32",
        max_model_len: int | None = None,
        max_batch: int = 32,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.tokens = Tokens(base_dir)
        self.tokenizer: Any = self.tokens.tokenizer
        self.tokenizer.padding_side = "left"  # generation continues each row at its end
        self.model: Any = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=getattr(torch, dtype)
        ).eval()
        limit = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.max_model_len = min(max_model_len or limit, limit)
        self.max_adapters = max_adapters
        self._lora_set = LoRASet(self.model)
        self._loras: _LRU[LoRAWeights] = _LRU(max_adapters, "LoRA")
        self._prefixes: _LRU[Any] = _LRU(max_adapters, "prefix adapter")  # -> PeftModel
        self._lock = threading.Lock()
        self._batcher = Batcher(self.generate, max_batch=max_batch)

    def refuses(self, method: str, rank: int | None) -> str | None:
        return None if method in ("lora", "prefix") else f"unknown adapter method {method!r}"

    async def start(self) -> None:
        await self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.stop()

    async def submit(
        self, request: GenerationRequest, on_token: TokenCallback | None = None
    ) -> Generation:
        return await self._batcher.submit(request, on_token)

    # ---- adapters: verified on every (re)load ----------------------------------------------

    def _load_lora(self, adapter: AdapterSpec) -> LoRAWeights:
        def load() -> LoRAWeights:
            weights = load_lora(adapter.checkout(), self.model.dtype)
            self._lora_set.wrap(weights)
            return weights

        return self._loras.get(adapter.served_name, load)

    def _load_prefix(self, adapter: AdapterSpec) -> Any:
        from peft import PeftModel

        return self._prefixes.get(
            adapter.served_name,
            lambda: PeftModel.from_pretrained(self.model, adapter.checkout()).eval(),
        )

    # ---- generation -------------------------------------------------------------------------

    def generate(
        self,
        requests: list[GenerationRequest],
        on_token: RowCallback | None = None,
        cancelled: Callable[[int], bool] | None = None,
    ) -> list[Generation | Exception]:
        """Generate for a batch; rows with different adapters share one pass where they can.

        `on_token(i, token_id)` is called for each new token of request `i` as it is made
        (up to its own max_tokens, never past its end of sequence): streaming hooks in here.
        `cancelled(i)` says request `i`'s client has left: its row ends at the next step.
        A request that fails (its adapter cannot be loaded, its prompt does not fit) gets its
        error in its place; the others are answered.
        """
        results: list[Generation | Exception | None] = [None] * len(requests)
        is_cancelled = cancelled or (lambda _: False)
        with self._lock:
            groups: dict[str, list[int]] = {}  # by prefix adapter ("" for LoRA and base rows)
            loras: dict[str, LoRAWeights] = {}
            for i, request in enumerate(requests):
                try:
                    groups.setdefault(self._prepare(request, loras), []).append(i)
                except Exception as exc:  # this request's alone
                    results[i] = exc
            for members in groups.values():
                # Rows for the same LoRA adapter side by side: one segment each per layer.
                rows = sorted(members, key=lambda i: _lora_name(requests[i]))
                self._run_isolated(rows, requests, loras, results, on_token, is_cancelled)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _prepare(self, request: GenerationRequest, loras: dict[str, LoRAWeights]) -> str:
        """Load the request's adapter (verified) and check its prompt; its group key."""
        length = len(self.tokens.encode(request.prompt))
        check_context(length, request.params.max_tokens, self.max_model_len)
        adapter = request.adapter
        if adapter is None:
            return ""
        if adapter.method == "prefix":
            self._load_prefix(adapter)
            return adapter.served_name
        loras[adapter.served_name] = self._load_lora(adapter)
        return ""

    def _run_isolated(
        self,
        rows: list[int],
        requests: list[GenerationRequest],
        loras: dict[str, LoRAWeights],
        results: list[Generation | Exception | None],
        on_token: RowCallback | None,
        cancelled: Callable[[int], bool],
    ) -> None:
        """Run rows together; if that fails, run each again alone, so that the error reaches
        only the request that causes it (a row already streamed to shares the error)."""
        progress = Rows([[] for _ in rows], [None] * len(rows))
        try:
            for i, generation in zip(
                rows, self._run(rows, requests, loras, on_token, cancelled, progress), strict=True
            ):
                results[i] = generation
            return
        except Exception as exc:
            if len(rows) == 1:
                log.warning("request failed in the engine: %s", exc)
                results[rows[0]] = exc
                return
            log.warning("batch of %d failed (%s); running its rows one by one", len(rows), exc)
            for slot, i in enumerate(rows):
                if slot in progress.streamed:
                    results[i] = exc
                else:
                    self._run_isolated([i], requests, loras, results, on_token, cancelled)

    def _run(
        self,
        rows: list[int],
        requests: list[GenerationRequest],
        loras: dict[str, LoRAWeights],
        on_token: RowCallback | None,
        cancelled: Callable[[int], bool],
        progress: Rows,
    ) -> list[Generation]:
        """One batch through the decoding loop: the rows share a prefix adapter (or none)."""
        batch = [requests[i] for i in rows]
        first = batch[0].adapter
        prefix = None
        if first is not None and first.method == "prefix":
            prefix = self._load_prefix(first).get_prompt(batch_size=len(batch))
        names = [_lora_name(r) for r in batch]

        def replan(live: list[int]) -> None:  # LoRA segments over the rows still running
            segments = []
            start = 0
            for name, group in groupby(names[row] for row in live):
                size = len(list(group))
                if name:
                    segments.append((start, start + size, loras[name]))
                start += size
            self._lora_set.plan(segments)

        encoded = self.tokenizer([r.prompt for r in batch], return_tensors="pt", padding=True)
        params = [r.params for r in batch]
        sampler = RowSampler(params)
        try:
            decode(
                self.model,
                encoded["input_ids"],
                encoded["attention_mask"],
                params,
                eos=self.tokenizer.eos_token_id,
                text_of=self.tokens.decode,
                sampler=sampler,
                on_token=None if on_token is None else lambda slot, t: on_token(rows[slot], t),
                cancelled=lambda slot: cancelled(rows[slot]),
                replan=replan,
                prefix=prefix,
                rows=progress,
            )
        finally:
            self._lora_set.clear()
        generations = []
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        for slot, (request, length) in enumerate(zip(batch, prompt_lengths, strict=True)):
            made = progress.made[slot]
            text, stopped = cut_at_stop(self.tokens.decode(made), request.params.stop)
            finish: Any = "stop" if stopped or progress.ended[slot] == "stop" else "length"
            logprobs = (
                tuple(sampler.logprobs[slot][: len(made)])
                if request.params.logprobs is not None
                else None
            )
            generations.append(Generation(text, tuple(made), int(length), finish, logprobs))
        return generations
