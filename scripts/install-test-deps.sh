#!/usr/bin/env bash
# Installs what the integration tests need on a fresh Debian 12 machine.
# Idempotent; run as root. Called by .ci/run before the tests.
#
# - openssh-server / openssh-client: the probe tests start their own sshd on a
#   loopback port (the system sshd is neither started nor reconfigured here).
# - two OS users for SFTP: one logs in with a password, one with keys only.
# - the PostgreSQL 15 server binaries (initdb, postgres) for the second,
#   password-protected test cluster; openssl for its self-signed certificate.
# - chromium and chromium-driver: tests/api/pages drives headless Chromium.
# - paramiko (PyPI) for the hostile SFTP stand-in, tests/api/probes/hostile_sftp.py,
#   installed for the `python3` on PATH, which is the one the tests start.
# - dovecot-core and dovecot-imapd: the IMAP probe tests start a private
#   dovecot on loopback ports with their own config; the system dovecot that
#   the package may start is stopped and disabled here.
# - aiosmtpd (PyPI, pinned) for the SMTP stand-in, tests/api/probes/smtp_server.py.
# - openapi-python-client (PyPI, pinned) generates the typed client that
#   tests/api/generated_client.rs drives.
# - mcp (PyPI, pinned: the MCP Python SDK) for tests/api/mcp_server.py: the
#   SDK's own authorization-server routes that the MCP connect tests run against.
# - moto[server] (PyPI, pinned) for tests/api/moto_server.py: SES GetSendQuota
#   behind moto's IAM authentication, a real SigV4 verifier.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps.sh must run as root" >&2
  exit 1
fi

need=()
command -v /usr/sbin/sshd >/dev/null 2>&1 || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v sftp >/dev/null 2>&1 || need+=(openssh-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client-15)
# The page journeys drive a real headless Chromium over WebDriver. It is
# installed below with its recommended packages (as checked on this kind of
# machine), not with the rest.
browser=()
[ -x /usr/bin/chromium ] || browser+=(chromium)
[ -x /usr/bin/chromedriver ] || browser+=(chromium-driver)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || browser+=(fonts-dejavu-core)
# The IMAP probe tests run their own dovecot (tests/api/probes/dovecot.rs).
[ -x /usr/sbin/dovecot ] || need+=(dovecot-core)
[ -x /usr/lib/dovecot/imap ] || need+=(dovecot-imapd)

if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  # Installing openssh-server may try to start the system sshd; that is
  # harmless, and the tests never use port 22.
  apt-get install -y --no-install-recommends "${need[@]}"
fi
if [ "${#browser[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  [ "${#need[@]}" -gt 0 ] || apt-get update
  apt-get install -y "${browser[@]}"
fi

# The package starts the system dovecot on ports 143/993 where it can; the
# tests never use it, so it is stopped and kept from starting at boot.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1 || true
else
  if [ -e /run/dovecot/master.pid ]; then
    /usr/sbin/dovecot stop >/dev/null 2>&1 || true
  fi
  update-rc.d dovecot disable >/dev/null 2>&1 || true
fi

if ! python3 -c 'import paramiko' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'paramiko>=3.4,<6'
fi

# sshd refuses to start without its privilege-separation directory.
mkdir -p /run/sshd
chmod 0755 /run/sshd

# Test users. The passwords are test-only values, also known to tests/api.
ensure_user() {
  local name="$1" password="$2"
  if ! id -u "$name" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/sh "$name"
  fi
  echo "$name:$password" | chpasswd
  # A fixed file in the home directory gives the listing tests a known entry.
  install -d -o "$name" -m 0755 "/home/$name"
  [ -e "/home/$name/hello.txt" ] || install -o "$name" -m 0644 /dev/null "/home/$name/hello.txt"
}

ensure_user credgate_sftp_pw 'SENTINEL-sftp-password-7d1f'
# The key user also gets a password, but the tests only use keys for it.
ensure_user credgate_sftp_key 'SENTINEL-sftp-keyuser-9c2e'

# schemathesis fuzzes the live API from its OpenAPI document (tests/api/openapi_conformance.rs).
if ! python3 -c "import schemathesis" >/dev/null 2>&1; then
  python3 -m pip install --quiet "schemathesis==4.32.5"
fi

# The SMTP stand-in (tests/api/probes/smtp_server.py) with AUTH and STARTTLS.
if ! python3 -c 'import aiosmtpd, sys; sys.exit(aiosmtpd.__version__ != "1.4.6")' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'aiosmtpd==1.4.6'
fi

# A client generated from /openapi.json (tests/api/generated_client.rs).
if ! openapi-python-client --version 2>/dev/null | grep -q '0\.29\.1'; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'openapi-python-client==0.29.1'
fi

# The MCP stand-in (tests/api/mcp_server.py): the MCP Python SDK's own
# authorization-server routes (mcp.server.auth.routes); brings starlette and uvicorn.
if ! python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("mcp") != "1.30.0")' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'mcp==1.30.0'
fi

# The AWS stand-in (tests/api/moto_server.py): moto's server with IAM
# authentication on; brings boto3, flask and werkzeug.
if ! python3 -c 'import importlib.metadata as m, sys; import moto.server; sys.exit(m.version("moto") != "5.2.6")' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'moto[server]==5.2.6'
fi

# The Standard Webhooks reference library verifies webhook endpoints'
# deliveries (tests/api/webhook_verify.py).
if ! python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("standardwebhooks") != "1.1.0")' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'standardwebhooks==1.1.0'
fi

echo "install-test-deps: ok"
