#!/usr/bin/env python3
"""An MCP stand-in whose authorization server is the MCP Python SDK's own.

Usage: mcp_server.py

Listens on a free loopback port and prints one line, `READY http://127.0.0.1:PORT`,
once it accepts connections. With BASE that URL:

- BASE is the authorization server's issuer. The SDK's own routes
  (mcp.server.auth.routes.create_auth_routes) serve its metadata at
  BASE/.well-known/oauth-authorization-server and BASE/authorize, /token,
  /register (dynamic client registration) and /revoke. The SDK checks PKCE,
  the redirect URI, the client's secret and scopes; the provider below only
  stores things.
- BASE/mcp is the protected resource; its RFC 9728 metadata, from the SDK's
  create_protected_resource_routes, is at
  BASE/.well-known/oauth-protected-resource/mcp. GET or POST BASE/mcp with a
  live access token this server issued answers 200
  {"ok": true, "client_id", "scopes", "resource"}; without one, 401 with a
  WWW-Authenticate: Bearer header naming the resource metadata.
- GET BASE/_test/state: what happened, as JSON: registrations, authorize
  requests, token requests (with the `resource` form parameter, read before
  the SDK sees the request), tokens the client asked to revoke, and every code
  and token handed out.
- POST BASE/_test/expire_access_tokens: every access token expires now.

/authorize approves at once (no login page). A code works once, for 300 s;
access tokens last 3600 s; a refresh rotates the refresh token. Revoking a
refresh token also revokes the access token issued with it.

It exits when its stdin closes, so it never outlives the test process that
started it. Needs the `mcp` package (scripts/install-test-deps.sh installs it),
which brings starlette and uvicorn.
"""

import asyncio
import base64
import os
import secrets
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, unquote

import uvicorn
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    RefreshToken,
    construct_redirect_uri,
)
from mcp.server.auth.routes import create_auth_routes, create_protected_resource_routes
from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

SCOPES = ["mcp:tools", "mcp:read"]
DEFAULT_SCOPES = ["mcp:tools"]
CODE_SECONDS = 300
ACCESS_SECONDS = 3600


class Provider:
    """An in-memory OAuthAuthorizationServerProvider (mcp.server.auth.provider)."""

    def __init__(self):
        self.clients: dict[str, OAuthClientInformationFull] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        # refresh token -> the access token issued with it
        self.pair: dict[str, str] = {}
        self.revoked_tokens: set[str] = set()
        self.state = {
            "registrations": [],
            "authorize_requests": [],
            "token_requests": [],
            "revoked": [],
            "issued": [],
        }

    def _new(self, prefix: str) -> str:
        value = prefix + secrets.token_urlsafe(32)
        self.state["issued"].append(value)
        return value

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        self.clients[client_info.client_id] = client_info
        self.state["registrations"].append(
            {
                "client_id": client_info.client_id,
                "client_name": client_info.client_name,
                "redirect_uris": [str(u) for u in client_info.redirect_uris or []],
                "token_endpoint_auth_method": client_info.token_endpoint_auth_method,
                "grant_types": list(client_info.grant_types),
            }
        )

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        scopes = params.scopes or list(DEFAULT_SCOPES)
        resource = getattr(params, "resource", None)
        self.state["authorize_requests"].append(
            {
                "client_id": client.client_id,
                "scopes": scopes,
                "resource": resource,
                "redirect_uri": str(params.redirect_uri),
            }
        )
        code = AuthorizationCode(
            code=self._new("code-"),
            scopes=scopes,
            expires_at=time.time() + CODE_SECONDS,
            client_id=client.client_id,
            code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=resource,
        )
        self.codes[code.code] = code
        return construct_redirect_uri(str(params.redirect_uri), code=code.code, state=params.state)

    async def load_authorization_code(self, client: OAuthClientInformationFull, authorization_code: str):
        code = self.codes.get(authorization_code)
        if code is None or code.client_id != client.client_id:
            return None
        return code

    def _issue(self, client_id: str, scopes: list[str], resource: str | None) -> OAuthToken:
        access = AccessToken(
            token=self._new("at-"),
            client_id=client_id,
            scopes=scopes,
            expires_at=int(time.time()) + ACCESS_SECONDS,
            resource=resource,
        )
        refresh = RefreshToken(token=self._new("rt-"), client_id=client_id, scopes=scopes, resource=resource)
        self.access[access.token] = access
        self.refresh[refresh.token] = refresh
        self.pair[refresh.token] = access.token
        return OAuthToken(
            access_token=access.token,
            token_type="Bearer",
            expires_in=ACCESS_SECONDS,
            scope=" ".join(scopes),
            refresh_token=refresh.token,
        )

    async def exchange_authorization_code(self, client: OAuthClientInformationFull, authorization_code) -> OAuthToken:
        # A code works once: the SDK finds no code the second time.
        self.codes.pop(authorization_code.code, None)
        return self._issue(client.client_id, authorization_code.scopes, authorization_code.resource)

    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str):
        token = self.refresh.get(refresh_token)
        if token is None or token.client_id != client.client_id or token.token in self.revoked_tokens:
            return None
        return token

    async def exchange_refresh_token(self, client: OAuthClientInformationFull, refresh_token, scopes) -> OAuthToken:
        # Rotation: the old refresh token stops working.
        self.refresh.pop(refresh_token.token, None)
        self.pair.pop(refresh_token.token, None)
        return self._issue(client.client_id, list(scopes or refresh_token.scopes), refresh_token.resource)

    async def load_access_token(self, token: str) -> AccessToken | None:
        access = self.access.get(token)
        if access is None or token in self.revoked_tokens:
            return None
        if access.expires_at is not None and access.expires_at <= time.time():
            return None
        return access

    async def revoke_token(self, token) -> None:
        self.state["revoked"].append(token.token)
        self.revoked_tokens.add(token.token)
        if isinstance(token, RefreshToken):
            self.refresh.pop(token.token, None)
            paired = self.pair.pop(token.token, None)
            if paired is not None:
                self.revoked_tokens.add(paired)

    def expire_access_tokens(self) -> None:
        past = int(time.time()) - 1
        for token in self.access.values():
            token.expires_at = past


class RecordTokenRequests:
    """Records each POST /token's grant_type, client_id and resource form fields,
    then hands the SDK the very same body."""

    def __init__(self, app, provider: Provider):
        self.app = app
        self.provider = provider

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/token":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away; nothing to answer.
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        client_id = form.get("client_id", [None])[0]
        if client_id is None:
            client_id = basic_client_id(scope)
        self.provider.state["token_requests"].append(
            {
                "grant_type": form.get("grant_type", [None])[0],
                "client_id": client_id,
                "resource": form.get("resource", [None])[0],
            }
        )
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def basic_client_id(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization" and value[:6].lower() == b"basic ":
            try:
                decoded = base64.b64decode(value[6:]).decode("utf-8")
            except ValueError:
                return None
            return unquote(decoded.split(":", 1)[0])
    return None


def build_app(base: str, provider: Provider) -> Starlette:
    resource = f"{base}/mcp"
    resource_metadata = f"{base}/.well-known/oauth-protected-resource/mcp"
    challenge = (
        f'Bearer error="invalid_token", resource_metadata="{resource_metadata}", '
        f'scope="{" ".join(DEFAULT_SCOPES)}"'
    )

    async def mcp_endpoint(request: Request):
        header = request.headers.get("authorization", "")
        token = None
        if header[:7].lower() == "bearer ":
            token = await provider.load_access_token(header[7:].strip())
        if token is None:
            return JSONResponse(
                {"error": "invalid_token", "error_description": "a live access token is required"},
                status_code=401,
                headers={"WWW-Authenticate": challenge},
            )
        return JSONResponse(
            {"ok": True, "client_id": token.client_id, "scopes": token.scopes, "resource": token.resource}
        )

    async def test_state(request: Request):
        return JSONResponse(provider.state)

    async def expire(request: Request):
        provider.expire_access_tokens()
        return JSONResponse({"ok": True})

    routes = create_auth_routes(
        provider,
        issuer_url=AnyHttpUrl(base),
        client_registration_options=ClientRegistrationOptions(
            enabled=True, valid_scopes=list(SCOPES), default_scopes=list(DEFAULT_SCOPES)
        ),
        revocation_options=RevocationOptions(enabled=True),
    )
    routes += create_protected_resource_routes(
        resource_url=AnyHttpUrl(resource),
        authorization_servers=[AnyHttpUrl(base)],
        scopes_supported=list(DEFAULT_SCOPES),
    )
    routes += [
        Route("/mcp", mcp_endpoint, methods=["GET", "POST"]),
        Route("/_test/state", test_state, methods=["GET"]),
        Route("/_test/expire_access_tokens", expire, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(RecordTokenRequests, provider=provider)])


def exit_when_stdin_closes():
    while sys.stdin.buffer.read(1024):
        pass
    os._exit(0)


async def serve():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    app = build_app(base, Provider())
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        if serving.done():
            await serving
            raise SystemExit("uvicorn stopped before it started")
        await asyncio.sleep(0.02)
    print(f"READY {base}", flush=True)
    await serving


def main():
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
