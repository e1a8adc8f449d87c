#!/usr/bin/env python3
"""A real AWS SigV4 verifier for credgate's AWS tests: moto's server with IAM
authentication on.

Usage: moto_server.py

Starts moto's server (moto.server.ThreadedMotoServer) in this process on a
free loopback port and, unauthenticated, creates one IAM user `credgate` with
an inline policy allowing ses:* on * and one access key for it. From then on
moto authenticates every request: it must carry a valid SigV4 signature made
with an access key that exists in moto's IAM, and IAM policy must allow the
action. Wrong secret: 403 SignatureDoesNotMatch; unknown key id: 403
InvalidClientTokenId.

Then it prints one line on stdout:

    READY {"endpoint": "http://127.0.0.1:PORT", "access_key_id": "...",
           "secret_access_key": "...", "region": "us-east-1"}

(one line: JSON after `READY `). moto picks the service from the credential
scope of the Authorization header, so SES v1 is reached as a POST to
ENDPOINT/ with the form body Action=GetSendQuota&Version=2010-12-01 signed
for service `ses`, region us-east-1.

It exits when its stdin closes, so it never outlives the test process that
started it. Needs moto[server] (scripts/install-test-deps.sh installs it),
which brings boto3.
"""

import json
import logging
import os
import sys
import threading

# moto reads this once, when moto.settings is imported: the first N actions
# run without authentication, every later one is checked. N is the number of
# setup actions below (create_user, put_user_policy, create_access_key).
SETUP_ACTIONS = 3
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(SETUP_ACTIONS)
# Nothing from the environment may stand in for the credentials given below.
for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(name, None)

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

REGION = "us-east-1"
USER = "credgate"
POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "ses:*", "Resource": "*"}],
}

# werkzeug logs each request; only errors are worth a line in the test output.
logging.getLogger("werkzeug").setLevel(logging.ERROR)


def exit_when_stdin_closes():
    while sys.stdin.buffer.read(1024):
        pass
    os._exit(0)


def main():
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    # Port 0: the kernel picks a free port when the server binds.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
        # No retries: each attempt would count as one more unauthenticated action.
        config=Config(retries={"total_max_attempts": 1}),
    )
    iam.create_user(UserName=USER)
    iam.put_user_policy(UserName=USER, PolicyName="ses-all", PolicyDocument=json.dumps(POLICY))
    key = iam.create_access_key(UserName=USER)["AccessKey"]

    ready = {
        "endpoint": endpoint,
        "access_key_id": key["AccessKeyId"],
        "secret_access_key": key["SecretAccessKey"],
        "region": REGION,
    }
    print("READY " + json.dumps(ready), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
