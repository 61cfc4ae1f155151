"""The transformers+PEFT engine: the light default, and the one for prefix-tuned adapters.

One base model in memory. LoRA adapters are loaded into one PEFT wrapper under their served
names (least recently used ones unloaded past `max_adapters`), and a batch of requests for
different LoRA adapters and the base runs as one `generate` call with PEFT's per-row
`adapter_names`. A prefix adapter has its own thin PEFT wrapper over the same base weights;
its rows run as their own batch with the LoRA layers switched off.

`generate` is not re-entrant: one caller (the server's batching worker) drives it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import Any

from registry.errors import ErrorCode, SwitchboardError
from serving.engine import AdapterSpec, Generation, GenerationRequest, cut_at_stop

log = logging.getLogger(__name__)

BASE_ROW = "__base__"  # PEFT's name for "no adapter" in a mixed batch
TokenCallback = Callable[[int, int], None]


class _RowStreamer:
    """Hands each row's new tokens to a callback as `generate` makes them (transformers'
    own streamers take one row only)."""

    def __init__(
        self,
        rows: list[int],
        requests: list[GenerationRequest],
        callback: TokenCallback | None,
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


class HFEngine:
    name = "hf"

    def __init__(self, base_dir: Path, *, max_adapters: int = 8, dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(base_dir)
        self.tokenizer.padding_side = "left"  # generation continues each row at its end
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model: Any = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=getattr(torch, dtype)
        ).eval()
        self.max_model_len = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.max_adapters = max_adapters
        self._lora: Any = None  # PeftModel holding every loaded LoRA adapter
        self._loras: OrderedDict[str, None] = OrderedDict()  # served names, LRU order
        self._prefixes: OrderedDict[str, Any] = OrderedDict()  # served name -> PeftModel
        self._lock = threading.Lock()

    def supports(self, method: str) -> bool:
        return method in ("lora", "prefix")

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        rendered: str = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return rendered

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_context(self, prompt_tokens: int, max_tokens: int) -> None:
        if prompt_tokens + max_tokens > self.max_model_len:
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT,
                f"prompt of {prompt_tokens} tokens + max_tokens {max_tokens} exceeds "
                f"the model's context of {self.max_model_len}",
            )

    # ---- adapters ---------------------------------------------------------------------------

    def _load_lora(self, adapter: AdapterSpec) -> None:
        from peft import PeftModel

        name = adapter.served_name
        if name in self._loras:
            self._loras.move_to_end(name)
            return
        if self._lora is None:
            self._lora = PeftModel.from_pretrained(self.model, adapter.path, adapter_name=name)
            self._lora.eval()
        else:
            self._lora.load_adapter(adapter.path, adapter_name=name)
        self._loras[name] = None
        # Rows pick adapters by name; marking the newest active keeps PEFT from warning
        # when the least recently used one (never the newest) is unloaded.
        self._lora.set_adapter(name)
        log.info("loaded LoRA %s", name)
        while len(self._loras) > self.max_adapters:
            evicted, _ = self._loras.popitem(last=False)
            self._lora.delete_adapter(evicted)
            log.info("unloaded LoRA %s (least recently used)", evicted)

    def _load_prefix(self, adapter: AdapterSpec) -> Any:
        from peft import PeftModel

        name = adapter.served_name
        if name not in self._prefixes:
            base = self._lora.get_base_model() if self._lora is not None else self.model
            self._prefixes[name] = PeftModel.from_pretrained(base, adapter.path).eval()
            log.info("loaded prefix adapter %s", name)
            while len(self._prefixes) > self.max_adapters:
                self._prefixes.popitem(last=False)
        self._prefixes.move_to_end(name)
        return self._prefixes[name]

    # ---- generation -------------------------------------------------------------------------

    def generate(
        self, requests: list[GenerationRequest], on_token: TokenCallback | None = None
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
                rows = list(members)
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
        if first is not None and first.method == "prefix":
            model = self._load_prefix(first)
        else:
            for request in batch:
                if request.adapter is not None:
                    self._load_lora(request.adapter)
            if self._lora is not None:
                model = self._lora
                kwargs["adapter_names"] = [
                    r.adapter.served_name if r.adapter else BASE_ROW for r in batch
                ]
            else:
                model = self.model
        encoded = self.tokenizer([r.prompt for r in batch], return_tensors="pt", padding=True)
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        longest = encoded["input_ids"].shape[1]
        for request, length in zip(batch, prompt_lengths, strict=True):
            self.check_context(length, request.params.max_tokens)
        if not params.greedy:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        else:
            kwargs.update(do_sample=False)
        disable = (
            self._lora.disable_adapter()
            if self._lora is not None and model is not self._lora and model is not self.model
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), disable:
            output = model.generate(
                **encoded,
                max_new_tokens=max(r.params.max_tokens for r in batch),
                pad_token_id=self.tokenizer.pad_token_id,
                streamer=streamer if streamer.callback else None,
                **kwargs,
            )
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
