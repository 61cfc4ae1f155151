"""`switchboard experiment …`: A/B tests of adapter versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from switchboard_lora.cli.kit import JsonFlag, emit, open_registry, print_table
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError

experiment_app = typer.Typer(
    help="A/B tests of adapter versions: split traffic, collect feedback, promote the winner."
)


def _arm(text: str) -> tuple[str, float]:
    ref, sep, share = text.rpartition("=")
    try:
        if not sep or not ref:
            raise ValueError
        return ref, float(share)
    except ValueError:
        raise SwitchboardError(
            ErrorCode.INVALID_INPUT, f"--arm must look like legal:3=0.9, not {text!r}"
        ) from None


@experiment_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The experiment's name.")],
    adapter: Annotated[str, typer.Option(help="The adapter whose traffic is split.")],
    arm: Annotated[
        list[str], typer.Option(help="REF=SHARE, repeated; REF may be `base`; shares sum to 1.")
    ],
    key: Annotated[
        str | None,
        typer.Option(help="header:X-User-Id: requests with that header keep their arm."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Start splitting an adapter's requests between versions (or the base)."""
    experiment = open_registry(ctx).experiments.create(name, adapter, [_arm(a) for a in arm], key)
    arms = ", ".join(f"{a.ref}={a.share:g}" for a in experiment.arms)
    emit(experiment.to_json(), as_json, f"experiment {name} running on {adapter}: {arms}")


@experiment_app.command("list")
def list_experiments(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Every experiment, running or ended."""
    experiments = open_registry(ctx).experiments.list_experiments()
    if as_json:
        emit([e.to_json() for e in experiments], True)
        return
    rows = [
        [
            e.name,
            e.adapter,
            ", ".join(f"{a.ref}={a.share:g}" for a in e.arms),
            "running" if e.running else e.outcome,
            e.started_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for e in experiments
    ]
    print_table("experiments", ["name", "adapter", "arms", "state", "started"], rows)


@experiment_app.command("results")
def results(
    ctx: typer.Context,
    name: str,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the arms' rates.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Per arm: requests, feedback, rates and scores with 95 % intervals; tests; a verdict."""
    from switchboard_lora.registry.experiments.plot import plot as plot_summary
    from switchboard_lora.registry.experiments.stats import summarise

    store = open_registry(ctx).experiments
    summary = summarise(store.get(name), store.exposures(name))
    if plot is not None:
        plot_summary(summary, str(plot))
    if as_json:
        emit(summary, True)
        return
    rows = [_row(a) for a in summary["arms"]]
    columns = ["arm", "share", "requests", "feedback", "thumbs up", "mean score", "p50 / p99 s"]
    print_table(f"experiment {name}", [*columns, "tokens out"], rows)
    for test in summary["tests"]:
        typer.echo(
            f"{test['metric']} ({test['test']}): {test['arm']} vs {test['versus']}: "
            f"p = {test['p']:.3g}{' *' if test['significant'] else ''}"
        )
    typer.echo(f"verdict: {summary['verdict']}")


def _interval(value: float | None, ci: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _row(arm: dict[str, Any]) -> list[Any]:
    latency = (
        f"{arm['latency_p50_s']:.2f} / {arm['latency_p99_s']:.2f}"
        if arm["latency_p50_s"] is not None
        else "-"
    )
    return [
        arm["ref"],
        f"{arm['share']:g}",
        arm["requests"],
        arm["feedback"],
        _interval(arm["up_rate"], arm["up_rate_ci95"]),
        _interval(arm["mean_score"], arm["mean_score_ci95"]),
        latency,
        arm["completion_tokens"],
    ]


@experiment_app.command("stop")
def stop(ctx: typer.Context, name: str, as_json: JsonFlag = False) -> None:
    """End an experiment; the adapter's requests go back to its live version."""
    experiment = open_registry(ctx).experiments.stop(name)
    emit(experiment.to_json(), as_json, f"experiment {name} stopped")


@experiment_app.command("promote")
def promote(ctx: typer.Context, name: str, ref: str, as_json: JsonFlag = False) -> None:
    """Point the adapter's prod alias at an arm's version and end the experiment, atomically."""
    experiment = open_registry(ctx).experiments.promote(name, ref)
    emit(experiment.to_json(), as_json, f"experiment {name}: {experiment.outcome}")
