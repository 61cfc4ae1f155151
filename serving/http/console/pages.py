"""The console's pages and actions. Every read and write goes through the registry the admin
API uses (same calls, same checks, same errors); an action that fails changes nothing and
shows the API's message on the page, with the API's status."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from switchboard_lora.registry.decision_log import UNCERTAIN_MARGIN
from switchboard_lora.registry.errors import ErrorCode, SwitchboardError
from switchboard_lora.registry.experiments.plot import plot
from switchboard_lora.registry.experiments.stats import summarise
from switchboard_lora.registry.refs import MAX_VERSION
from switchboard_lora.registry.route_store import BASE_ROUTE
from switchboard_lora.serving.http.admin import MAX_ROW_ID
from switchboard_lora.serving.http.auth import configured_keys
from switchboard_lora.serving.http.console import charts, readings
from switchboard_lora.serving.http.console.session import (
    COOKIE,
    PREFIX,
    LoginNeeded,
    check_login,
    checked_form,
    console_user,
    csrf_token,
    form_of,
    same_origin,
)
from switchboard_lora.serving.http.deps import get_registry, get_service
from switchboard_lora.serving.http.errors import STATUS

router = APIRouter(prefix=PREFIX, include_in_schema=False)
UserDep = Annotated[str, Depends(console_user)]
MAX_LISTED = 1000  # decisions on one review page
VERSIONS_LISTED = 10  # per adapter on the overview, besides those with an alias
EXAMPLES_SHOWN = 200

templates = Environment(
    loader=PackageLoader("switchboard_lora.serving.http.console"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    scaled, unit = next(
        (n / 1000**i, u) for i, u in ((3, "GB"), (2, "MB"), (1, "KB")) if n >= 1000**i
    )
    return f"{scaled:.1f} {unit}"


def _seconds(s: float | None) -> str:
    if s is None:
        return "\N{EN DASH}"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def _bound(s: float | None) -> str:
    """A histogram quantile: the bound of the bucket it falls in, an upper bound."""
    return _seconds(s) if s is None else f"\N{LESS-THAN OR EQUAL TO} {_seconds(s)}"


templates.filters["size"] = _size
templates.filters["bound"] = _bound
templates.filters["iso"] = lambda text: f"{text[:16].replace('T', ' ')} UTC"
templates.filters["seconds"] = _seconds
templates.filters["when"] = lambda t: t.strftime("%Y-%m-%d %H:%M")


def _render(
    request: Request, user: str, page: str, *, status: int = 200, **context: Any
) -> HTMLResponse:
    clients, admins = configured_keys(request)
    html = templates.get_template(f"{page}.html").render(
        page=page,
        csrf=csrf_token(request, user),
        keyed=bool(clients or admins),
        notice=request.query_params.get("done"),
        **context,
    )
    return HTMLResponse(html, status_code=status)


def _back(path: str, done: str, query: str = "") -> RedirectResponse:
    """After a change: the page again (a reload never repeats the change), saying what was
    done."""
    query = f"{query}&" if query else ""
    return RedirectResponse(f"{PREFIX}{path}?{query}{urlencode({'done': done})}", status_code=303)


def _shown(exc: SwitchboardError) -> dict[str, Any]:
    """A refused action on its page: the API's status and message."""
    return {"status": STATUS.get(exc.code, 400), "error": exc.message}


def _one(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


def _whole_number(text: str, what: str, top: int) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= top:  # not "²"
        raise SwitchboardError(ErrorCode.INVALID_INPUT, f"{what} must be a whole number ≥ 1")
    return int(text)


def install_console(app: Any) -> None:
    """The pages, and a login form wherever a console page is asked for without a key."""
    app.include_router(router)
    for name in templates.list_templates(extensions=["html"]):
        templates.get_template(name)  # compiled now, not by the first page a user opens

    @app.exception_handler(LoginNeeded)
    async def login_needed(request: Request, _: LoginNeeded) -> Response:
        if request.method == "GET":
            target = urlencode({"next": request.url.path})
            return RedirectResponse(f"{PREFIX}/login?{target}", status_code=303)
        return HTMLResponse("<p>Log in to the console first.</p>", status_code=401)


# ---- login ---------------------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
async def home() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/adapters", status_code=303)


def _next(path: str) -> str:
    return path if path.startswith(f"{PREFIX}/") and "//" not in path else f"{PREFIX}/adapters"


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "") -> HTMLResponse:
    return _render(request, "", "login", next=_next(next))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await form_of(request)
    target = _next(_one(form, "next"))
    try:
        same_origin(request)
        key = _one(form, "key")
        check_login(key, request)
    except SwitchboardError as exc:
        return _render(request, "", "login", next=target, **_shown(exc))
    answer = RedirectResponse(target, status_code=303)
    answer.set_cookie(
        COOKIE,
        key,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=PREFIX,
    )
    return answer


@router.post("/logout")
async def logout(request: Request, user: UserDep) -> Response:
    await checked_form(request, user)
    answer = RedirectResponse(f"{PREFIX}/login", status_code=303)
    answer.delete_cookie(COOKIE, path=PREFIX)
    return answer


# ---- adapters ------------------------------------------------------------------------------


async def _adapters_page(
    request: Request, user: str, only: str | None = None, **shown: Any
) -> HTMLResponse:
    """Every adapter with its aliased and newest versions (`only`: one adapter, all of them)."""
    registry = await get_registry(request)
    details = await asyncio.to_thread(registry.catalogue)
    if only is not None:
        details = [d for d in details if d.info.name == only]
        if not details:
            await asyncio.to_thread(
                registry.list_versions, only
            )  # the API's refusal: no such adapter
    traffic = readings.traffic(request.app.state.metrics.registry)
    adapters = []
    for name, group in groupby(details, key=lambda d: d.info.name):
        versions = list(group)[::-1]  # newest first
        listed = [
            v for i, v in enumerate(versions) if only or i < VERSIONS_LISTED or v.info.aliases
        ]
        adapters.append({"name": name, "versions": listed, "total": len(versions)})
    return _render(
        request,
        user,
        "adapters",
        adapters=adapters,
        only=only,
        traffic={ref: t.to_json() for ref, t in traffic.items()},
        checks=request.app.state.console_checks,
        **shown,
    )


@router.get("/adapters", response_class=HTMLResponse)
async def adapters_page(request: Request, user: UserDep) -> HTMLResponse:
    return await _adapters_page(request, user)


@router.get("/adapters/{name}", response_class=HTMLResponse)
async def adapter_page(request: Request, name: str, user: UserDep) -> HTMLResponse:
    try:
        return await _adapters_page(request, user, name)
    except SwitchboardError as exc:
        return await _adapters_page(request, user, **_shown(exc))


@router.post("/adapters/{name}/aliases")
async def point_alias(request: Request, name: str, user: UserDep) -> Response:
    form = await checked_form(request, user)
    try:
        alias = _one(form, "alias")
        version = _whole_number(_one(form, "version"), "version", MAX_VERSION)
        registry = await get_registry(request)
        await asyncio.to_thread(registry.set_alias, name, alias, version)
    except SwitchboardError as exc:
        return await _adapters_page(request, user, **_shown(exc))
    return _back("/adapters", f"{name}@{alias} now serves {name}:{version}")


@router.post("/adapters/{name}/aliases/{alias}/remove")
async def remove_alias(request: Request, name: str, alias: str, user: UserDep) -> Response:
    await checked_form(request, user)
    try:
        registry = await get_registry(request)
        await asyncio.to_thread(registry.remove_alias, name, alias)
    except SwitchboardError as exc:
        return await _adapters_page(request, user, **_shown(exc))
    return _back("/adapters", f"removed {name}@{alias}")


@router.post("/adapters/verify")
async def verify_version(request: Request, user: UserDep) -> Response:
    """Re-hash a version's files and check the engines can load it (`registry verify REF`)."""
    form = await checked_form(request, user)
    try:
        service = await get_service(request)
        (result,) = await asyncio.to_thread(
            service.registry.verify, _one(form, "ref"), [service.base]
        )
    except SwitchboardError as exc:
        return await _adapters_page(request, user, **_shown(exc))
    request.app.state.console_checks[result.ref] = {
        "problems": list(result.problems),
        "notes": list(result.notes),
        "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    outcome = "intact" if not result.problems else f"{len(result.problems)} problem(s)"
    return _back("/adapters", f"verified {result.ref}: {outcome}")


# ---- routing review ------------------------------------------------------------------------


_REVIEW_FILTERS = ("route", "since", "order", "labelled", "limit")


def _filters(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The review page's filters among a query's pairs (the page's URL, or the one a label
    form carries back)."""
    return {k: v for k, v in pairs if k in _REVIEW_FILTERS and v}


async def _review_page(
    request: Request, user: str, query: dict[str, str], **shown: Any
) -> HTMLResponse:
    registry = await get_registry(request)
    decisions: list[Any] = []
    since = None
    try:
        if query.get("since"):
            try:
                since = datetime.fromisoformat(query["since"])
            except ValueError:
                raise SwitchboardError(
                    ErrorCode.INVALID_INPUT, f"since: {query['since']!r} is not a date and time"
                ) from None
        limit = _whole_number(query.get("limit", "50"), "limit", MAX_LISTED)
        decisions = await asyncio.to_thread(
            lambda: registry.decisions.review(
                uncertain=False,
                since=since,
                labelled=query.get("labelled") == "1",
                limit=limit,
                route=query.get("route") or None,
                newest=query.get("order") == "newest",
            )
        )
    except SwitchboardError as exc:  # a bad filter: the page without rows, and why
        shown = _shown(exc)
    window = since or datetime.now(UTC) - timedelta(hours=24)
    activity = await asyncio.to_thread(registry.decisions.activity, window)
    routes = [a.name for a in await asyncio.to_thread(registry.list_adapters)] + [BASE_ROUTE]
    return _render(
        request,
        user,
        "review",
        decisions=decisions,
        routes=routes,
        query=query,
        back=urlencode(query),
        chart=charts.activity(activity),
        uncertain_margin=UNCERTAIN_MARGIN,
        **shown,
    )


@router.get("/review", response_class=HTMLResponse)
async def review_page(request: Request, user: UserDep) -> HTMLResponse:
    return await _review_page(request, user, _filters(request.query_params.items()))


@router.post("/review/label")
async def label(request: Request, user: UserDep) -> Response:
    form = await checked_form(request, user)
    back = _filters(parse_qsl(_one(form, "back")))
    try:
        registry = await get_registry(request)
        if form.get("one"):  # one row's button, "ID:ROUTE": the admin API's label, exactly
            decision, _, route = _one(form, "one").partition(":")
            number = _whole_number(decision, "decision id", MAX_ROW_ID)
            labelled = [await asyncio.to_thread(registry.decisions.label, number, route, "console")]
        else:  # the selected rows, one route: all checked before any is applied
            route = _one(form, "route")
            ids = [_whole_number(i, "decision id", MAX_ROW_ID) for i in form.get("ids", [])]
            if not ids:
                raise SwitchboardError(ErrorCode.INVALID_INPUT, "select the decisions to label")
            labels = [(i, route) for i in ids]
            labelled = await asyncio.to_thread(registry.decisions.label_many, labels, "console")
    except SwitchboardError as exc:
        return await _review_page(request, user, back, **_shown(exc))
    said = ", ".join(f"#{d.id} → {d.label}" for d in labelled)
    return _back("/review", f"labelled {said}", urlencode(back))


async def _route_page(request: Request, user: str, route: str, **shown: Any) -> HTMLResponse:
    registry = await get_registry(request)
    examples = await asyncio.to_thread(registry.routes.examples, route)
    descriptions = await asyncio.to_thread(registry.routes.descriptions)
    return _render(
        request,
        user,
        "route",
        route=route,
        description=descriptions.get(route, ""),
        examples=examples[-EXAMPLES_SHOWN:][::-1],
        total=len(examples),
        **shown,
    )


@router.get("/routes/{route}", response_class=HTMLResponse)
async def route_page(request: Request, route: str, user: UserDep) -> HTMLResponse:
    return await _route_page(request, user, route)


@router.post("/routes/{route}/description")
async def describe(request: Request, route: str, user: UserDep) -> Response:
    form = await checked_form(request, user)
    text = _one(form, "description")
    try:
        registry = await get_registry(request)
        await asyncio.to_thread(registry.routes.describe, route, text or None)
    except SwitchboardError as exc:
        return await _route_page(request, user, route, **_shown(exc))
    return _back(f"/routes/{route}", "description saved" if text else "description removed")


@router.post("/routes/{route}/examples")
async def add_examples(request: Request, route: str, user: UserDep) -> Response:
    form = await checked_form(request, user)
    lines = [line.strip() for line in _one(form, "examples").splitlines() if line.strip()]
    try:
        if not lines:
            raise SwitchboardError(
                ErrorCode.INVALID_INPUT, "give at least one example, one per line"
            )
        registry = await get_registry(request)
        added = await asyncio.to_thread(registry.routes.add_examples, route, lines, "console")
    except SwitchboardError as exc:
        return await _route_page(request, user, route, **_shown(exc))
    return _back(f"/routes/{route}", f"added {added} example(s)")


@router.post("/routes/{route}/examples/remove")
async def remove_examples(request: Request, route: str, user: UserDep) -> Response:
    form = await checked_form(request, user)
    try:
        ids = [_whole_number(i, "example id", MAX_ROW_ID) for i in form.get("ids", [])]
        if not ids:
            raise SwitchboardError(ErrorCode.INVALID_INPUT, "select the examples to remove")
        registry = await get_registry(request)
        removed = await asyncio.to_thread(registry.routes.remove_examples, route, ids)
    except SwitchboardError as exc:
        return await _route_page(request, user, route, **_shown(exc))
    return _back(f"/routes/{route}", f"removed {removed} example(s)")


# ---- experiments ---------------------------------------------------------------------------


async def _experiments_page(request: Request, user: str, **shown: Any) -> HTMLResponse:
    registry = await get_registry(request)

    def summaries() -> list[dict[str, Any]]:
        store = registry.experiments
        return [summarise(e, store.exposures(e.name)) for e in reversed(store.list_experiments())]

    found = await asyncio.to_thread(summaries)
    running = any(s["experiment"]["stopped_at"] is None for s in found)
    return _render(request, user, "experiments", experiments=found, running=running, **shown)


@router.get("/experiments", response_class=HTMLResponse)
async def experiments_page(request: Request, user: UserDep) -> HTMLResponse:
    return await _experiments_page(request, user)


@router.get("/experiments/{name}/plot.png")
async def experiment_plot(request: Request, name: str, user: UserDep) -> Response:
    registry = await get_registry(request)

    def draw() -> bytes:
        store = registry.experiments
        summary = summarise(store.get(name), store.exposures(name))
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "plot.png"
            plot(summary, str(path))
            return path.read_bytes()

    png = await asyncio.to_thread(draw)
    return Response(png, media_type="image/png", headers={"cache-control": "no-store"})


@router.post("/experiments/{name}/stop")
async def stop_experiment(request: Request, name: str, user: UserDep) -> Response:
    await checked_form(request, user)
    try:
        registry = await get_registry(request)
        await asyncio.to_thread(registry.experiments.stop, name)
    except SwitchboardError as exc:
        return await _experiments_page(request, user, **_shown(exc))
    return _back("/experiments", f"stopped {name}")


@router.post("/experiments/{name}/promote")
async def promote_experiment(request: Request, name: str, user: UserDep) -> Response:
    form = await checked_form(request, user)
    try:
        registry = await get_registry(request)
        done = await asyncio.to_thread(registry.experiments.promote, name, _one(form, "ref"))
    except SwitchboardError as exc:
        return await _experiments_page(request, user, **_shown(exc))
    return _back("/experiments", f"{name}: {done.outcome}")


# ---- live ----------------------------------------------------------------------------------


@router.get("/live", response_class=HTMLResponse)
async def live_page(request: Request, user: UserDep) -> HTMLResponse:
    return _render(request, user, "live", reading=readings.live(request.app.state.metrics.registry))


@router.get("/live.json")
async def live_json(request: Request, user: UserDep) -> JSONResponse:
    return JSONResponse(readings.live(request.app.state.metrics.registry))
