"""Login, logout, one's own account (password, API token) and user management (admin)."""
from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from dicom_node.db.admin_models import ROLES, User
from dicom_node.ops import queries
from dicom_node.web import auth
from dicom_node.web.deps import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    admin,
    admin_write,
    client_of,
    context,
    optional_user,
    render,
    viewer,
    viewer_write,
)

router = APIRouter()


def _safe_next(target: str | None) -> str:
    """Only local paths: a login link must not bounce the user to another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _login_page(request: Request, message: str | None, status_code: int = 200, next_path: str | None = None) -> Response:
    ctx = context(request)
    token = secrets.token_urlsafe(24)
    with ctx.db.session() as session:
        no_users = (session.scalar(select(func.count(User.id))) or 0) == 0
    response = render(request, "login.html", None, status_code=status_code, title="Log in", message=message,
                      login_csrf=token, next=_safe_next(next_path or request.query_params.get("next")), no_users=no_users)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path="/login")
    return response


def _password_gate(request: Request) -> auth.PasswordGate:
    """The app's bound on concurrent password checks (made on first use; handlers run on the event loop, so no race)."""
    state = request.app.state
    gate: auth.PasswordGate | None = getattr(state, "password_gate", None)
    if gate is None:
        gate = state.password_gate = auth.PasswordGate(context(request).config.web.max_concurrent_password_checks)
    return gate


BUSY_MESSAGE = "Too many logins are being checked right now; please try again in a few seconds."


def _secure(request: Request) -> bool:
    web = context(request).config.web
    return web.secure_cookies or web.tls_cert is not None


@router.get("/login", include_in_schema=False)
async def login_page(request: Request) -> Response:
    if await optional_user(request) is not None:
        return RedirectResponse("/", status_code=303)
    return _login_page(request, None)


@router.post("/login", include_in_schema=False)
async def login_submit(request: Request) -> Response:
    ctx = context(request)
    form = await request.form()
    sent, expected = str(form.get("login_csrf", "")), request.cookies.get(LOGIN_COOKIE, "")
    if not sent or not expected or not secrets.compare_digest(sent, expected):
        return _login_page(request, "The login form expired; please try again.", status_code=403, next_path=str(form.get("next", "")))
    try:
        outcome = await run_in_threadpool(
            auth.login, ctx.db, str(form.get("username", "")).strip(), str(form.get("password", "")),
            hours=ctx.config.web.session_hours, client=client_of(request), gate=_password_gate(request),
        )
    except auth.PasswordChecksBusy:
        busy = _login_page(request, BUSY_MESSAGE, status_code=429, next_path=str(form.get("next", "")))
        busy.headers["Retry-After"] = "5"
        return busy
    if isinstance(outcome, str):
        return _login_page(request, outcome, status_code=401, next_path=str(form.get("next", "")))
    token, _principal = outcome
    response = RedirectResponse(_safe_next(str(form.get("next", "/"))), status_code=303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path="/",
                        max_age=int(ctx.config.web.session_hours * 3600))
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, principal: auth.Principal = Depends(viewer_write)) -> Response:
    await run_in_threadpool(auth.logout, context(request).db, principal, client_of(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/account", include_in_schema=False)
def account_page(request: Request, principal: auth.Principal = Depends(viewer)) -> Response:
    with context(request).db.session() as session:
        user = session.get(User, principal.user_id)
        token_since = queries.iso(user.api_token_created_at) if user else None
    return render(request, "account.html", principal, title="Account", token_since=token_since, new_token=None)


@router.post("/account/password", include_in_schema=False)
async def change_password(request: Request, principal: auth.Principal = Depends(viewer_write)) -> Response:
    ctx = context(request)
    form = await request.form()
    current, new = str(form.get("current", "")), str(form.get("new", ""))
    try:
        right = await run_in_threadpool(auth.verify_password, ctx.db, principal.user_id, current, _password_gate(request))
    except auth.PasswordChecksBusy:
        return render(request, "account.html", principal, status_code=429, title="Account", token_since=None, new_token=None,
                      message=BUSY_MESSAGE)
    if not right:
        return render(request, "account.html", principal, status_code=400, title="Account", token_since=None, new_token=None,
                      message="The current password is wrong.")
    try:
        await run_in_threadpool(auth.update_user, ctx.db, principal.user_id, by=principal.username, client=client_of(request), password=new)
    except auth.AccountError as exc:
        return render(request, "account.html", principal, status_code=400, title="Account", token_since=None, new_token=None, message=str(exc))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/account/token", include_in_schema=False)
async def make_token(request: Request, principal: auth.Principal = Depends(viewer_write)) -> Response:
    token = await run_in_threadpool(auth.new_api_token, context(request).db, principal, client_of(request))
    return render(request, "account.html", principal, title="Account", token_since="now", new_token=token)


@router.get("/users", include_in_schema=False)
def users_page(request: Request, principal: auth.Principal = Depends(admin)) -> Response:
    with context(request).db.session() as session:
        users = [
            {"id": u.id, "username": u.username, "role": u.role, "active": u.active, "created_at": queries.iso(u.created_at),
             "created_by": u.created_by, "last_login_at": queries.iso(u.last_login_at), "has_token": u.api_token_hash is not None}
            for u in session.scalars(select(User).order_by(User.username))
        ]
    return render(request, "users.html", principal, title="Users", users=users, roles=ROLES)


@router.post("/users", include_in_schema=False)
async def create_user(request: Request, principal: auth.Principal = Depends(admin_write)) -> Response:
    ctx = context(request)
    form = await request.form()
    try:
        await run_in_threadpool(
            auth.create_user, ctx.db, str(form.get("username", "")).strip(), str(form.get("password", "")),
            str(form.get("role", "viewer")), created_by=principal.username, client=client_of(request),
        )
        auth.set_flash(ctx.db, principal, f"User {form.get('username')} created.")
    except auth.AccountError as exc:
        auth.set_flash(ctx.db, principal, f"Not created: {exc}")
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{user_id}", include_in_schema=False)
async def change_user(request: Request, user_id: int, principal: auth.Principal = Depends(admin_write)) -> Response:
    ctx = context(request)
    form = await request.form()
    role = form.get("role")
    active = form.get("active")
    password = form.get("password")
    try:
        user = await run_in_threadpool(
            auth.update_user, ctx.db, user_id, by=principal.username, client=client_of(request),
            role=str(role) if role else None, active=None if active is None else active == "true",
            password=str(password) if password else None,
        )
        auth.set_flash(ctx.db, principal, f"User {user.username} updated; their sessions were ended.")
    except auth.AccountError as exc:
        auth.set_flash(ctx.db, principal, f"Not changed: {exc}")
    return RedirectResponse("/users", status_code=303)
