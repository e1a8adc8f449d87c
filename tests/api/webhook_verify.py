"""Verifies webhook deliveries with the Standard Webhooks reference library
(PyPI `standardwebhooks`, pinned in scripts/install-test-deps.sh).

Reads a JSON list on stdin, each item {"secret", "headers", "body", "now"}
("now": the unix time the receiver's clock reads, so that deliveries signed
on credgate's test clock are checked against that clock); prints a JSON
list with "ok" or the library's error for each.
"""

import json
import sys
from datetime import datetime, timezone

import standardwebhooks.webhooks as webhooks

checks = json.load(sys.stdin)
results = []
real = webhooks.datetime
for check in checks:
    now = datetime.fromtimestamp(check["now"], tz=timezone.utc)

    class Clock(real):
        @classmethod
        def now(cls, tz=None):
            return now

    webhooks.datetime = Clock
    try:
        webhooks.Webhook(check["secret"]).verify(check["body"], check["headers"])
        results.append("ok")
    except Exception as e:  # the library's error, reported
        results.append(f"{type(e).__name__}: {e}")
    finally:
        webhooks.datetime = real
json.dump(results, sys.stdout)
