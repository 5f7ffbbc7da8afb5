"""schemathesis hooks for privatelink's API.

A check that a request the API rejects (any 4xx) changes nothing. Requests run one at a
time (--workers 1), so the state before a request is the state seen after the previous one
(for the first request: the state when this module was loaded); the state is every list
the operator (admin token) can read. The test seeds the daemon before schemathesis starts,
so that state is not empty.

A generation hook that makes requests hit the objects that exist: path parameters naming
an object (a service, endpoint, account, vSwitch, security group, rule, ACL) are, three
times in four, replaced by the id of one that exists when the case is generated.

If PL_HOOK_STATS names a file, the check keeps in it (JSON, rewritten after every
response) how many responses it saw, how many of them were rejections compared with the
state before, and how many of those comparisons had objects in the state.
"""
import http.client
import json
import os
import time
import urllib.parse

import schemathesis
from hypothesis import strategies as st

BASE = os.environ["PL_API"]
ADMIN = os.environ["PL_ADMIN_TOKEN"]
_URL = urllib.parse.urlsplit(BASE)
STATS = os.environ.get("PL_HOOK_STATS")
LISTS = ["/v1/accounts", "/v1/vpcs", "/v1/services", "/v1/endpoints",
         "/v1/security-groups", "/v1/acls"]
ACTIONS = ["accept", "reject", "disable", "enable"]


_conn = {"c": None}


def get(path):
    """GET as the operator over one kept-alive connection (a new one if that fails)."""
    for attempt in range(2):
        if _conn["c"] is None:
            _conn["c"] = http.client.HTTPConnection(_URL.hostname, _URL.port, timeout=10)
        try:
            _conn["c"].request("GET", path, headers={"Authorization": "Bearer " + ADMIN})
            r = _conn["c"].getresponse()
            body = r.read()
            if r.status != 200:
                raise AssertionError(f"GET {path} as the operator: {r.status} {body[:200]!r}")
            return json.loads(body)
        except (http.client.HTTPException, OSError):
            _conn["c"].close()
            _conn["c"] = None
            if attempt:
                raise


def snapshot():
    t = time.monotonic()
    out = {path: get(path) for path in LISTS}
    _stats["snapshot_seconds"] = round(_stats["snapshot_seconds"] + time.monotonic() - t, 3)
    return out


_stats = {"responses": 0, "rejected": 0, "compared": 0, "compared_non_empty": 0,
          "snapshot_seconds": 0.0}
_last = {"state": snapshot()}


def ids(state, path, param):
    """The ids of existing objects that the path parameter `param` of `path` may name."""
    def of(lst):
        return [o["id"] for o in state[lst]]
    if param == "id":
        for prefix, lst in [("/v1/services/", "/v1/services"),
                            ("/v1/available-services/", "/v1/services"),
                            ("/v1/endpoints/", "/v1/endpoints"),
                            ("/v1/security-groups/", "/v1/security-groups"),
                            ("/v1/acls/", "/v1/acls")]:
            if path.startswith(prefix):
                return of(lst)
        return []
    if param == "account":
        return of("/v1/accounts")
    if param == "endpoint":
        return of("/v1/endpoints")
    if param == "vswitch":
        return [s["id"] for v in state["/v1/vpcs"] for s in v.get("vswitches", [])]
    if param == "rule":
        return [r["id"] for g in state["/v1/security-groups"] for r in g.get("rules", [])
                if "id" in r]
    if param == "action":
        return ACTIONS
    return []


@schemathesis.hook
def flatmap_path_parameters(ctx, path_parameters):
    if not isinstance(path_parameters, dict) or ctx.operation is None:
        return st.just(path_parameters)
    state = _last["state"]
    parts = {}
    for name, value in path_parameters.items():
        existing = ids(state, ctx.operation.path, name)
        if existing:
            parts[name] = st.integers(0, 3).flatmap(
                lambda k, v=value, e=existing: st.just(v) if k == 0 else st.sampled_from(e))
        else:
            parts[name] = st.just(value)
    return st.fixed_dictionaries(parts)


def _save():
    if STATS:
        with open(STATS + ".tmp", "w") as f:
            json.dump(_stats, f)
        os.replace(STATS + ".tmp", STATS)


@schemathesis.check
def rejected_requests_change_nothing(ctx, response, case):
    now = snapshot()
    before = _last["state"]
    _last["state"] = now
    _stats["responses"] += 1
    if 400 <= response.status_code < 500:
        _stats["rejected"] += 1
        _stats["compared"] += 1
        if any(before[p] for p in LISTS):
            _stats["compared_non_empty"] += 1
        _save()
        if now != before:
            changed = {p: {"before": before[p], "after": now[p]}
                       for p in LISTS if now[p] != before[p]}
            raise AssertionError(
                f"{case.method} {case.formatted_path} answered {response.status_code} but "
                f"changed {list(changed)}: {json.dumps(changed)[:1500]}")
    else:
        _save()
