"""The transformers engine's decoding loop: one batch, token by token, every row on its own.

transformers' `generate` runs a batch until its last row ends, computing finished rows all
along, and takes one sampling setting for the batch. This loop, over the model's own forward
and KV cache, gives each row its own settings and its own end: a row ends at its end of
sequence, its max_tokens, a stop string, or when its client leaves, and is dropped from the
batch and the cache at once (`DynamicCache.batch_select_indices`), so finished and abandoned
rows cost nothing more. The LoRA plan follows the rows that remain.

Positions and masks are what `generate` computes (left padding; position = index among the
row's real tokens), so greedy tokens are `generate`'s own; a prefix adapter starts from its
virtual tokens' cache, counted in the positions, as in PEFT's generation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from serving.engine import SamplingParams, TokenLogprob


class RowSampler:
    """Chooses each row's next token by its own settings: greedy, or temperature and top-p
    with the row's own seeded generator (a seeded request gives the same text whatever it is
    batched with). Records the model's log probabilities where asked for."""

    def __init__(self, params: list[SamplingParams]) -> None:
        self.params = params
        self.generators = {
            i: torch.Generator().manual_seed(p.seed)
            for i, p in enumerate(params)
            if not p.greedy and p.seed is not None
        }
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in params]

    def choose(self, rows: list[int], logits: torch.Tensor) -> list[int]:
        """The next token of each of `rows` (batch rows, in the order of `logits`' rows)."""
        logits = logits.float()
        chosen = logits.argmax(dim=-1)
        for slot, row in enumerate(rows):
            p = self.params[row]
            if p.greedy:
                continue
            probs = torch.softmax(logits[slot] / p.temperature, dim=-1)
            if p.top_p < 1.0:
                ordered, order = probs.sort(descending=True)
                outside = ordered.cumsum(0) - ordered >= p.top_p  # past the nucleus
                probs = probs.scatter(0, order[outside], 0.0)
            chosen[slot] = torch.multinomial(probs, 1, generator=self.generators.get(row))[0]
        wanted = [
            (slot, row) for slot, row in enumerate(rows) if self.params[row].logprobs is not None
        ]
        if wanted:
            logp = torch.log_softmax(logits, dim=-1)
            for slot, row in wanted:
                k = self.params[row].logprobs or 0
                top = logp[slot].topk(k) if k else None
                pairs = (
                    zip(top.indices.tolist(), top.values.tolist(), strict=True)
                    if top is not None
                    else ()
                )
                token = int(chosen[slot])
                self.logprobs[row].append(
                    TokenLogprob(token, float(logp[slot, token]), tuple(pairs))
                )
        tokens: list[int] = chosen.tolist()
        return tokens


@dataclass
class Rows:
    """What a batch's rows made, and how each ended (None: still running)."""

    made: list[list[int]]
    ended: list[str | None]
    streamed: set[int] = field(default_factory=set)  # rows a token was handed out for


def decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: list[SamplingParams],
    *,
    eos: int | None,
    text_of: Callable[[list[int]], str],
    sampler: RowSampler,
    on_token: Callable[[int, int], None] | None,
    cancelled: Callable[[int], bool],
    replan: Callable[[list[int]], None],
    prefix: Any = None,
    rows: Rows | None = None,
) -> Rows:
    """Decode a left-padded batch. `replan(rows)` is told which batch rows remain before
    each forward pass (the LoRA segments follow them). `prefix`: a prefix adapter's cache of
    virtual tokens for these rows. `rows` receives the progress as it is made (the caller
    keeps it if this raises)."""
    from transformers import DynamicCache

    n = input_ids.shape[0]
    rows = rows or Rows([[] for _ in range(n)], [None] * n)
    live = list(range(n))
    cache = prefix if prefix is not None else DynamicCache()
    virtual = prefix.get_seq_length() if prefix is not None else 0
    mask = attention_mask
    # A prefix adapter's virtual tokens come first: positions count them (as in PEFT).
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1) + virtual
    step = input_ids
    while True:
        replan(live)
        full_mask = (
            mask if not virtual else torch.cat([mask.new_ones(len(live), virtual), mask], dim=1)
        )
        with torch.inference_mode():
            out = model(
                input_ids=step,
                attention_mask=full_mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        tokens = sampler.choose(live, out.logits[:, -1, :])
        keep = []
        for slot, (row, token) in enumerate(zip(live, tokens, strict=True)):
            ended = _step(rows, row, token, params[row], eos, text_of, on_token)
            if ended is None and cancelled(row):
                ended = "cancelled"
            rows.ended[row] = ended
            if ended is None:
                keep.append(slot)
        if not keep:
            return rows
        chosen = torch.tensor([tokens[slot] for slot in keep])[:, None]
        if len(keep) < len(live):  # drop what ended: its rows, its cache
            index = torch.tensor(keep)
            cache.batch_select_indices(index)
            mask = mask[index]
            live = [live[slot] for slot in keep]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        positions = mask.long().sum(dim=1, keepdim=True) - 1 + virtual
        step = chosen


def _step(
    rows: Rows,
    row: int,
    token: int,
    params: SamplingParams,
    eos: int | None,
    text_of: Callable[[list[int]], str],
    on_token: Callable[[int, int], None] | None,
) -> str | None:
    """Take one token for a row; how the row ended with it, if it did."""
    if token == eos:
        return "stop"
    made = rows.made[row]
    made.append(token)
    if on_token is not None:
        rows.streamed.add(row)
        on_token(row, token)
    if params.stop and any(s in text_of(made) for s in params.stop):
        return "stop"
    return "length" if len(made) >= params.max_tokens else None
