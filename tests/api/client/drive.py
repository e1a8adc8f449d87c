"""Drives credgate through a client that openapi-python-client generated
from its /openapi.json (the package `client`, on PYTHONPATH): create, list,
resolve, test and usage, each answer checked as the generated type.

Usage: drive.py BASE_URL ADMIN_KEY ENGINE_KEY SECRET USER_ID (the admin key's user)
"""

import sys

from client import AuthenticatedClient
from client.api.credentials import (
    create_credential,
    get_usage,
    list_credentials,
    resolve_credential,
    test_credential,
)
from client.models import (
    CreateCredentialPostgreSQLUserPassword,
    CreateCredentialPostgreSQLUserPasswordFields,
    Credential,
    CredentialPage,
    ProbeFailure,
    ProbeResult,
    ResolveBody,
    ResolveCredentialResponse200,
    UsageView,
)


def expect(value, kind, what):
    if not isinstance(value, kind):
        sys.exit(f"{what}: expected {kind.__name__}, got {type(value).__name__}: {value!r}")
    return value


def main() -> None:
    base, admin_key, engine_key, secret, user_id = sys.argv[1:6]
    admin = AuthenticatedClient(base_url=base, token=admin_key)
    engine = AuthenticatedClient(base_url=base, token=engine_key)

    body = CreateCredentialPostgreSQLUserPassword(
        name="warehouse",
        provider="postgresql",
        auth_type="user_password",
        fields=CreateCredentialPostgreSQLUserPasswordFields(
            host="db.example.com", database="sales", username="etl", password=secret
        ),
    )
    created = expect(create_credential.sync(client=admin, body=body), Credential, "create")
    page = expect(list_credentials.sync(client=admin), CredentialPage, "list")
    if page.total != 1 or page.items[0].id != created.id:
        sys.exit(f"list: {page!r}")
    resolved = expect(
        resolve_credential.sync(created.id, client=engine, body=ResolveBody(user_id=user_id, workflow_id="wf-1")),
        ResolveCredentialResponse200,
        "resolve",
    )
    if resolved.fields["password"] != secret or str(resolved.id) != str(created.id):
        sys.exit("resolve: the stored values did not come back")
    probe = expect(test_credential.sync(created.id, client=admin), ProbeResult, "test")
    failure = expect(probe.error, ProbeFailure, "test's error")
    if probe.ok or not isinstance(probe.latency_ms, int) or not failure.code:
        sys.exit(f"test: {probe!r}")
    usage = expect(get_usage.sync(created.id, client=admin), UsageView, "usage")
    if usage.uses_total != 1 or usage.workflows[0].workflow_id != "wf-1":
        sys.exit(f"usage: {usage!r}")
    print(f"typed end to end: {created.id} {failure.code}")


if __name__ == "__main__":
    main()
