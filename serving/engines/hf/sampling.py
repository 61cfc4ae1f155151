"""Choosing the next token of every row of a forward pass, each row by its own settings.

A `Sampler` holds the settings of one set of rows as tensors over the rows (one per setting
that some row uses; a batch of greedy rows with no extras has none), built when the batch's
rows change, and the state some settings need: the answer's token counts (penalties, updated
on the device each step), the prompt's tokens (repetition penalty), a bitmask for guided rows.

Each step, on the logits' device and for all rows at once, in vLLM's order: allowed tokens and
logit bias, the end held back before `min_tokens`, the grammar's bitmask, the penalties; then
greedy rows take the argmax, sampled rows divide by their temperature, keep their min-p,
top-k and top-p, and draw by the exponential race (the argmax of p/q, q ~ Exp(1)): a seeded row
draws q from its own generator, so its tokens do not depend on what it is batched with. What
crosses to the host is the chosen ids, once; guided rows' matchers, on the host, write their
allowed tokens before the step and take the chosen token after it (`DecodeBatch`).

Log probabilities are the model's own (the raw logits, as vLLM's default reports them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from switchboard_lora.serving.engines.interface import TokenLogprob

if TYPE_CHECKING:
    from switchboard_lora.serving.engines.hf.decode import Row

NEG = float("-inf")


def _padded(lists: Sequence[Sequence[int]], pad: int, device: torch.device) -> torch.Tensor:
    width = max((len(ids) for ids in lists), default=0) or 1
    return torch.tensor([list(ids) + [pad] * (width - len(ids)) for ids in lists], device=device)


class Sampler:
    def __init__(self, rows: list[Row], vocab: int, device: torch.device, eos: int | None) -> None:
        self.rows = rows  # the batch's list itself: a new list is a new composition
        self.vocab = vocab
        self.device = device
        params = [row.params for row in rows]

        def column(values: list[float] | list[int], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device).unsqueeze(1)

        self.bias = self._bias(rows, vocab, device)
        self.guided = [slot for slot, row in enumerate(rows) if row.matcher is not None]
        # No end (end of sequence, stop token ids) before min_tokens: (slot, minimum, enders).
        # A guided row's grammar says where it ends (holding it back would leave no token).
        self.held = [
            (slot, p.min_tokens, [*([eos] if eos is not None else []), *p.stop_token_ids])
            for slot, p in enumerate(params)
            if p.min_tokens > 0 and rows[slot].matcher is None
        ]
        self.bitmask: torch.Tensor | None = None
        if self.guided:
            import xgrammar

            self.bitmask = xgrammar.allocate_token_bitmask(len(rows), vocab)

        # Penalties: on tokens of the answer (presence, frequency) and of the prompt too
        # (repetition), as vLLM applies them.
        self.counts: torch.Tensor | None = None
        self.seen_in_prompt: torch.Tensor | None = None
        if any(
            p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty for p in params
        ):
            self.repetition = column([p.repetition_penalty for p in params], torch.float32)
            self.presence = column([p.presence_penalty for p in params], torch.float32)
            self.frequency = column([p.frequency_penalty for p in params], torch.float32)
            made = _padded([row.made for row in rows], vocab, device)
            counts = torch.zeros(len(rows), vocab + 1, dtype=torch.int32, device=device)
            counts.scatter_add_(1, made, torch.ones_like(made, dtype=torch.int32))
            self.counts = counts[:, :vocab].contiguous()
            if any(p.repetition_penalty != 1.0 for p in params):
                prompts = _padded([row.prompt_ids for row in rows], vocab, device)
                seen = torch.zeros(len(rows), vocab + 1, dtype=torch.bool, device=device)
                self.seen_in_prompt = seen.scatter_(1, prompts, True)[:, :vocab].contiguous()

        # Sampled rows, by their place among the sampled (greedy rows need none of this).
        sampled = [slot for slot, p in enumerate(params) if not p.greedy]
        chosen_params = [params[slot] for slot in sampled]
        self.sampled = torch.tensor(sampled, dtype=torch.long, device=device)
        self.any_sampled = bool(sampled)
        self.temperature = column([p.temperature for p in chosen_params], torch.float32)
        self.top_k = (
            column([p.top_k if p.top_k > 0 else vocab for p in chosen_params], torch.long)
            if any(p.top_k > 0 for p in chosen_params)
            else None
        )
        limited = [p.top_k for p in chosen_params if 0 < p.top_k < vocab]
        every = len(limited) == len(chosen_params) and bool(limited)
        self.every_top_k = max(limited) if every else None  # the largest k, if all have one
        self.top_p = (
            column([p.top_p for p in chosen_params], torch.float32)
            if any(p.top_p < 1.0 for p in chosen_params)
            else None
        )
        self.min_p = (
            column([p.min_p for p in chosen_params], torch.float32)
            if any(p.min_p > 0.0 for p in chosen_params)
            else None
        )
        self.seeded = [
            (place, rows[slot].generator)
            for place, slot in enumerate(sampled)
            if rows[slot].generator is not None
        ]

    def _nucleus(self, ordered: torch.Tensor) -> torch.Tensor:
        """Logits sorted most likely first, past each row's top-k and top-p masked."""
        if self.top_k is not None:
            places = torch.arange(ordered.shape[-1], device=ordered.device).unsqueeze(0)
            ordered = ordered.masked_fill(places >= self.top_k, NEG)
        if self.top_p is not None:
            probs = ordered.softmax(dim=-1)
            outside = probs.cumsum(dim=-1) - probs >= self.top_p  # past the nucleus
            ordered = ordered.masked_fill(outside, NEG)
        return ordered

    @staticmethod
    def _bias(rows: list[Row], vocab: int, device: torch.device) -> torch.Tensor | None:
        """What is added to the logits: -inf outside a row's allowed tokens, its logit bias."""
        params = [row.params for row in rows]
        if not any(p.logit_bias or p.allowed_token_ids is not None for p in params):
            return None
        bias = torch.zeros(len(rows), vocab, device=device)
        limited = [slot for slot, p in enumerate(params) if p.allowed_token_ids is not None]
        if limited:
            bias[limited] = NEG
            slots = [slot for slot in limited for _ in params[slot].allowed_token_ids or ()]
            ids = [t for slot in limited for t in params[slot].allowed_token_ids or ()]
            bias[slots, ids] = 0.0
        slots = [slot for slot, p in enumerate(params) for _ in p.logit_bias]
        ids = [t for p in params for t, _ in p.logit_bias]
        values = torch.tensor([b for p in params for _, b in p.logit_bias], device=device)
        if slots:
            index = (torch.tensor(slots, device=device), torch.tensor(ids, device=device))
            bias.index_put_(index, values, accumulate=True)
        return bias

    def choose(self, logits: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """Each row's next token: as ids on the host, and as a tensor on the device (what
        the next step feeds); the chosen tokens' log probabilities recorded where asked."""
        raw = logits.float()
        x = self._constrained(raw)
        chosen = x.argmax(dim=-1)
        if self.any_sampled:
            chosen[self.sampled] = self._draw(x[self.sampled])
        tokens: list[int] = chosen.tolist()  # the step's one crossing to the host
        if self.counts is not None:
            self.counts.scatter_add_(
                1, chosen.unsqueeze(1), torch.ones_like(chosen, dtype=torch.int32).unsqueeze(1)
            )
        wanted = [  # a row of max_tokens 0 takes no token: it has none to score
            slot
            for slot, row in enumerate(self.rows)
            if row.params.logprobs is not None and row.params.max_tokens > 0
        ]
        if wanted:
            picks = [tokens[s] for s in wanted]
            record_logprobs([self.rows[s] for s in wanted], raw[wanted], chosen[wanted], picks)
        return tokens, chosen

    def _constrained(self, raw: torch.Tensor) -> torch.Tensor:
        """The logits after what limits the choice (greedy rows' too)."""
        x = raw
        if self.bias is not None:
            x = x + self.bias
        rows = self.rows
        held = [(slot, enders) for slot, least, enders in self.held if len(rows[slot].made) < least]
        if held:
            x = x.clone() if x is raw else x
            slots = [slot for slot, enders in held for _ in enders]
            ids = [t for _, enders in held for t in enders]
            x[slots, ids] = NEG
        if self.bitmask is not None:
            import xgrammar

            for slot in self.guided:
                self.rows[slot].matcher.fill_next_token_bitmask(self.bitmask, slot)
            x = x.clone() if x is raw else x
            mask = self.bitmask.to(x.device, non_blocking=True)
            xgrammar.apply_token_bitmask_inplace(x, mask, indices=self.guided)
        if self.counts is not None:
            seen = self.counts > 0
            if self.seen_in_prompt is not None:
                either = seen | self.seen_in_prompt
                rep = self.repetition
                x = torch.where(either, torch.where(x > 0, x / rep, x * rep), x)
            x = x - self.frequency * self.counts - self.presence * seen
        return x

    def _draw(self, x: torch.Tensor) -> torch.Tensor:
        """Sampled rows' tokens: temperature, min-p, top-k, top-p, then the exponential race
        (over the whole vocabulary, whatever the settings: a seeded row's generator draws the
        same numbers in any batch)."""
        x = x / self.temperature
        if self.min_p is not None:
            probs = x.softmax(dim=-1)
            x = x.masked_fill(probs < self.min_p * probs.max(dim=-1, keepdim=True).values, NEG)
        if self.top_k is not None and self.every_top_k is not None:
            # Every sampled row keeps at most k tokens: the k most likely, not a full sort.
            ordered, order = x.topk(self.every_top_k, dim=-1)
            x = torch.full_like(x, NEG).scatter_(1, order, self._nucleus(ordered))
        elif self.top_k is not None or self.top_p is not None:
            ordered, order = x.sort(dim=-1, descending=True)
            x = torch.empty_like(x).scatter_(1, order, self._nucleus(ordered))
        probs = x.softmax(dim=-1)
        race = torch.empty_like(probs).exponential_()
        for place, generator in self.seeded:
            race[place].exponential_(generator=generator)
        return (probs / race).argmax(dim=-1)


def record_logprobs(
    rows: list[Row], logits: torch.Tensor, chosen: torch.Tensor, tokens: list[int]
) -> None:
    """The chosen tokens' log probabilities and each row's top k, moved to the host at once
    (the rows' tokens: `chosen` on the device, `tokens` the same on the host)."""
    logp = torch.log_softmax(logits, dim=-1)
    most = max(row.params.logprobs or 0 for row in rows)
    top = logp.topk(most) if most else None
    picked: list[float] = logp.gather(1, chosen.unsqueeze(1))[:, 0].tolist()
    ids: list[list[int]] = top.indices.tolist() if top is not None else [[] for _ in rows]
    values: list[list[float]] = top.values.tolist() if top is not None else [[] for _ in rows]
    for i, row in enumerate(rows):
        k = row.params.logprobs or 0
        pairs = tuple(zip(ids[i][:k], values[i][:k], strict=True))
        row.logprobs.append(TokenLogprob(tokens[i], picked[i], pairs))


def record_prompt_logprobs(rows: list[Row], logits: torch.Tensor, pads: list[int]) -> None:
    """Each asking row's prompt tokens' log probabilities (the first has none: nothing
    precedes it), their rank and the k most likely at each place, from a prefill's logits
    over every column (`pads`: each row's left padding)."""
    for slot, row in enumerate(rows):
        k = row.params.prompt_logprobs
        if k is None:
            continue
        row.prompt_logprobs = [None]
        if len(row.prompt_ids) < 2:
            continue
        start = pads[slot]
        logp = torch.log_softmax(logits[slot, start : start + len(row.prompt_ids) - 1].float(), -1)
        targets = torch.tensor(row.prompt_ids[1:], device=logp.device).unsqueeze(1)
        picked = logp.gather(1, targets)
        ranks: list[int] = ((logp > picked).sum(dim=-1) + 1).tolist()
        values: list[float] = picked[:, 0].tolist()
        top: Any = logp.topk(k) if k else None
        top_ids: list[list[int]] = top.indices.tolist() if k else [[]] * len(values)
        top_values: list[list[float]] = top.values.tolist() if k else [[]] * len(values)
        for i, token in enumerate(row.prompt_ids[1:]):
            pairs = tuple(zip(top_ids[i], top_values[i], strict=True))
            row.prompt_logprobs.append(TokenLogprob(token, values[i], pairs, ranks[i]))
