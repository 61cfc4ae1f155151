"""Full fine-tuning with replay, EWC and L2-SP (the forgetting report's baselines), on a real
tiny Llama; and the report's backward transfer."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

from evaluation.forgetting import continual
from evaluation.forgetting.continual import (
    Anchor,
    Remedy,
    Schedule,
    SequentialFineTuner,
    fisher_diagonal,
)
from evaluation.forgetting.probe import Scores
from evaluation.forgetting.report import MethodResult
from switchboard_lora.registry import SwitchboardError
from switchboard_lora.trainer.encoding import IGNORE, Encoded


def _rows(seed: int, n: int) -> list[Encoded]:
    """Sequences over a tiny vocabulary, each domain its own token pattern."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = [rng.randrange(4, 64) for _ in range(rng.randrange(3, 8))]
        answer = [(seed * 17 + i * 3) % 120 + 4 for i in range(rng.randrange(3, 9))]
        rows.append(Encoded(prompt + answer, [IGNORE] * len(prompt) + answer))
    return rows


def _model(tiny_base_dir: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32)


def _distance(model: Any, start: list[Any]) -> float:
    pairs = zip(model.parameters(), start, strict=True)
    return sum(float((p.detach() - s).square().sum()) for p, s in pairs)


def test_anchor_adds_exactly_the_gradient_of_the_penalty(tiny_base_dir: Path) -> None:
    import torch

    model = _model(tiny_base_dir)
    params = list(model.parameters())
    fisher = [torch.rand_like(p) for p in params]
    anchor = Anchor(params, fisher)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.01)
    strength = 3.0
    penalty = sum(
        (f * (p - c).square()).sum() for p, c, f in zip(params, anchor.centre, fisher, strict=True)
    )
    (strength / 2 * penalty).backward()
    expected = [p.grad.clone() for p in params]
    assert anchor.value(strength) == pytest.approx(float(strength / 2 * penalty.detach()), rel=1e-5)
    for p in params:
        p.grad = torch.zeros_like(p)
    anchor.add_gradient(strength)
    for p, want in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, want)
    assert any(float(g.abs().max()) > 0 for g in expected)


def test_fisher_is_the_mean_squared_per_example_gradient_scaled_to_mean_one(
    tiny_base_dir: Path,
) -> None:
    import torch

    from switchboard_lora.trainer.encoding import collate
    from switchboard_lora.trainer.losses import batch_loss

    model = _model(tiny_base_dir)
    params = list(model.parameters())
    examples = _rows(1, 3)
    squares = [torch.zeros_like(p) for p in params]
    for example in examples:  # by hand: one backward per example
        model.zero_grad()
        total, n = batch_loss(model, collate([example], 0, torch.device("cpu")))
        (total / n).backward()
        for s, p in zip(squares, params, strict=True):
            s += p.grad.square()
    mean = sum(float(s.sum()) for s in squares) / sum(s.numel() for s in squares)
    fisher = fisher_diagonal(model, params, examples, pad_id=0)
    for got, raw in zip(fisher, squares, strict=True):
        torch.testing.assert_close(got, raw / mean)
    assert sum(float(f.sum()) for f in fisher) / sum(f.numel() for f in fisher) == pytest.approx(1)


def test_replay_puts_earlier_domains_and_general_text_in_every_batch(
    tiny_base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tiny_base_dir)
    general, first, second = _rows(9, 10), _rows(1, 20), _rows(2, 20)
    seen: list[list[Encoded]] = []
    real_collate = continual.collate
    monkeypatch.setattr(
        continual, "collate", lambda rows, *a: seen.append(list(rows)) or real_collate(rows, *a)
    )
    tuner = SequentialFineTuner(
        model, Remedy("replay", replay=0.25), Schedule(steps=3, batch_size=8), 0, general
    )
    tuner.train_domain(first)
    assert [len(b) for b in seen] == [8, 8, 8]
    assert all(sum(r in first for r in b) == 6 and sum(r in general for r in b) == 2 for b in seen)
    seen.clear()
    tuner.train_domain(second)
    replayed = [r for b in seen for r in b if r not in second]
    assert all(sum(r in second for r in b) == 6 for b in seen)
    assert len(replayed) == 6 and all(r in first or r in general for r in replayed)
    assert len(tuner.replay_pool) == 10 + 20 + 20


def test_penalties_hold_the_weights_and_ewc_moves_its_anchor(tiny_base_dir: Path) -> None:
    import torch

    domains = [_rows(1, 16), _rows(2, 16)]
    schedule = Schedule(steps=6, batch_size=4, lr=1e-2)
    runs = {}
    for remedy in (
        Remedy("ewc", penalty="ewc", strength=1e4, fisher_samples=4),
        Remedy("l2sp", penalty="l2sp", strength=1e4),
        Remedy("full"),
    ):
        model = _model(tiny_base_dir)
        start = [p.detach().clone() for p in model.parameters()]
        tuner = SequentialFineTuner(model, remedy, schedule, 0)
        assert tuner.trainable_parameters == sum(p.numel() for p in model.parameters())
        tuner.train_domain(domains[0])  # the same for every remedy: no penalty yet
        after_first = [p.detach().clone() for p in model.parameters()]
        if remedy.penalty == "ewc":  # θ* is where the first domain left the weights
            assert tuner.anchor is not None and tuner.fisher is not None
            for centre, p in zip(tuner.anchor.centre, after_first, strict=True):
                torch.testing.assert_close(centre, p)
            fisher = [f.clone() for f in tuner.fisher]
        tuner.train_domain(domains[1])
        assert len(tuner.history) == 12 and all(math.isfinite(x) for x in tuner.history)
        weighted = sum(
            float((f * (p.detach() - a).square()).sum())
            for f, p, a in zip(fisher, model.parameters(), after_first, strict=True)
        )
        runs[remedy.name] = (_distance(model, start), weighted)
    assert runs["l2sp"][0] < 0.5 * runs["full"][0]  # held near the pretrained weights
    # EWC holds what mattered to the first domain (the Fisher-weighted distance from it)
    assert runs["ewc"][1] < 0.5 * runs["full"][1]


def test_remedies_refuse_bad_settings() -> None:
    with pytest.raises(SwitchboardError, match="replay"):
        Remedy("replay", replay=1.0)
    with pytest.raises(SwitchboardError, match="λ"):
        Remedy("ewc", penalty="ewc")


def test_backward_transfer_is_the_mean_change_of_earlier_domains_scores() -> None:
    stages = [
        Scores({"a": 1.0}),
        Scores({"a": 1.5, "b": 2.0}),
        Scores({"a": 1.8, "b": 2.4, "c": 0.5}),
    ]
    final = Scores({"a": 1.8, "b": 2.4, "c": 0.5})
    result = MethodResult("full", stages, final, 10, 1.0)
    result.summarise(["a", "b", "c"])
    # scores are -loss: a went 1.0 -> 1.8 (-0.8), b 2.0 -> 2.4 (-0.4); c is the last domain
    assert result.bwt == pytest.approx(-0.6)
    assert result.final_domain_loss == pytest.approx((1.8 + 2.4 + 0.5) / 3)
