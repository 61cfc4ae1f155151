"""The transformers+PEFT engine: the light default, and the one for prefix-tuned adapters.

One base model in memory. LoRA adapters are loaded under their served names (least recently
used ones dropped past `max_adapters`), verified on every (re)load, into the batched LoRA
layers of `batched_lora`. Requests for different LoRA adapters, prefix adapters and the base
decode in one continuous batch (`hf_decode`): a request joins it at the next step, its rows
grouped by LoRA adapter, each with its own sampling settings and its own end. A prefix
adapter has its own thin PEFT wrapper over the same base weights, used for its virtual
tokens' cache; its rows then decode like any other.

A request that fails (its adapter does not load, its prompt does not fit) gets its error in
its place; a prefill or step that fails as a whole runs its rows again one by one. `serve`
is not re-entrant: one caller (the server's batcher) drives it.

Everything lives on one torch device (`device`: auto, cpu, cuda, cuda:N): the base, the LoRA
weights, prefix adapters' caches and the batch's KV cache. A device torch cannot use is
refused before the base loads.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from switchboard_lora.router.devices import default_dtype, torch_device
from switchboard_lora.serving.engines.hf.batched_lora import LoRASet, LoRAWeights, load_lora
from switchboard_lora.serving.engines.hf.batcher import Batcher
from switchboard_lora.serving.engines.hf.decode import DecodeBatch, Row, prefill_groups
from switchboard_lora.serving.engines.hf.feed import Feed
from switchboard_lora.serving.engines.interface import (
    AdapterSpec,
    EngineChoice,
    Generation,
    GenerationRequest,
    SamplingParams,
    TokenCallback,
    check_context,
    served_context,
)
from switchboard_lora.serving.engines.tokens import Tokens

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

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


# Rows decoding together by default: past 32 a CPU step grows with the batch; a GPU step
# is bound by reading the weights until far more rows.
MAX_BATCH = {"cpu": 32, "cuda": 256}


class HFEngine:
    name = "hf"
    ready = True  # once started
    unready_reason: str | None = None
    choice: EngineChoice | None = None

    def __init__(
        self,
        base_dir: Path,
        *,
        max_adapters: int = 8,
        device: str = "auto",
        dtype: str | None = None,
        max_model_len: int | None = None,
        max_batch: int | None = None,
        load_format: Literal["auto", "dummy"] = "auto",
    ) -> None:
        """`load_format="dummy"`: random weights of the base's shape, built on the device
        (benchmarks at a real model's size with no weights to download, as in vLLM)."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        self.device = torch_device(device, "engine device")  # before anything loads
        self.dtype = dtype or default_dtype(self.device)
        torch_dtype = getattr(torch, self.dtype)
        self.tokens = Tokens(base_dir)
        self.tokenizer: Any = self.tokens.tokenizer
        self.tokenizer.padding_side = "left"  # generation continues each row at its end
        if load_format == "dummy":
            with self.device:
                config = AutoConfig.from_pretrained(base_dir)
                self.model: Any = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype)
        self.model = self.model.to(self.device).eval()
        log.info("transformers engine: base on %s in %s", self.device, self.dtype)
        self.max_model_len = served_context(base_dir, max_model_len)
        self.max_adapters = max_adapters
        self._lora_set = LoRASet(self.model)
        self._loras: _LRU[LoRAWeights] = _LRU(max_adapters, "LoRA")
        self._prefixes: _LRU[Any] = _LRU(max_adapters, "prefix adapter")  # -> PeftModel
        self._lock = threading.Lock()
        self.max_batch = max_batch or MAX_BATCH[self.device.type]
        self._batcher = Batcher(self.serve)

    def collectors(self) -> list[Collector]:
        return []  # its requests and tokens are the server's own metrics

    def declines(self, params: SamplingParams) -> tuple[str, str] | None:
        return None  # every setting, on every row

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
            weights = load_lora(adapter.checkout(), self.model.dtype, self.device)
            self._lora_set.wrap(weights)
            return weights

        return self._loras.get(adapter.served_name, load)

    def _load_prefix(self, adapter: AdapterSpec) -> Any:
        from peft import PeftModel

        def load() -> Any:
            model = PeftModel.from_pretrained(self.model, adapter.checkout()).eval()
            # Its prompt encoder on the base's device (PEFT casts the virtual tokens' cache
            # to the base's dtype): that cache joins the batch's.
            model.prompt_encoder.to(self.device)
            return model

        return self._prefixes.get(adapter.served_name, load)

    # ---- generation -------------------------------------------------------------------------

    def serve(self, feed: Feed) -> None:
        """Decode until `feed` has nothing waiting and no row runs: between two steps, take
        what waits (as the batch has room) into the running batch; answer each request as
        its row ends."""
        with self._lock, self._lora_set.cleared_after():
            batch = self._batch(feed)
            while True:
                taken = feed.take(self.max_batch - len(batch))
                for rows in self._prepare(taken, feed).values():
                    for group in prefill_groups(rows):
                        self._admit(batch, group, feed)
                if not batch.rows:
                    if not taken:
                        return
                    continue
                try:
                    ended = batch.step()
                except Exception as exc:
                    log.warning("a step of %d rows failed: %s", len(batch), exc)
                    self._rerun_alone(batch.rows, feed, exc)
                    batch = self._batch(feed)
                    continue
                for row in ended:
                    feed.finish(row.key, row.generation(self.tokens.decode))

    def _batch(self, feed: Feed) -> DecodeBatch:
        return DecodeBatch(
            self.model,
            eos=self.tokenizer.eos_token_id,
            pad=self.tokenizer.pad_token_id,
            text_of=self.tokens.decode,
            plan=self._plan,
            on_token=feed.token,
            left=feed.left,
        )

    def _prepare(
        self, taken: list[tuple[int, GenerationRequest]], feed: Feed
    ) -> dict[str, list[Row]]:
        """Rows for the requests taken, by prefix adapter ("" for LoRA and base rows): each
        adapter loaded (verified) and each prompt checked. A request that fails here is
        answered with its error at once."""
        groups: dict[str, list[Row]] = {}
        for key, request in taken:
            try:
                ids = request.ids(self.tokens)
                check_context(len(ids), request.params.max_tokens, self.max_model_len)
                adapter = request.adapter
                guide = request.params.guide
                grammar = None if guide is None else self.tokens.grammars.compile(guide)
                row = Row(key, request, ids, grammar=grammar)
                if adapter is not None and adapter.method == "prefix":
                    self._load_prefix(adapter)
                    groups.setdefault(adapter.served_name, []).append(row)
                    continue
                if adapter is not None:
                    row.lora_name, row.lora = adapter.served_name, self._load_lora(adapter)
                groups.setdefault("", []).append(row)
            except Exception as exc:  # this request's alone
                feed.finish(key, exc)
        return groups

    def _admit(self, batch: DecodeBatch, rows: list[Row], feed: Feed) -> None:
        """Rows (of one prefix adapter, or none) into the batch; if their prefill fails, each
        again alone, so that the error reaches only the request that causes it (a row already
        streamed to shares it)."""
        adapter = rows[0].request.adapter
        try:
            cache = None
            if adapter is not None and adapter.method == "prefix":
                cache = self._load_prefix(adapter).get_prompt(batch_size=len(rows))
            ended = batch.admit(rows, cache)
        except Exception as exc:
            if len(rows) == 1:
                log.warning("request failed in the engine: %s", exc)
                feed.finish(rows[0].key, exc)
            else:
                log.warning("prefill of %d rows failed (%s); one by one", len(rows), exc)
                for row in rows:
                    if row.streamed:
                        feed.finish(row.key, exc)
                    else:
                        self._admit(batch, [row.again()], feed)
            return
        for row in ended:
            feed.finish(row.key, row.generation(self.tokens.decode))

    def _rerun_alone(self, rows: list[Row], feed: Feed, error: Exception) -> None:
        """After a step failed: rows already streamed to share its error; each other row runs
        again from its start, alone, to its end."""
        for row in rows:
            if row.streamed:
                feed.finish(row.key, error)
                continue
            solo = self._batch(feed)
            self._admit(solo, [row.again()], feed)
            try:
                while solo.rows:
                    for ended in solo.step():
                        feed.finish(ended.key, ended.generation(self.tokens.decode))
            except Exception as exc:
                log.warning("request failed in the engine: %s", exc)
                feed.finish(row.key, exc)

    def _plan(self, rows: list[Row]) -> None:
        """LoRA segments over the rows of the next forward pass (ordered by adapter)."""
        segments = []
        start = 0
        for _, group in groupby(rows, key=lambda r: r.lora_name):
            members = list(group)
            if members[0].lora is not None:
                segments.append((start, start + len(members), members[0].lora))
            start += len(members)
        self._lora_set.plan(segments)
