"""`switchboard route …`: decide, evaluate, calibrate, manage examples, review and label.

`switchboard route TEXT` is the decision itself; the other words are subcommands.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from typer.core import TyperGroup

from switchboard_lora.cli.kit import JsonFlag, busy, emit, open_registry, print_table, settings_of

if TYPE_CHECKING:
    from switchboard_lora.registry.store import Registry
    from switchboard_lora.router.router import Router, RouteSource
    from switchboard_lora.router.scorers import ScoringMethod


class _DecideByDefault(TyperGroup):
    """`route TEXT` means `route decide TEXT`: anything that is not a subcommand is text."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["decide", *args]
        return super().parse_args(ctx, args)


route_app = typer.Typer(
    cls=_DecideByDefault,
    no_args_is_help=True,
    help="Route requests to adapters: `switchboard route TEXT` shows the decision.",
)

MethodOption = Annotated[
    Literal["linear", "centroid", "knn"] | None,
    typer.Option("--method", help="Scoring method (default: the settings' router_method)."),
]


def _load_router(
    ctx: typer.Context, source: RouteSource, method: ScoringMethod | None = None
) -> Router:
    from switchboard_lora.router.router import build_router

    _quiet_loading()
    settings = settings_of(ctx)
    with busy("loading the encoder and routes…"):
        router = build_router(settings, source, settings.home_dir, method)
        router.index()
    return router


def _registry_router(
    ctx: typer.Context, method: ScoringMethod | None = None, registry: Registry | None = None
) -> Router:
    from switchboard_lora.router.router import RegistryRoutes

    return _load_router(ctx, RegistryRoutes(registry or open_registry(ctx)), method)


def _quiet_loading() -> None:
    """transformers draws a bar for loading any model's weights: noise in a CLI answer."""
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()


@route_app.command("decide", hidden=True)
def decide(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="The request to route.")],
    model: Annotated[
        str, typer.Option(help="`auto` routes; `base` or an adapter ref bypass routing.")
    ] = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Show the routing decision for TEXT."""
    decision = _registry_router(ctx).decide(text, model=model)
    data = decision.to_json()
    if decision.kind == "mix":
        served = ", ".join(f"{c.ref} (weight {c.weight:.2f})" for c in decision.choices)
    else:
        served = decision.choices[0].ref if decision.choices else "no adapter"
    scores = "  ".join(f"{k} {v:.3f}" for k, v in list(data["scores"].items())[:6])
    note = "\n(text truncated to the encoder's window)" if decision.truncated else ""
    emit(data, as_json, f"{decision.kind}: {served}\nreason: {decision.reason}\n{scores}{note}")


@route_app.command("eval")
def evaluate_command(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help='Labelled JSONL: {"text": …, "expected": …}.')],
    routes: Annotated[
        Path | None,
        typer.Option(help="Routes JSONL instead of the registry; `base` rows are negatives."),
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Draw the confusion matrix to a PNG.")] = None,
    method: MethodOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate routing on a labelled file: accuracy, fallback, confusion."""
    from switchboard_lora.router.evaluate import evaluate, plot_confusion
    from switchboard_lora.router.files import read_labelled
    from switchboard_lora.router.router import FileRoutes

    rows = read_labelled(data)
    if routes is None:
        router = _registry_router(ctx, method)
    else:
        router = _load_router(ctx, FileRoutes(routes), method)
    with busy(f"routing {len(rows)} requests…"):
        report = evaluate(router, rows)
    if plot is not None:
        plot_confusion(report, plot, f"Routing: {data.name}")
    if as_json:
        emit(report.to_json(), True)
        return
    labels = sorted(report.confusion)
    routed = sorted({r for row in report.confusion.values() for r in row})
    print_table(
        "confusion (rows: expected, columns: routed to)",
        ["expected", *routed],
        [[e, *(report.confusion[e].get(r, 0) for r in routed)] for e in labels],
    )

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1%}"

    typer.echo(
        f"n={report.n}  accuracy {pct(report.accuracy)}  "
        f"in-domain {pct(report.in_domain_accuracy)}  "
        f"fallback recall {pct(report.fallback_recall)}  "
        f"false fallback {pct(report.false_fallback_rate)}" + (f"\nplot: {plot}" if plot else "")
    )


@route_app.command("calibrate")
def calibrate_command(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Option(help="Held-out labelled JSONL (not the test file you report on).")
    ],
    dry_run: Annotated[bool, typer.Option(help="Show the thresholds, store nothing.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Fit each route's in-domain threshold on held-out examples and store it."""
    from switchboard_lora.router.evaluate import calibrate
    from switchboard_lora.router.files import read_labelled

    rows = read_labelled(data)
    registry = open_registry(ctx)
    router = _registry_router(ctx, registry=registry)
    with busy(f"scoring {len(rows)} held-out requests…"):
        thresholds = calibrate(router, rows)
    if not dry_run:
        registry.routes.set_thresholds(router.scores_key, thresholds)
    result = {
        "encoder": router.encoder.identity,
        "stored": not dry_run,
        "thresholds": {r: {"threshold": t, "examples": n} for r, (t, n) in thresholds.items()},
    }
    if as_json:
        emit(result, True)
        return
    print_table(
        "calibrated thresholds" + (" (dry run: not stored)" if dry_run else ""),
        ["route", "threshold", "held-out rows"],
        [[r, f"{t:.3f}", n] for r, (t, n) in sorted(thresholds.items())],
    )


@route_app.command("add-examples")
def add_examples(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name, or `base` for negatives.")],
    file: Annotated[Path, typer.Argument(help='JSONL, one {"text": …} per line.')],
    as_json: JsonFlag = False,
) -> None:
    """Add example requests to a route (the next decision uses them; no retraining)."""
    from switchboard_lora.registry.errors import SwitchboardError
    from switchboard_lora.router.files import read_examples

    texts = read_examples(file, name)
    registry = open_registry(ctx)
    added = registry.routes.add_examples(name, texts, source=str(file))
    waiting = False
    if name != "base":
        try:
            registry.resolve(name)
        except SwitchboardError:
            waiting = True
    result = {"route": name, "added": added, "duplicates": len(texts) - added, "waiting": waiting}
    text = f"{name}: {added} example(s) added, {len(texts) - added} already there"
    if waiting:
        text += f"\nnote: no live adapter is named {name} yet; the examples wait for one"
    emit(result, as_json, text)


@route_app.command("examples")
def list_examples(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Only this route's.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the examples operators added (manifest examples: `registry show`)."""
    examples = open_registry(ctx).routes.examples(name)
    if as_json:
        emit([e.to_json() for e in examples], True)
        return
    print_table(
        "route examples",
        ["id", "route", "text", "source"],
        [[e.id, e.route, e.text[:60], e.source] for e in examples],
    )


@route_app.command("remove-examples")
def remove_examples(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name, or `base`.")],
    ids: Annotated[
        list[int] | None, typer.Option("--id", help="An example id (repeatable).")
    ] = None,
    remove_all: Annotated[bool, typer.Option("--all", help="Every example of NAME.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Remove examples an operator added, by id or all of a route's."""
    if not ids and not remove_all:
        raise typer.BadParameter("name examples with --id, or pass --all")
    removed = open_registry(ctx).routes.remove_examples(name, None if remove_all else ids)
    emit({"route": name, "removed": removed}, as_json, f"{name}: {removed} example(s) removed")


def _since(value: str | None) -> datetime | None:
    """An ISO date or time (UTC unless it says), or an age: `30m`, `12h`, `7d`."""
    if value is None:
        return None
    units = {"m": 60, "h": 3600, "d": 86400}
    if value[:-1].isdigit() and value[-1:] in units:
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither an ISO date/time nor an age like 30m, 12h, 7d",
            param_hint="--since",
        ) from None


@route_app.command("review")
def review(
    ctx: typer.Context,
    uncertain: Annotated[
        bool, typer.Option("--uncertain", help="Only decisions that nearly went otherwise.")
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="Logged since: an ISO date/time, or an age (12h, 7d).")
    ] = None,
    labelled: Annotated[
        bool, typer.Option("--labelled", help="Include decisions already labelled.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Logged routing decisions (server with SWITCHBOARD_ROUTE_LOG), most uncertain first;
    label them with `route label ID ROUTE`."""
    found = open_registry(ctx).decisions.review(
        uncertain=uncertain, since=_since(since), labelled=labelled, limit=limit
    )
    if as_json:
        emit([d.to_json() for d in found], True)
        return
    print_table(
        "routing decisions to review (most uncertain first)",
        ["id", "routed to", "in-domain", "margin", "runner-up", "label", "text"],
        [
            [
                d.id,
                d.route,
                "" if d.in_domain is None else f"{d.in_domain:.3f}",
                "" if d.margin is None else f"{d.margin:.3f}",
                next((r for r in list(d.scores)[1:] if r != d.route), ""),
                d.label or "",
                " ".join(d.text.split())[:60],
            ]
            for d in found
        ],
    )


@route_app.command("label")
def label(
    ctx: typer.Context,
    decision_id: Annotated[
        int | None, typer.Argument(metavar="ID", help="A logged decision's id.", min=1)
    ] = None,
    route: Annotated[
        str | None, typer.Argument(help="The route it should have taken (or `base`).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help='JSONL, one {"id": …, "route": …} per line.')
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Label logged decisions: each request becomes an example of its route, live."""
    from switchboard_lora.router.files import read_labels

    if file is not None and decision_id is None and route is None:
        labels, source = read_labels(file), f"label ({file})"
    elif file is None and decision_id is not None and route is not None:
        labels, source = [(decision_id, route)], "label"
    else:
        raise typer.BadParameter("give ID ROUTE, or --file FILE")
    done = open_registry(ctx).decisions.label_many(labels, source)
    emit(
        [d.to_json() for d in done],
        as_json,
        "\n".join(f"{d.id}: labelled {d.label} (now an example of it)" for d in done),
    )


@route_app.command("describe")
def describe(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    text: Annotated[
        str | None, typer.Argument(help="What the route is for, in a sentence.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove NAME's description.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Describe a route: evidence beside its examples (a route with few examples, or none,
    still routes by it). Overrides the description in the version's manifest."""
    if (text is None) == (not clear):
        raise typer.BadParameter("give TEXT, or --clear")
    open_registry(ctx).routes.describe(name, None if clear else text)
    said = "description removed" if clear else "described"
    emit({"route": name, "description": None if clear else text}, as_json, f"{name}: {said}")


@route_app.command("list")
def list_routes(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The routes the router sees now: version, examples, description, threshold."""
    router = _registry_router(ctx)
    rows = [
        {
            "route": r.name,
            "ref": r.target.version.ref if r.target.version else None,
            "manifest_examples": len(r.manifest_examples),
            "added_examples": len(r.extra_examples),
            "description": r.description,
            "threshold": r.target.threshold,
        }
        for r in router.routes.values()
    ]
    if as_json:
        emit(rows, True)
        return
    print_table(
        f"routes ({router.method}; default threshold {router.policy.threshold})",
        ["route", "ref", "manifest examples", "added examples", "description", "threshold"],
        [
            [
                r["route"],
                r["ref"] or "",
                r["manifest_examples"],
                r["added_examples"],
                str(r["description"] or "")[:40],
                "" if r["threshold"] is None else f"{r['threshold']:.3f}",
            ]
            for r in rows
        ],
    )
