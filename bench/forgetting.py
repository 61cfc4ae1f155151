"""The forgetting report: does parameter isolation keep what the base knew, next to the remedies
the continual-learning literature recommends?

    python -m bench.forgetting [--steps 8] [--methods full,replay,ewc,l2sp,switchboard]
                               [--domains math,sql,...] [--out forgetting] [--json]

Trains the five demo domains in turn (math, sql, science, code, dialogue) with each method on
the same rows and step budget, measures every earlier domain's held-out loss after each domain
and general ability (XSum perplexity, BIG-bench `general_knowledge` by log-likelihood) at the
start and the end; prints the table, writes `<out>/forgetting.json` and `<out>/forgetting.png`.
About 25 minutes on the 2-core CPU with the defaults. The harness is `evaluation/forgetting/`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from bench._common import HomeOption, default_base, run_benchmark
from evaluation.forgetting.budget import Budget
from evaluation.forgetting.report import METHODS, plot, run, table
from support.paths import DATA
from switchboard_lora.demo_data import DOMAINS
from switchboard_lora.registry import SwitchboardError


def main(
    steps: Annotated[int, typer.Option(help="Training steps per domain, every method.")] = (
        Budget.steps
    ),
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = ",".join(METHODS),
    domains: Annotated[str, typer.Option(help="Comma-separated domains, in training order.")] = (
        ",".join(DOMAINS)
    ),
    eval_rows: Annotated[int, typer.Option(help="Held-out rows per domain.")] = Budget.eval_rows,
    general_rows: Annotated[int, typer.Option(help="XSum articles for perplexity.")] = (
        Budget.general_rows
    ),
    questions: Annotated[int, typer.Option(help="general_knowledge questions.")] = (
        Budget.knowledge
    ),
    out: Annotated[Path, typer.Option(help="Folder for forgetting.json and .png.")] = Path(
        "forgetting"
    ),
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    try:
        budget = replace(
            Budget(),
            steps=steps,
            eval_rows=eval_rows,
            general_rows=general_rows,
            knowledge=questions,
        )
        base = default_base(home)
        report = run(
            base, DATA, methods=methods.split(","), order=domains.split(","), budget=budget
        )
    except SwitchboardError as exc:  # bad options: say what is wrong, no traceback
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "forgetting.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    plot(report, out / "forgetting.png")
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(table(report))
        print(f"\nwrote {out / 'forgetting.json'} and {out / 'forgetting.png'}")


if __name__ == "__main__":
    run_benchmark(main)
