"""Evaluation on a labelled file, threshold calibration, and the confusion plot."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.route_store import BASE_ROUTE
from switchboard_lora.router.router import Router


@dataclass(frozen=True, slots=True)
class Report:
    accuracy: float
    in_domain_accuracy: float | None  # None when the file has no domain rows
    fallback_recall: float | None  # share of base-labelled rows sent to base
    false_fallback_rate: float | None  # share of domain rows sent to base
    n: int
    confusion: dict[str, dict[str, int]]  # expected -> routed to -> count

    def to_json(self) -> dict[str, Any]:
        """Exactly the keys scripts depend on (`switchboard route eval --json`)."""
        return {
            "accuracy": self.accuracy,
            "in_domain_accuracy": self.in_domain_accuracy,
            "fallback_recall": self.fallback_recall,
            "false_fallback_rate": self.false_fallback_rate,
            "n": self.n,
            "confusion": self.confusion,
        }


def _share(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def check_labels(router: Router, rows: list[tuple[str, str]]) -> None:
    """A test row expecting a route the router has no examples for can never be right."""
    known = set(router.routes) | {BASE_ROUTE}
    unknown = sorted({expected for _, expected in rows} - known)
    if unknown:
        raise SwitchboardError(
            ErrorCode.INVALID_INPUT,
            f"the test file expects route(s) {', '.join(unknown)}, which have no examples; "
            f"routes with examples: {', '.join(sorted(router.routes)) or 'none'}",
        )


def evaluate(router: Router, rows: list[tuple[str, str]]) -> Report:
    check_labels(router, rows)
    decisions = router.decide_texts([text for text, _ in rows])
    pairs = [(expected, d.route) for (_, expected), d in zip(rows, decisions, strict=True)]
    domain = [(e, p) for e, p in pairs if e != BASE_ROUTE]
    general = [(e, p) for e, p in pairs if e == BASE_ROUTE]
    confusion: dict[str, dict[str, int]] = {}
    for (expected, routed), count in sorted(Counter(pairs).items()):
        confusion.setdefault(expected, {})[routed] = count
    return Report(
        accuracy=round(sum(e == p for e, p in pairs) / len(pairs), 4),
        in_domain_accuracy=_share(sum(e == p for e, p in domain), len(domain)),
        fallback_recall=_share(sum(p == BASE_ROUTE for _, p in general), len(general)),
        false_fallback_rate=_share(sum(p == BASE_ROUTE for _, p in domain), len(domain)),
        n=len(pairs),
        confusion=confusion,
    )


def calibrate(router: Router, rows: list[tuple[str, str]]) -> dict[str, tuple[float, int]]:
    """Per route, the in-domain threshold that makes the most held-out decisions right.

    For the rows whose best route is R, a threshold t sends those whose in-domain score is
    below t to the base: right for rows labelled base, wrong for rows labelled R. The
    threshold is put halfway between the two scores where the count of right answers peaks.
    Returns {route: (threshold, rows it was fitted on)} for routes with held-out rows.
    """
    check_labels(router, rows)
    if not router.index().classes:
        raise SwitchboardError(ErrorCode.INVALID_INPUT, "no routes to calibrate")
    by_route: dict[str, list[tuple[float, str]]] = {}
    decisions = router.decide_texts([text for text, _ in rows])
    for (_, expected), decision in zip(rows, decisions, strict=True):
        best = next((r for r in decision.scores if r != BASE_ROUTE), None)  # best first
        if best is not None and decision.in_domain is not None:
            by_route.setdefault(best, []).append((decision.in_domain, expected))
    thresholds = {}
    for route, scored in by_route.items():
        scored.sort()
        # t below every score: all go to the route; each step up sends one more to base.
        right = sum(expected == route for _, expected in scored)
        best_right, best_at = right, 0
        for i, (_, expected) in enumerate(scored):
            right += (expected == BASE_ROUTE) - (expected == route)
            if right > best_right:
                best_right, best_at = right, i + 1
        if best_at == 0:
            threshold = 0.0
        elif best_at == len(scored):
            threshold = min(1.0, scored[-1][0] + 1e-6)
        else:
            threshold = (scored[best_at - 1][0] + scored[best_at][0]) / 2
        thresholds[route] = (round(threshold, 6), len(scored))
    return thresholds


def plot_confusion(report: Report, path: Path, title: str = "Routing confusion") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = sorted(
        set(report.confusion) | {r for row in report.confusion.values() for r in row},
        key=lambda x: (x == BASE_ROUTE, x),
    )
    matrix = np.array(
        [[report.confusion.get(e, {}).get(p, 0) for p in labels] for e in labels], dtype=float
    )
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.1 * len(labels) + 1.5))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if matrix[i, j]:
                colour = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=colour)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("routed to")
    ax.set_ylabel("expected")
    ax.set_title(f"{title}\naccuracy {report.accuracy:.3f}, n = {report.n}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
