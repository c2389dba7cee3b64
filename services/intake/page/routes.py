"""The customer's cancel page (SPEC section 7), served by intake at /cancel/{token}.

Four steps, each a plain form post (no JavaScript needed): 1. reason and contact, 2. the offers for the
reason, 3. the quote with a date picker limited to valid dates, 4. confirm. The submission is recorded
exactly as the API records one (actions.submit_form), and the request's status page follows it; its
script only refreshes the status part. From the status page the customer withdraws, or takes one of the
request's offers, as the API does it (actions.ask_withdrawal). What the steps carry so far travels in hidden
fields.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError

from shared.contract_calendar import tokyo_date
from shared.events import CancellationForm, Customer
from shared.service import Runtime
from shared.vocabulary import Reason, RequestStatus

from ..links import InvalidLink, verify_link
from ..quote import Quoter
from ..settings import IntakeSettings
from ..actions import ask_withdrawal, submit_form
from ..domain import AskWithdrawal, IdempotencyConflict, answer_withdrawal
from ..store import ContractState, request_of_contract
from . import csrf, wording

HERE = Path(__file__).parent
ASSETS = {"page.css": "text/css; charset=utf-8", "status.js": "text/javascript; charset=utf-8"}
# Nothing from elsewhere, nothing inline: the page's own stylesheet and script only.
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           # The link's token is in the URL: never sent on to another site, never cached.
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
FINAL = {RequestStatus.rejected, RequestStatus.withdrawn, RequestStatus.completed}

_env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)
_env.globals |= {"REASONS": wording.REASONS, "OFFERS": wording.OFFERS, "CODES": wording.CODES,
                 "STATUSES": wording.STATUSES, "NOTIFICATIONS": wording.NOTIFICATIONS, "PLANS": wording.PLANS}
_env.filters |= {"jp_date": wording.jp_date, "jp_time": wording.jp_time, "yen": wording.yen}


@dataclass(frozen=True)
class Draft:
    """What the customer entered so far (every step posts all of it again)."""

    reason: str = ""
    feedback: str = ""
    name: str = ""
    email: str = ""
    phone: str = ""
    desired_effective_date: str = ""

    @classmethod
    def of(cls, form: Any) -> "Draft":
        return cls(**{k: str(form.get(k, "")).strip() for k in cls.__dataclass_fields__})

    def date(self) -> date | None:
        try:
            return date.fromisoformat(self.desired_effective_date) if self.desired_effective_date else None
        except ValueError:
            return None

    def errors(self) -> dict[str, str]:
        """Field -> what to fix, in the customer's words."""
        errors: dict[str, str] = {}
        if self.reason not in Reason.__members__:
            errors["reason"] = "ご解約理由を選択してください。"
        try:
            Customer(name=self.name, email=self.email, phone=self.phone)
        except ValidationError as exc:
            for err in exc.errors():
                field = str(err["loc"][0])
                errors[field] = {"name": "ご契約者名を入力してください。",
                                 "email": "メールアドレスを正しく入力してください。",
                                 "phone": "お電話番号を数字とハイフンで入力してください（例: 090-1234-5678）。"}[field]
        if len(self.feedback) > 4000:
            errors["feedback"] = "4000文字以内でご記入ください。"
        if self.desired_effective_date and self.date() is None:
            errors["desired_effective_date"] = "解約希望日を日付で指定してください。"
        return errors

    def form(self, state: ContractState) -> CancellationForm:
        return CancellationForm(
            contract_id=state.terms.contract_id, account_id=state.account_id, plan=state.plan,
            customer=Customer(name=self.name, email=self.email, phone=self.phone), reason=Reason(self.reason),
            feedback=self.feedback, desired_effective_date=self.date())


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def install_page(runtime: Runtime, app: FastAPI, quoter: Quoter) -> None:
    settings: IntakeSettings = runtime.settings  # type: ignore[assignment]
    secret = settings.link_secret.get_secret_value() if settings.link_secret else None
    secure_cookie = settings.public_url.startswith("https://")

    def page(template: str, status_code: int = 200, cookie: str | None = None, **context: Any) -> HTMLResponse:
        response = HTMLResponse(_env.get_template(template).render(**context), status_code=status_code,
                                headers=HEADERS)
        if cookie is not None:
            response.set_cookie(csrf.COOKIE, cookie, httponly=True, samesite="strict", secure=secure_cookie,
                                path="/cancel/")
        return response

    def invalid_link() -> HTMLResponse:
        # One page for expired, altered and unknown: it must not tell whether the contract exists.
        return page("invalid.html", status_code=404)

    async def contract_of(token: str) -> ContractState | None:
        if secret is None:
            return None
        try:
            link = verify_link(secret, token, runtime.clock.now())
        except InvalidLink:
            return None
        return await quoter.contract(link.contract_id)

    def base(request: Request, token: str, state: ContractState) -> tuple[dict, str | None]:
        """The context every page shares, and the CSRF cookie to set if the browser has none yet."""
        cookie = request.cookies.get(csrf.COOKIE)
        new_cookie = None if cookie else csrf.new_cookie_value()
        context = {"token": token, "state": state, "csrf": csrf.form_token(secret, cookie or new_cookie, token),
                   "plan": wording.PLANS.get(state.plan, state.plan), "today": tokyo_date(runtime.clock.now())}
        return context, new_cookie

    async def posted(request: Request, token: str) -> tuple[ContractState, Any, dict] | Response:
        """A post: the link's contract, the form, the shared context; or the page that refuses it."""
        state = await contract_of(token)
        if state is None:
            return invalid_link()
        form = await request.form()
        if not csrf.form_token_valid(secret, request.cookies.get(csrf.COOKIE), token, form.get("csrf")):
            return page("expired.html", status_code=403, token=token)
        context, _ = base(request, token, state)
        return state, form, context

    async def step(request: Request, token: str) -> tuple[ContractState, Any, Draft, dict] | Response:
        """A step's post, with what the customer entered so far; step 1 again, with the errors, if it is wrong."""
        got = await posted(request, token)
        if isinstance(got, Response):
            return got
        state, form, context = got
        draft = Draft.of(form)
        if errors := draft.errors():
            return page("reason.html", status_code=422, step=1, draft=asdict(draft), errors=errors, **context)
        return state, form, draft, context

    def step_route(path: str) -> Callable:
        """Registers `handler(token, state, form, draft, context)` as the POST of a step: it runs only on a
        post `step()` accepted (the link valid, the CSRF token right, the form complete)."""
        def register(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
            async def route(request: Request, token: str) -> Response:
                got = await step(request, token)
                return got if isinstance(got, Response) else await handler(token, *got)

            app.post(f"/cancel/{{token}}/{path}", include_in_schema=False, name=handler.__name__)(route)
            return handler
        return register

    def quote_page(context: dict, state: ContractState, draft: Draft, status_code: int = 200) -> HTMLResponse:
        q = quoter.quote(state, desired_effective_date=draft.date(), reason=Reason(draft.reason))
        return page("quote.html", status_code=status_code, step=3, draft=asdict(draft), quote=q, **context)

    @app.get("/cancel/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            return Response(status_code=404)
        return Response((HERE / "static" / name).read_bytes(), media_type=ASSETS[name],
                        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})

    @app.get("/cancel/{token}", include_in_schema=False)
    async def start(request: Request, token: str) -> Response:
        state = await contract_of(token)
        if state is None:
            return invalid_link()
        context, cookie = base(request, token, state)
        c = state.customer
        draft = Draft(name=c.name, email=str(c.email), phone=c.phone) if c else Draft()
        return page("reason.html", cookie=cookie, step=1, draft=asdict(draft), errors={}, **context)

    @step_route("offers")
    async def offers(token: str, state: ContractState, form: Any, draft: Draft, context: dict) -> Response:
        q = quoter.quote(state, desired_effective_date=None, reason=Reason(draft.reason))
        if not q.offers:
            return quote_page(context, state, draft)
        return page("offers.html", step=2, draft=asdict(draft), offers=q.offers, **context)

    @step_route("quote")
    async def quote_step(token: str, state: ContractState, form: Any, draft: Draft, context: dict) -> Response:
        return quote_page(context, state, draft)

    @step_route("confirm")
    async def confirm(token: str, state: ContractState, form: Any, draft: Draft, context: dict) -> Response:
        q = quoter.quote(state, desired_effective_date=draft.date(), reason=Reason(draft.reason))
        if q.codes:  # the rules it breaks, shown on the quote step with the earliest date
            return quote_page(context, state, draft, status_code=422)
        # One key per confirmation shown: pressing the button twice is one request.
        return page("confirm.html", step=4, draft=asdict(draft), quote=q, attempt=uuid.uuid4().hex, **context)

    @step_route("submit")
    async def submit(token: str, state: ContractState, form: Any, draft: Draft, context: dict) -> Response:
        attempt = str(form.get("attempt", ""))
        try:
            # As the API records a form (source http, the key as submission_id): the same events follow.
            recorded = await submit_form(runtime, draft.form(state),
                                         submission_id=f"page-{attempt}" if attempt else None)
        except IdempotencyConflict:
            return page("expired.html", status_code=409, token=token)
        return RedirectResponse(f"/cancel/{token}/requests/{recorded.request_id}", status_code=303)

    async def request_row(token: str, request_id: str) -> tuple[ContractState, Any] | None:
        state = await contract_of(token)
        if state is None or not _is_uuid(request_id):
            return None
        row = await request_of_contract(runtime.pool, request_id, state.terms.contract_id)
        return None if row is None else (state, row)

    def status_context(row: Any, today: date) -> dict:
        status = RequestStatus(row["status"])
        # May the customer still withdraw (and so take one of the offers)? Asked as the API asks it, without an offer.
        withdrawable = isinstance(answer_withdrawal(status=status, effective_date=row["effective_date"], today=today,
                                                    offers=tuple(row["offers"]),
                                                    asked=row["withdrawal_requested_at"] is not None,
                                                    asked_with=row["withdrawal_offer"], taken_offer=None),
                                  AskWithdrawal)
        return {"r": row, "status": status, "final": status in FINAL, "withdrawable": withdrawable,
                "settlement": row["settlement"], "notifications": row["notifications"]}

    async def status_response(request: Request, token: str, request_id: str, *, live: bool) -> Response:
        """The request's status page, or (live) only its status part, which the page's script refreshes."""
        found = await request_row(token, request_id)
        if found is None:
            return invalid_link()
        state, row = found
        context, cookie = base(request, token, state)
        context |= status_context(row, context["today"])
        if live:
            return page("_status.html", **context)
        return page("status.html", cookie=cookie, step=5, **context)

    @app.get("/cancel/{token}/requests/{request_id}", include_in_schema=False)
    async def status_page(request: Request, token: str, request_id: str) -> Response:
        return await status_response(request, token, request_id, live=False)

    @app.get("/cancel/{token}/requests/{request_id}/live", include_in_schema=False)
    async def status_live(request: Request, token: str, request_id: str) -> Response:
        return await status_response(request, token, request_id, live=True)

    async def ask(request: Request, token: str, request_id: str, offer: str | None) -> Response:
        """A withdrawal, taking `offer` or none, asked as the API asks it (actions.ask_withdrawal): the status
        page follows it; what the API answers 409 is that page again, saying why in the customer's words."""
        got = await posted(request, token)
        if isinstance(got, Response):
            return got
        if await request_row(token, request_id) is None:
            return invalid_link()
        asked = await ask_withdrawal(runtime, request_id, offer)
        if asked.refusal is None:
            return RedirectResponse(f"/cancel/{token}/requests/{request_id}", status_code=303)
        found = await request_row(token, request_id)
        assert found is not None  # a request is never deleted
        state, row = found
        context, _ = base(request, token, state)
        refused = wording.refusal(asked.refusal, status=RequestStatus(row["status"]), taking=offer,
                                  withdrawing_with=row["withdrawal_offer"], effective_date=row["effective_date"])
        return page("status.html", status_code=409, step=5, refused=refused, **context,
                    **status_context(row, context["today"]))

    @app.post("/cancel/{token}/requests/{request_id}/withdraw", include_in_schema=False)
    async def withdraw(request: Request, token: str, request_id: str) -> Response:
        return await ask(request, token, request_id, None)

    @app.post("/cancel/{token}/requests/{request_id}/offers/{offer}/take", include_in_schema=False)
    async def take_offer(request: Request, token: str, request_id: str, offer: str) -> Response:
        return await ask(request, token, request_id, offer)
