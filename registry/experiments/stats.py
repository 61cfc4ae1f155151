"""An experiment's results: per-arm figures with 95 % intervals, tests between arms, a verdict.

The first arm is the control. Each other arm is compared with it on thumbs (two-proportion
z-test) and on scores (Welch's t-test), where both arms have feedback of that kind; the
significance level 0.05 is split between the tests made (Bonferroni), so looking at both
metrics and several arms does not inflate false verdicts.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from scipy import stats

from switchboard_lora.registry.experiments.model import Experiment, Exposure

ALPHA = 0.05


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (sound at small n and near 0 or 1)."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mean_interval(values: list[float]) -> tuple[float, float] | None:
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def two_proportion_p(up_a: int, n_a: int, up_b: int, n_b: int) -> float:
    pooled = (up_a + up_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 1.0
    z = (up_a / n_a - up_b / n_b) / se
    return float(2 * stats.norm.sf(abs(z)))


def welch_p(a: list[float], b: list[float]) -> float:
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def percentile(values: list[float], q: float) -> float | None:
    """The sample at quantile `q` (nearest rank); None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(experiment: Experiment, exposures: list[Exposure]) -> dict[str, Any]:
    arms: list[dict[str, Any]] = []
    raw: list[tuple[list[bool], list[float]]] = []
    for arm in experiment.arms:
        mine = [e for e in exposures if e.position == arm.position]
        thumbs = [t for e in mine for t in e.thumbs_up]
        scores = [s for e in mine for s in e.scores]
        latencies = [e.latency_s for e in mine]
        raw.append((thumbs, scores))
        up_rate = sum(thumbs) / len(thumbs) if thumbs else None
        arms.append(
            {
                "ref": arm.ref,
                "share": arm.share,
                "requests": len(mine),
                "feedback": sum(len(e.thumbs_up) + len(e.scores) for e in mine),
                "thumbs": len(thumbs),
                "up_rate": up_rate,
                "up_rate_ci95": wilson(sum(thumbs), len(thumbs)),
                "scores": len(scores),
                "mean_score": statistics.fmean(scores) if scores else None,
                "mean_score_ci95": mean_interval(scores),
                "latency_p50_s": percentile(latencies, 0.5),
                "latency_p99_s": percentile(latencies, 0.99),
                "prompt_tokens": sum(e.prompt_tokens for e in mine),
                "completion_tokens": sum(e.completion_tokens for e in mine),
            }
        )
    tests: list[dict[str, Any]] = []
    control_thumbs, control_scores = raw[0]
    for index in range(1, len(arms)):
        thumbs, scores = raw[index]
        if len(thumbs) >= 2 and len(control_thumbs) >= 2:
            p = two_proportion_p(sum(thumbs), len(thumbs), sum(control_thumbs), len(control_thumbs))
            better = index if arms[index]["up_rate"] > arms[0]["up_rate"] else 0
            tests.append(
                {
                    "metric": "thumbs",
                    "test": "two-proportion z",
                    "arm": index,
                    "p": p,
                    "better": better,
                }
            )
        if len(scores) >= 2 and len(control_scores) >= 2:
            p = welch_p(scores, control_scores)
            better = index if arms[index]["mean_score"] > arms[0]["mean_score"] else 0
            tests.append(
                {"metric": "score", "test": "Welch t", "arm": index, "p": p, "better": better}
            )
    level = ALPHA / max(1, len(tests))
    for test in tests:
        test["versus"] = arms[0]["ref"]
        test["arm"] = arms[test["arm"]]["ref"]
        test["significant"] = test["p"] < level
        test["better"] = arms[test["better"]]["ref"]
    decisive = sorted((t for t in tests if t["significant"]), key=lambda t: t["p"])
    verdict = (
        f"{decisive[0]['better']} better at p < 0.05 ({decisive[0]['metric']}, "
        f"p = {decisive[0]['p']:.2g})"
        if decisive
        else "no difference detected yet"
    )
    return {
        "experiment": experiment.to_json(),
        "arms": arms,
        "tests": tests,
        "alpha_per_test": level,
        "verdict": verdict,
    }
