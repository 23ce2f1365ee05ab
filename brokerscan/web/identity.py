"""The scanner's public face (``brokerscan serve --identity-page``): a page, served without
a token, that says who runs the scans, why, from which addresses, what a probe does and
does not do, and how to opt out; and the opt-out form, whose requests are stored as
*pending* for an operator to review (:mod:`storage.optouts`, ``brokerscan optout``).

Everything else of the server stays behind tokens: only ``GET /scanner`` and ``POST
/scanner/opt-out`` are public. The form is hostile input: the body is at most
:data:`MAX_FORM` bytes of ``application/x-www-form-urlencoded`` (else 413 / 415), the
networks are IPv4 CIDRs (a 400 with one line otherwise), each client address may send
:data:`OPTOUT_BURST` requests and then one every ``1 / OPTOUT_RATE`` seconds (429 with
``Retry-After``; the API's own :class:`~brokerscan.api.ratelimit.RateLimiter`), and a
POST that a browser says comes from another site is refused by the guard before it gets
here (:mod:`brokerscan.api.guard`: ``Sec-Fetch-Site`` / ``Origin``), which is the CSRF
lock: the form has no session to steal. No CORS headers, no asset from another origin
(the page carries its few styles inline; the CSP allows nothing else). A client that asks
for ``application/json`` gets JSON (``{"id", "state"}`` or ``{"error"}``) instead of HTML.

What the page says a probe does is derived from the product (the default ports of a
sweep, the client-id prefix setting, the MQTT levels, the opt-in ``$SYS`` read), so the
page cannot drift from what the workers send.
"""

from __future__ import annotations

import json
from html import escape
from typing import Final
from urllib.parse import parse_qs

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from brokerscan.api.context import ApiContext
from brokerscan.api.ratelimit import RateLimiter
from brokerscan.settings import Settings
from brokerscan.web.app import CSP
from scheduler.ports import parse_ports
from scheduler.sweeps import SweepSpec
from storage.optouts import MAX_CONTACT, MAX_NETWORKS, MAX_REASON, OptOutError, submit_optout

__all__ = ["FORM_PATH", "MAX_FORM", "OPTOUT_BURST", "OPTOUT_RATE", "PAGE_PATH",
           "identity_routes", "optout_limiter", "probe_facts"]

PAGE_PATH: Final = "/scanner"
FORM_PATH: Final = "/scanner/opt-out"
#: The largest form body accepted (three short fields).
MAX_FORM: Final = 8 * 1024
#: Opt-out requests per client address: a burst, then one per ``1 / OPTOUT_RATE`` s.
OPTOUT_BURST: Final = 5.0
OPTOUT_RATE: Final = 1 / 600
_NOT_SET: Final = '<span class="unset">not configured</span>'
_STYLE: Final = """body{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;
padding:0 1rem;color:#1b1f24}h1{font-size:1.6rem}h2{font-size:1.15rem;margin-top:1.8rem}
.unset{color:#a11;font-style:italic}code{background:#f2f3f5;padding:0 .2rem}
label{display:block;margin-top:.8rem;font-weight:600}textarea,input{width:100%;
box-sizing:border-box;font:inherit;padding:.3rem}button{margin-top:1rem;padding:.4rem 1rem;
font:inherit}.error{color:#a11;font-weight:600}.done{color:#175c2b;font-weight:600}"""


def optout_limiter() -> RateLimiter:
    """The opt-out form's limiter: per client address, separate from the tokens' one."""
    return RateLimiter(rate=OPTOUT_RATE, burst=OPTOUT_BURST)


def probe_facts(settings: Settings) -> tuple[list[str], list[str]]:
    """What a probe does, and what it does not, from the product's own defaults."""
    spec = SweepSpec(targets=[], client_id_prefix=settings.client_id_prefix)
    ports = parse_ports(spec.ports, None)
    plain = ", ".join(str(p.port) for p in ports if not p.tls)
    tls = ", ".join(str(p.port) for p in ports if p.tls)
    levels = ", ".join({5: "5.0", 4: "3.1.1", 3: "3.1"}[level] for level in spec.mqtt_levels)
    does = [
        f"Opens a TCP connection to the usual broker ports (by default {plain}; with TLS "
        f"{tls}); a port that does not answer is left alone.",
        "On a TLS port, completes a TLS handshake and records the certificate the server "
        "shows (no client certificate is sent; nothing is verified or trusted).",
        f"MQTT: sends one CONNECT per protocol level ({levels}, until one is accepted), "
        "anonymous and with a clean session, with a random client id beginning "
        f"<code>{escape(spec.client_id_prefix)}</code> (it can never take over a real "
        "client's session); records the CONNACK and anything the broker sends unasked "
        "within a moment, then sends DISCONNECT.",
        "AMQP: sends the AMQP 0-9-1 protocol header, records the server's Connection.Start "
        "(product, version, login mechanisms) and closes without logging in; a server that "
        "answers AMQP 1.0 gets the SASL header on a second connection, to list its login "
        "mechanisms (none is tried).",
        "MQTT over WebSocket (where a sweep asks for it): an HTTP upgrade request on a few "
        f"paths ({', '.join(spec.ws_paths)}), then the same anonymous CONNECT.",
    ]
    does_not = [
        "No credentials: no user name, no password, no guessing, no client certificate.",
        "No subscriptions: never <code>#</code> or any topic, no message published. The one "
        "exception is opt-in per sweep and recorded with it: reading "
        "<code>$SYS/broker/version</code> once after an accepted CONNECT, then unsubscribing.",
        "No AMQP login, no queue or exchange declared, no message sent or read.",
        "No exploit, no load: one short connection per port and protocol level, at a rate "
        "budget shared by the whole fleet, addresses in random order.",
    ]
    return does, does_not


def _line(value: str | None) -> str:
    return _NOT_SET if not value else escape(value)


def _contact(value: str | None) -> str:
    if not value:
        return _NOT_SET
    shown = escape(value)
    if "@" in value and " " not in value and "/" not in value:
        return f'<a href="mailto:{shown}">{shown}</a>'
    if value.startswith(("https://", "http://")):
        return f'<a href="{shown}" rel="nofollow noreferrer">{shown}</a>'
    return shown


def render_page(settings: Settings, *, error: str | None = None, done: str | None = None,
                values: dict[str, str] | None = None) -> str:
    """The page: identity, probe facts, the form (with an error, or a confirmation)."""
    does, does_not = probe_facts(settings)
    values = values or {}
    sources = ("".join(f"<li><code>{escape(s)}</code></li>" for s in settings.identity_sources)
               if settings.identity_sources else f"<li>{_NOT_SET}</li>")
    notice = ""
    if error is not None:
        notice = f'<p class="error" role="alert" id="error">{escape(error)}</p>'
    if done is not None:
        notice = f'<p class="done" role="status" id="done">{escape(done)}</p>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>About this scanner</title><style>{_STYLE}</style></head>
<body data-ready><main>
<h1>About this scanner</h1>
<p>The connections you may have seen come from <strong>brokerscan</strong>, a survey of
MQTT and AMQP message brokers reachable from the Internet.</p>
<h2>Who runs it</h2>
<p id="operator">{_line(settings.identity_operator)}</p>
<p>Contact: <span id="contact">{_contact(settings.identity_contact)}</span></p>
<h2>Why</h2>
<p id="purpose">{_line(settings.identity_purpose)}</p>
<h2>From which addresses</h2>
<ul id="sources">{sources}</ul>
<h2>What a probe does</h2>
<ul id="does">{"".join(f"<li>{item}</li>" for item in does)}</ul>
<h2>What a probe does not do</h2>
<ul id="does-not">{"".join(f"<li>{item}</li>" for item in does_not)}</ul>
<h2>How to opt out</h2>
<p>Name the networks (IPv4, CIDR notation: <code>192.0.2.0/24</code>; at most
{MAX_NETWORKS}) you want left alone and how to reach you. The operator reviews each
request; once approved, the networks are skipped by every sweep, including sweeps already
under way (from their next batch of work on).</p>
{notice}
<form method="post" action="{FORM_PATH}">
<label for="networks">Networks (CIDRs, one per line or comma separated)</label>
<textarea id="networks" name="networks" rows="4" required
 maxlength="{MAX_FORM // 2}">{escape(values.get("networks", ""))}</textarea>
<label for="contact-field">Your contact (email address or URL)</label>
<input id="contact-field" name="contact" required maxlength="{MAX_CONTACT}"
 value="{escape(values.get("contact", ""))}">
<label for="reason">Reason (optional)</label>
<textarea id="reason" name="reason" rows="3"
 maxlength="{MAX_REASON}">{escape(values.get("reason", ""))}</textarea>
<button type="submit">Send opt-out request</button>
</form>
</main></body></html>
"""


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _answer(request: Request, settings: Settings, status: int, *, error: str | None = None,
            done: str | None = None, values: dict[str, str] | None = None,
            data: dict[str, str] | None = None,
            headers: dict[str, str] | None = None) -> Response:
    headers = {"Cache-Control": "no-store", **(headers or {})}
    if _wants_json(request):
        body = data if error is None else {"error": error}
        return Response(json.dumps(body), status_code=status, headers=headers,
                        media_type="application/json")
    headers["Content-Security-Policy"] = CSP
    return Response(render_page(settings, error=error, done=done, values=values),
                    status_code=status, headers=headers, media_type="text/html; charset=utf-8")


def identity_routes(ctx: ApiContext, limiter: RateLimiter) -> list[Route]:
    """``GET /scanner`` and ``POST /scanner/opt-out``, public."""
    settings = ctx.settings

    async def page(request: Request) -> Response:
        return _answer(request, settings, 200)

    async def submit(request: Request) -> Response:
        client = request.client.host if request.client else "?"
        wait = limiter.take(f"optout:{client}")
        if wait is not None:
            seconds = max(1, round(wait))
            return _answer(request, settings, 429, headers={"Retry-After": str(seconds)},
                           error=f"too many requests from your address: try again in "
                                 f"{seconds} s")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            return _answer(request, settings, 415,
                           error="send the form (application/x-www-form-urlencoded)")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_FORM:
            return _answer(request, settings, 413, error=f"the form is over {MAX_FORM} bytes")
        body = b""
        async for piece in request.stream():
            body += piece
            if len(body) > MAX_FORM:
                return _answer(request, settings, 413,
                               error=f"the form is over {MAX_FORM} bytes")
        try:
            fields = parse_qs(body.decode("utf-8"), max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            return _answer(request, settings, 400, error="the form could not be read")
        values = {k: fields.get(k, [""])[0] for k in ("networks", "contact", "reason")}
        try:
            optout = await submit_optout(ctx.searcher(), values["networks"],
                                         values["contact"], values["reason"], client=client)
        except OptOutError as exc:
            return _answer(request, settings, 400, error=str(exc), values=values)
        except asyncpg.InsufficientPrivilegeError:  # served with a role that may only read
            return _answer(request, settings, 503, values=values,
                           error="this server cannot record requests just now: write to "
                                 "the contact above")
        return _answer(request, settings, 201,
                       done=f"Received: request {optout.id} for "
                            f"{', '.join(optout.networks)}. The operator will review it.",
                       data={"id": optout.id, "state": optout.state})

    return [Route(PAGE_PATH, page, methods=["GET", "HEAD"], include_in_schema=False),
            Route(FORM_PATH, submit, methods=["POST"], include_in_schema=False)]
