"""schemathesis hooks for privatelink's API: a check that a request the API rejects (any
4xx) changes nothing. Requests run one at a time (--workers 1), so the state before a
request is the state seen after the previous one; the state is every list the operator
(admin token) can read."""
import json
import os
import urllib.request

import schemathesis

BASE = os.environ["PL_API"]
ADMIN = os.environ["PL_ADMIN_TOKEN"]
LISTS = ["/v1/accounts", "/v1/vpcs", "/v1/services", "/v1/endpoints",
         "/v1/security-groups", "/v1/acls"]
_last = {"state": None}


def snapshot():
    out = {}
    for path in LISTS:
        req = urllib.request.Request(BASE + path, headers={"Authorization": "Bearer " + ADMIN})
        with urllib.request.urlopen(req, timeout=10) as r:
            out[path] = json.loads(r.read())
    return out


@schemathesis.check
def rejected_requests_change_nothing(ctx, response, case):
    now = snapshot()
    before = _last["state"]
    _last["state"] = now
    if before is not None and 400 <= response.status_code < 500 and now != before:
        changed = [p for p in LISTS if now[p] != before[p]]
        raise AssertionError(
            f"{case.method} {case.path} answered {response.status_code} but changed {changed}")
