#!/usr/bin/env python3
"""A real SMTP submission server (aiosmtpd) for credgate's probe tests.

Usage: smtp_server.py starttls|tls|plain

Listens on a free loopback port, prints that port on the first line of
stdout, and accepts AUTH PLAIN and LOGIN for one user, whose name and
password come from the environment (SMTP_TEST_USER, SMTP_TEST_PASSWORD).

- starttls: offers STARTTLS (a self-signed certificate made with openssl)
  and AUTH only once TLS is up (auth_require_tls).
- tls: TLS from the first byte (SMTPS), the same certificate.
- plain: no TLS at all; AUTH is offered in clear text.

It exits when its stdin closes, so it never outlives the test process that
started it. Needs aiosmtpd (scripts/install-test-deps.sh installs it) and
openssl.
"""

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import logging
import threading

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

# aiosmtpd logs a warning about its own deprecated Session.login_data
# after every AUTH; only errors are worth a line in the test output.
logging.getLogger("mail.log").setLevel(logging.ERROR)

MODE = sys.argv[1] if len(sys.argv) > 1 else "starttls"
USER = os.environ["SMTP_TEST_USER"].encode()
PASSWORD = os.environ["SMTP_TEST_PASSWORD"].encode()


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER and auth_data.password == PASSWORD
    return AuthResult(success=ok, handled=False)


class Handler:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


def tls_context(directory):
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def exit_when_stdin_closes():
    while sys.stdin.buffer.read(1024):
        pass
    os._exit(0)


async def serve(context):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))

    def session():
        return SMTP(
            Handler(),
            hostname="smtp.credgate.test",
            ident="credgate test SMTP",
            tls_context=context if MODE == "starttls" else None,
            authenticator=authenticator,
            auth_require_tls=MODE == "starttls",
        )

    server = await asyncio.get_running_loop().create_server(
        session, sock=listener, ssl=context if MODE == "tls" else None
    )
    print(listener.getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main():
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    context = None
    if MODE in ("starttls", "tls"):
        # The context holds the key once loaded: the files can go at once.
        with tempfile.TemporaryDirectory(prefix="credgate-smtp-") as directory:
            context = tls_context(directory)
    asyncio.run(serve(context))


if __name__ == "__main__":
    main()
