"""What every request handler needs: the node's objects, who is asking, CSRF, rendering.

Access rules, in one place:

* no valid session cookie or API token: pages redirect to /login, the API
  and /metrics answer 401; nothing else is served (static files excepted);
* ``viewer`` reads everything except users and the audit log; ``editor``
  may also change rules, retry, echo and run self tests; ``admin`` may also
  manage users and read the audit log;
* every state-changing request made with a session cookie must carry the
  session's CSRF token (form field ``csrf_token`` or header
  ``X-CSRF-Token``), otherwise 403.
"""
from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from dicom_node.config import NodeConfig
from dicom_node.db import Database
from dicom_node.web import auth

SESSION_COOKIE = "dn_session"
LOGIN_COOKIE = "dn_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
TEMPLATES = Path(__file__).resolve().parent / "templates"


class NotAuthenticated(Exception):
    """No valid session or token: redirect to the login page, or 401 for the API."""


class Forbidden(Exception):
    """Authenticated, but the role or the CSRF token does not allow this."""


@dataclass
class WebContext:
    """The node objects the app works with; ``rules`` is the live rule source when run inside the node."""

    config: NodeConfig
    db: Database
    rules: Any
    templates: Jinja2Templates

    def ruleset(self) -> Any:
        """The rules the node uses now (live source), or a fresh load when the app runs on its own."""
        if self.rules is not None:
            return self.rules.current()
        from dicom_node.routing.rule_sources import configured_ruleset

        return configured_ruleset(self.config, self.db)


def context(request: Request) -> WebContext:
    return request.app.state.ctx


def client_of(request: Request) -> str | None:
    return request.client.host if request.client else None


def is_api(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/metrics", "/openapi.json"))


def _lookup(ctx: WebContext, request: Request) -> auth.Principal | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return auth.principal_from_api_token(ctx.db, header[7:].strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    return auth.principal_from_cookie(ctx.db, cookie) if cookie else None


async def optional_user(request: Request) -> auth.Principal | None:
    if not hasattr(request.state, "principal"):
        request.state.principal = await run_in_threadpool(_lookup, context(request), request)
    return request.state.principal


async def _check_csrf(request: Request, principal: auth.Principal) -> None:
    if principal.via != "session":
        return  # bearer tokens are not sent by browsers on their own: no CSRF risk
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not principal.csrf_token or not secrets.compare_digest(sent, principal.csrf_token):
        raise Forbidden("missing or wrong CSRF token: reload the page and try again")


def needs(role: str, *, write: bool = False) -> Callable[[Request], Awaitable[auth.Principal]]:
    """Dependency: a principal with at least ``role``; with ``write``, the CSRF token is checked too."""

    async def dependency(request: Request) -> auth.Principal:
        principal = await optional_user(request)
        if principal is None:
            raise NotAuthenticated()
        if not principal.can(role):
            raise Forbidden(f"this needs the {role} role; you are {principal.role}")
        if write:
            await _check_csrf(request, principal)
        return principal

    return dependency


viewer = needs("viewer")
admin = needs("admin")
editor_write = needs("editor", write=True)
admin_write = needs("admin", write=True)
viewer_write = needs("viewer", write=True)


def render(request: Request, template: str, principal: auth.Principal | None, status_code: int = 200, **values: Any) -> Response:
    """A page with the layout's common values (user, CSRF token, one-time message)."""
    ctx = context(request)
    flash = auth.take_flash(ctx.db, principal) if principal is not None else None
    values.setdefault("title", "")
    return ctx.templates.TemplateResponse(
        request, template,
        {"user": principal, "csrf": principal.csrf_token if principal else "", "flash": flash, "config": ctx.config, **values},
        status_code=status_code,
    )
