"""The API's own documentation (`/docs`, `/redoc`, `/openapi.json`): open while the API is,
behind the keys once keys are configured, unless `open_docs` says otherwise. The schema
names every admin route and field, which a server behind keys should not hand to strangers.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from switchboard_lora.serving.http.auth import check_key


def install_docs(app: FastAPI, *, behind_keys: bool) -> None:
    guard = [Depends(check_key)] if behind_keys else []

    @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} API")

    @app.get("/redoc", include_in_schema=False, dependencies=guard)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} API")
