"""An experiment's results as a picture: each arm's rates with their 95 % intervals."""

from __future__ import annotations

from typing import Any


def plot(summary: dict[str, Any], path: str) -> None:
    """Thumbs-up rate (and mean score, where given) per arm with 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = summary["arms"]
    metrics = [("up_rate", "thumbs-up rate"), ("mean_score", "mean score")]
    shown = [(key, title) for key, title in metrics if any(a[key] is not None for a in arms)]
    figure, axes = plt.subplots(1, max(1, len(shown)), figsize=(5 * max(1, len(shown)), 4))
    axes_list = list(axes) if len(shown) > 1 else [axes]
    for axis, (key, title) in zip(axes_list, shown, strict=False):
        values = [a[key] or 0.0 for a in arms]
        errors = [
            [v - (a[f"{key}_ci95"] or (v, v))[0] for v, a in zip(values, arms, strict=True)],
            [(a[f"{key}_ci95"] or (v, v))[1] - v for v, a in zip(values, arms, strict=True)],
        ]
        axis.bar([a["ref"] for a in arms], values, yerr=errors, capsize=6, color="#4c72b0")
        axis.set_title(title)
        axis.set_ylim(0, 1)
    figure.suptitle(f"{summary['experiment']['name']}: {summary['verdict']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
