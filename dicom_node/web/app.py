"""The FastAPI application: pages, JSON API, OpenAPI docs and /metrics, all behind a login.

``create_app(config, db, rules)`` is used by the node (``rules`` is its live
rule source, so pages show what the node runs) and by tests (``rules=None``:
rules are loaded from the configured source on demand).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from dicom_node import __version__
from dicom_node.config import NodeConfig
from dicom_node.db import Database
from dicom_node.web import api, auth, views_auth, views_ops, views_rules
from dicom_node.web.deps import TEMPLATES, Forbidden, NotAuthenticated, WebContext, is_api, render, viewer

STATIC = Path(__file__).resolve().parent / "static"
# Pages load scripts and styles from /static only; /docs (Swagger UI) is the one exception.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
DOCS_CSP = ("default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com; style-src 'self' https://cdn.jsdelivr.net; "
            "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; frame-ancestors 'none'")


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.globals["version"] = __version__
    return templates


def create_app(config: NodeConfig, db: Database, rules: Any = None) -> FastAPI:
    """Build the app around the node's config, database and (optionally) live rule source."""
    from dicom_node.ops.metrics import CONTENT_TYPE, MetricsPage

    app = FastAPI(title="dicom-node admin API", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  description="JSON API of the dicom-node admin app. Log in first (session cookie + X-CSRF-Token header for "
                              "changes) or send `Authorization: Bearer <API token>` (Account page).")
    app.state.ctx = WebContext(config=config, db=db, rules=rules, templates=_templates())

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", DOCS_CSP if request.url.path == "/docs" else CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(NotAuthenticated)
    async def not_authenticated(request: Request, exc: NotAuthenticated) -> Response:
        if is_api(request) or request.method != "GET":
            return JSONResponse({"detail": "login required"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        if is_api(request) or "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"detail": str(exc)}, status_code=403)
        principal = getattr(request.state, "principal", None)
        return render(request, "message.html", principal, status_code=403, title="Not allowed", message=str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if is_api(request) or exc.status_code != 404:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        principal = getattr(request.state, "principal", None)
        return render(request, "message.html", principal, status_code=404, title="Not found", message="There is no such page.")

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        return JSONResponse({"detail": exc.errors()}, status_code=422)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.include_router(views_auth.router)
    app.include_router(views_ops.router)
    app.include_router(views_rules.router)
    app.include_router(api.router)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(principal: auth.Principal = Depends(viewer)) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(principal: auth.Principal = Depends(viewer)) -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="dicom-node API")

    metrics_page = MetricsPage(db, rules)  # one per app: its collector keeps running totals between scrapes

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
        body = await run_in_threadpool(metrics_page.render)
        return Response(body, media_type=CONTENT_TYPE)

    return app
