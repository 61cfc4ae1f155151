"""The transformers engine's decoding loop: continuous batching, every row on its own.

transformers' `generate` runs a fixed batch until its last row ends, with one sampling
setting for all. Here a `DecodeBatch` holds the rows decoding together, their KV cache and
their attention mask, over the model's own forward:
- each row has its own sampling settings and seeded generator, and its own end (end of
  sequence, max_tokens, a stop string, its client leaving); a row that ends is dropped from
  the batch and the cache at once (`DynamicCache.batch_select_indices`);
- new rows join between two steps (`admit`): their prompts are prefilled as a batch of their
  own, then their cache is merged into the running one, left-padded to the same length, and
  the rows are ordered by LoRA adapter so each adapter is one segment per layer (`plan`).

Masks cover every cached column, so a row's position is the count of its real tokens, as
`generate` computes it (left padding); a prefix adapter's rows start from its virtual tokens'
cache, which the mask and so the positions count, as in PEFT's generation. Greedy tokens are
`generate`'s own whatever a row is batched with.

Everything stays on the model's device: sampling (`sampling.Sampler`, rebuilt when the rows
change), the cache and its merges, the next tokens fed. What crosses to the host is the step's
chosen token ids, once (ends and stop strings are decided on them); what crosses back is the
index of the rows kept, when some ended. Rows that ask for their prompt's log probabilities
are prefilled in groups of their own, over every column's logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from switchboard_lora.serving.engines.hf.sampling import Sampler, record_prompt_logprobs
from switchboard_lora.serving.engines.interface import (
    Generation,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
    cut_at_stop,
)


@dataclass(eq=False)
class Row:
    """One request in the batch, and what it has made so far."""

    key: int  # the feed's name for the request
    request: GenerationRequest
    prompt_ids: list[int]
    lora_name: str = ""  # "" for none: rows are ordered by it
    lora: Any = None  # the loaded LoRA weights, held while the row runs
    made: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    ended: str | None = None  # "stop", "length", "cancelled"
    streamed: bool = False  # a token was handed out
    generator: torch.Generator | None = None  # a seeded row's, on the batch's device
    span: int = 0  # cached columns from the row's first real one to the end
    grammar: Any = None  # a guided row's compiled grammar (xgrammar)
    matcher: Any = field(init=False, default=None)  # where the row's answer is in it
    prompt_logprobs: list[TokenLogprob | None] | None = None

    def __post_init__(self) -> None:
        if self.grammar is not None:
            import xgrammar

            self.matcher = xgrammar.GrammarMatcher(self.grammar)

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    def again(self) -> Row:
        """The same request from its start (to run it again alone)."""
        return Row(
            self.key, self.request, self.prompt_ids, self.lora_name, self.lora, grammar=self.grammar
        )

    def generation(self, text_of: Callable[[list[int]], str]) -> Generation:
        text, stopped = cut_at_stop(text_of(self.made), self.params.stop)
        finish: Any = "stop" if stopped or self.ended == "stop" else "length"
        logprobs = tuple(self.logprobs) if self.params.logprobs is not None else None
        prompt = tuple(self.prompt_logprobs) if self.prompt_logprobs is not None else None
        return Generation(
            text,
            tuple(self.made),
            len(self.prompt_ids),
            finish,
            logprobs,
            tuple(self.prompt_ids),
            prompt,
        )


# A prefill pads every row to its group's longest prompt, and padding costs as much as real
# tokens (on CPU, prefill is most of a request's work): at most this share of it is padding.
MAX_PADDING = 0.2


# A prefill that keeps every column's logits (prompt log probabilities) holds rows x columns x
# vocabulary floats: its groups stay under this many columns in all.
MAX_LOGIT_COLUMNS = 2048


def prefill_groups(rows: list[Row]) -> list[list[Row]]:
    """Rows in groups of similar prompt length, each to be prefilled as one batch; rows that
    want their prompt's log probabilities in groups of their own, of bounded size."""
    scored = sorted(
        (r for r in rows if r.params.prompt_logprobs is not None), key=lambda r: len(r.prompt_ids)
    )
    groups: list[list[Row]] = []
    for row in scored:  # the longest so far sets the group's width
        if groups and (len(groups[-1]) + 1) * len(row.prompt_ids) <= MAX_LOGIT_COLUMNS:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups + _similar_lengths([r for r in rows if r.params.prompt_logprobs is None])


def _similar_lengths(rows: list[Row]) -> list[list[Row]]:
    groups: list[list[Row]] = []
    real = 0
    for row in sorted(rows, key=lambda r: len(r.prompt_ids)):
        length = len(row.prompt_ids)  # the longest so far: the group's padded width
        if groups and (len(groups[-1]) + 1) * length * (1 - MAX_PADDING) <= real + length:
            groups[-1].append(row)
            real += length
        else:
            groups.append([row])
            real = length
    return groups


class DecodeBatch:
    """The rows decoding together. `plan(rows)` is called before each forward pass with the
    rows it runs, in order (the LoRA segments follow them); `on_token(key, id)` and
    `left(key)` are the feed's. `admit` and `step` return the rows that ended."""

    def __init__(
        self,
        model: Any,
        *,
        eos: int | None,
        pad: int,
        text_of: Callable[[list[int]], str],
        plan: Callable[[list[Row]], None],
        on_token: Callable[[int, int], None],
        left: Callable[[int], bool],
    ) -> None:
        self.model = model
        self.device: torch.device = model.device
        self.eos = eos
        self.pad = pad
        self.text_of = text_of
        self.plan = plan
        self.on_token = on_token
        self.left = left
        self.rows: list[Row] = []
        self.sampler: Sampler | None = None  # over `rows`, as they are now
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (rows, cached columns): 1 real, 0 padding
        self.next: torch.Tensor | None = None  # (rows, 1): each row's token to feed next

    def __len__(self) -> int:
        return len(self.rows)

    def admit(self, rows: list[Row], prefix: Any = None) -> list[Row]:
        """Prefill new rows (sharing one prefix adapter's cache `prefix`, or none) and merge
        them into the batch. Nothing changes if this raises."""
        from transformers import DynamicCache

        rows = sorted(rows, key=lambda r: r.lora_name)
        width = max(len(r.prompt_ids) for r in rows)
        pads = [width - len(r.prompt_ids) for r in rows]  # left padding
        cache = prefix if prefix is not None else DynamicCache()
        virtual = cache.get_seq_length() if prefix is not None else 0
        ids = torch.tensor(
            [[self.pad] * n + r.prompt_ids for n, r in zip(pads, rows, strict=True)],
            device=self.device,
        )
        mask = torch.tensor(
            [[1] * virtual + [0] * n + [1] * (width - n) for n in pads], device=self.device
        )
        positions = (mask.cumsum(-1) - 1)[:, virtual:].masked_fill(mask[:, virtual:] == 0, 1)
        for row, pad in zip(rows, pads, strict=True):
            row.span = virtual + width - (0 if virtual else pad)
            if not row.params.greedy and row.params.seed is not None:
                row.generator = torch.Generator(self.device).manual_seed(row.params.seed)
        scored = any(r.params.prompt_logprobs is not None for r in rows)
        tokens, chosen = self._forward(rows, ids, mask, positions, cache, pads if scored else None)
        ended, keep = self._take(rows, tokens)
        if keep:
            self._merge([rows[i] for i in keep], cache, mask, chosen, keep)
        return ended

    def step(self) -> list[Row]:
        """One token for every row; drops the rows that end."""
        assert self.mask is not None and self.next is not None
        mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        positions = mask.sum(dim=1, keepdim=True) - 1
        tokens, chosen = self._forward(self.rows, self.next, mask, positions, self.cache)
        self.mask = mask
        for row in self.rows:
            row.span += 1
        ended, keep = self._take(self.rows, tokens)
        if len(keep) < len(self.rows):  # drop what ended: its rows, its cache
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            self.cache.batch_select_indices(index)
            self.mask = self.mask[index]
            chosen = chosen[index]
            self.rows = [self.rows[i] for i in keep]
            self._trim()
        self.next = chosen.unsqueeze(1)
        return ended

    def _forward(
        self,
        rows: list[Row],
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        scored_pads: list[int] | None = None,
    ) -> tuple[list[int], torch.Tensor]:
        """One forward pass and its tokens; `scored_pads` (a prefill's left padding): keep
        every column's logits, for the prompt log probabilities some rows asked for."""
        self.plan(rows)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=0 if scored_pads is not None else 1,
            )
            if scored_pads is not None:
                record_prompt_logprobs(rows, out.logits, scored_pads)
            sampler = self.sampler
            if sampler is None or sampler.rows is not rows:
                sampler = Sampler(rows, out.logits.shape[-1], self.device, self.eos)
                if rows is self.rows:
                    self.sampler = sampler
            return sampler.choose(out.logits[:, -1, :])

    def _take(self, rows: list[Row], tokens: list[int]) -> tuple[list[Row], list[int]]:
        """Give each row its token; the rows that ended, and the slots of those that go on."""
        ended, keep = [], []
        for slot, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            row.ended = self._end(row, token)
            if row.ended is None and self.left(row.key):
                row.ended = "cancelled"
            if row.ended is None:
                keep.append(slot)
            else:
                ended.append(row)
        return ended, keep

    def _end(self, row: Row, token: int) -> str | None:
        """Take one token for a row; how the row ended with it, if it did."""
        p = row.params
        if p.max_tokens == 0:  # its prompt's log probabilities were all it asked for
            return "length"
        if token in p.stop_token_ids or (
            token == self.eos and (not p.ignore_eos or row.matcher is not None)
        ):
            return "stop"
        if row.matcher is not None and not row.matcher.accept_token(token):
            raise RuntimeError(f"token {token} left the row's grammar")  # the mask forbids it
        row.made.append(token)
        row.streamed = True
        self.on_token(row.key, token)
        if row.params.stop and any(s in self.text_of(row.made) for s in row.params.stop):
            return "stop"
        return "length" if len(row.made) >= row.params.max_tokens else None

    def _merge(
        self, rows: list[Row], cache: Any, mask: torch.Tensor, chosen: torch.Tensor, keep: list[int]
    ) -> None:
        """Join prefilled rows (slots `keep` of their batch, `chosen` their first tokens) to
        the running ones."""
        if len(keep) < mask.shape[0]:
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            cache.batch_select_indices(index)
            mask, chosen = mask[index], chosen[index]
        chosen = chosen.unsqueeze(1)
        if not self.rows:
            self.rows, self.cache, self.mask, self.next = rows, cache, mask, chosen
            return
        assert self.mask is not None and self.next is not None
        width = max(self.mask.shape[1], mask.shape[1])
        joined = self.rows + rows
        order = sorted(range(len(joined)), key=lambda i: joined[i].lora_name)
        reorder = (
            None
            if order == sorted(order)
            else torch.tensor(order, dtype=torch.long, device=self.device)
        )

        def join(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
            pads = [(width - t.shape[dim]) for t in (a, b)]  # left padding on `dim`
            a, b = (
                F.pad(t, [0, 0] * (t.dim() - 1 - dim) + [pad, 0]) if pad else t
                for t, pad in zip((a, b), pads, strict=True)
            )
            both = torch.cat([a, b])
            return both if reorder is None else both[reorder]

        for mine, theirs in zip(_layers(self.cache), _layers(cache), strict=True):
            mine.keys = join(mine.keys, theirs.keys, dim=2)
            mine.values = join(mine.values, theirs.values, dim=2)
        self.mask = join(self.mask, mask, dim=1)
        next_tokens = torch.cat([self.next, chosen])
        self.next = next_tokens if reorder is None else next_tokens[reorder]
        self.rows = [joined[i] for i in order]

    def _trim(self) -> None:
        """Drop the leading columns no remaining row uses (padding of rows that ended),
        counted on the host: reading the mask would wait for the device."""
        assert self.mask is not None
        unused = self.mask.shape[1] - max((row.span for row in self.rows), default=0)
        if unused > 0:
            self.mask = self.mask[:, unused:]
            for layer in _layers(self.cache):
                layer.keys = layer.keys[:, :, unused:]
                layer.values = layer.values[:, :, unused:]


def _layers(cache: Any) -> list[Any]:
    """A DynamicCache's per-layer key and value tensors, (rows, heads, columns, head dim).
    Only full-attention layers merge by left padding: a sliding window's cache does not."""
    from transformers.cache_utils import DynamicLayer

    layers: list[Any] = cache.layers
    odd = {type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer}
    if odd:
        raise NotImplementedError(f"continuous batching over {', '.join(sorted(odd))} caches")
    return layers
