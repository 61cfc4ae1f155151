"""The transformers+PEFT engine: the light default, and the one for prefix-tuned adapters.

One base model in memory. LoRA adapters are loaded under their served names (least recently
used ones dropped past `max_adapters`) into the batched LoRA layers of `batched_lora`: a batch
of requests for different LoRA adapters and the base runs as one `generate` call, its rows
grouped by adapter. A prefix adapter has its own thin PEFT wrapper over the same base weights;
its rows run as their own batch, with no LoRA segments planned.

`generate` is not re-entrant: one caller (the server's batching worker) drives it.
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


class _RowStreamer:
    """Hands each row's new tokens to a callback as `generate` makes them (transformers'
    own streamers take one row only)."""

    def __init__(
        self,
        rows: list[int],
        requests: list[GenerationRequest],
        callback: RowCallback | None,
        eos: int | None,
    ) -> None:
        self.rows, self.callback, self.eos = rows, callback, eos
        self.left = [requests[i].params.max_tokens for i in rows]
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # the first call carries the prompts
            self._prompt_seen = True
            return
        assert self.callback is not None
        for slot, token in enumerate(value.reshape(-1).tolist()):
            if self.left[slot] <= 0:
                continue
            if token == self.eos:
                self.left[slot] = 0
                continue
            self.left[slot] -= 1
            self.callback(self.rows[slot], int(token))

    def end(self) -> None:
        return None


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

    # ---- adapters ---------------------------------------------------------------------------

    def _load_lora(self, adapter: AdapterSpec) -> LoRAWeights:
        def load() -> LoRAWeights:
            weights = load_lora(adapter.path, self.model.dtype)
            self._lora_set.wrap(weights)
            return weights

        return self._loras.get(adapter.served_name, load)

    def _load_prefix(self, adapter: AdapterSpec) -> Any:
        from peft import PeftModel

        return self._prefixes.get(
            adapter.served_name,
            lambda: PeftModel.from_pretrained(self.model, adapter.path).eval(),
        )

    # ---- generation -------------------------------------------------------------------------

    def generate(
        self, requests: list[GenerationRequest], on_token: RowCallback | None = None
    ) -> list[Generation]:
        """Generate for a batch; rows with different adapters share one pass where they can.

        `on_token(i, token_id)` is called for each new token of request `i` as it is made
        (up to its own max_tokens, never past its end of sequence): streaming hooks in here.
        """
        results: dict[int, Generation] = {}
        with self._lock:

            def group_key(i: int) -> tuple[Any, ...]:
                request = requests[i]
                prefix = (
                    request.adapter.served_name
                    if request.adapter and request.adapter.method == "prefix"
                    else ""
                )
                p = request.params
                return (prefix, p.greedy, p.temperature, p.top_p, p.seed)

            order = sorted(range(len(requests)), key=group_key)
            for _, members in groupby(order, key=group_key):
                # Rows for the same LoRA adapter side by side: one segment each per layer.
                rows = sorted(members, key=lambda i: _lora_name(requests[i]))
                streamer = _RowStreamer(rows, requests, on_token, self.tokenizer.eos_token_id)
                batch = [requests[i] for i in rows]
                for i, generation in zip(rows, self._run(batch, streamer), strict=True):
                    results[i] = generation
        return [results[i] for i in range(len(requests))]

    def _run(self, batch: list[GenerationRequest], streamer: Any) -> list[Generation]:
        """One `generate` call: rows share a prefix adapter (or none) and sampling settings."""
        import torch

        params = batch[0].params
        first = batch[0].adapter
        kwargs: dict[str, Any] = {}
        model = self.model
        if first is not None and first.method == "prefix":
            model = self._load_prefix(first)
        else:
            segments = []
            for _, rows in groupby(enumerate(batch), key=lambda row: _lora_name(row[1])):
                indices = [i for i, _ in rows]
                adapter = batch[indices[0]].adapter
                if adapter is not None:
                    segments.append((indices[0], indices[-1] + 1, self._load_lora(adapter)))
            self._lora_set.plan(segments)
        encoded = self.tokenizer([r.prompt for r in batch], return_tensors="pt", padding=True)
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        longest = encoded["input_ids"].shape[1]
        for request, length in zip(batch, prompt_lengths, strict=True):
            check_context(length, request.params.max_tokens, self.max_model_len)
        if not params.greedy:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        else:
            kwargs.update(do_sample=False)
        try:
            with torch.inference_mode():
                output = model.generate(
                    **encoded,
                    max_new_tokens=max(r.params.max_tokens for r in batch),
                    pad_token_id=self.tokenizer.pad_token_id,
                    streamer=streamer if streamer.callback else None,
                    **kwargs,
                )
        finally:
            self._lora_set.clear()
        generations = []
        eos = self.tokenizer.eos_token_id
        for row, request, length in zip(output, batch, prompt_lengths, strict=True):
            new = row[longest:].tolist()[: request.params.max_tokens]
            finish: Any = "length"
            if eos in new:
                new, finish = new[: new.index(eos)], "stop"
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            text, stopped = cut_at_stop(text, request.params.stop)
            generations.append(
                Generation(text, tuple(new), int(length), "stop" if stopped else finish)
            )
        return generations
