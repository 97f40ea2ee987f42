"""tests/python/check_contract.py: real requests and responses of every
route held against the contract with a real validator (jsonschema, Debian's
python3-jsonschema).

Started by tests/server/test_python.c against a fresh daemon holding the
models "m" (D=2) and "c" (D=2, one context column).  The document is the
daemon's own GET /openapi.json (the build's schema/openapi.yaml).  For each
scenario below the script sends the request, then:
  - the response's status must be documented for that operation, with the
    response's Content-Type;
  - a JSON response body must validate against the documented schema
    (OpenAPI 3.0 turned into JSON Schema: `nullable` becomes a null type);
  - a JSON request body sent to a success must validate against the
    operation's requestBody schema, and every job body against
    schema/job.schema.json too (draft 2020-12), so a field the server takes
    but the contract refuses fails here;
  - a job body the server refuses (422) must be refused by job.schema.json
    as well (the schema is no looser than the parser on these cases).
Finally every operation of the document must have been exercised with a
success and, where it can fail on input, an error.  Prints each problem and
exits 1 if there is any.
"""

import copy
import json
import os
import re
import sys
import time

import jsonschema
import requests

URL = os.environ.get("FLOWD_URL", "http://127.0.0.1:8080")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
problems = []
covered = {}  # (method, template) -> set of status classes


def problem(msg):
    problems.append(msg)
    print("PROBLEM:", msg)


# ---- the document, as JSON Schema -------------------------------------------------------------
def to_json_schema(node):
    """OpenAPI 3.0 schema objects -> JSON Schema (draft 4 keywords, which
    keep 3.0's boolean exclusiveMinimum): `nullable: true` admits null."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items()}
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else out["type"] + ["null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = out["enum"] + [None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


spec_raw = requests.get(URL + "/openapi.json", timeout=30).json()
spec = to_json_schema(spec_raw)
resolver = jsonschema.RefResolver(base_uri="", referrer=spec)
with open(os.path.join(ROOT, "schema", "job.schema.json")) as f:
    job_schema = json.load(f)
job_validator = jsonschema.Draft202012Validator(job_schema)


def deref(node):
    while isinstance(node, dict) and "$ref" in node:
        node = resolver.resolve(node["$ref"])[1]
    return node


def validate(schema, value, what):
    try:
        jsonschema.Draft4Validator(schema, resolver=resolver).validate(value)
    except jsonschema.ValidationError as e:
        problem("%s: %s at %s" % (what, e.message[:300], "/".join(str(p) for p in e.absolute_path)))


def template_of(method, path):
    """The document's path template for a concrete path."""
    path = path.split("?")[0]
    for tpl, item in spec["paths"].items():
        if method.lower() not in item:
            continue
        rx = "^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(tpl)) + "$"
        if re.match(rx, path):
            return tpl
    return None


# ---- one exchange ------------------------------------------------------------------------------
def call(method, path, body=None, raw=None, ctype=None, accept=None, expect=None, job=False, token=None,
         stream=False, headers=None):
    headers = dict(headers or {})
    if ctype:
        headers["Content-Type"] = ctype
    if accept:
        headers["Accept"] = accept
    if token:
        headers["Authorization"] = "Bearer " + token
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    r = requests.request(method, URL + path, data=data, headers=headers, timeout=60, stream=stream)
    tpl = template_of(method, path)
    what = "%s %s -> %d" % (method, path, r.status_code)
    if expect is not None and r.status_code != expect:
        problem("%s: expected %d: %s" % (what, expect, r.text[:300]))
    op_method = method
    if tpl is None and r.status_code == 405:  # a method the path has no operation for
        for m in ("GET", "POST", "DELETE"):
            tpl = template_of(m, path)
            if tpl:
                op_method = m
                break
    if tpl is None:
        problem("%s: no operation in openapi.yaml" % what)
        return r
    op = spec["paths"][tpl][op_method.lower()]
    covered.setdefault((method, tpl), set()).add(r.status_code // 100)
    resp = op.get("responses", {}).get(str(r.status_code))
    if resp is None:
        problem("%s: status %d is not documented for %s %s" % (what, r.status_code, method, tpl))
        return r
    resp = deref(resp)
    ct = r.headers.get("Content-Type", "").split(";")[0].strip()
    content = resp.get("content")
    if content is None:
        if r.content:
            problem("%s: a body where the document has none" % what)
        return r
    docs = {k.split(";")[0].strip(): v for k, v in content.items()}
    if ct not in docs:
        problem("%s: Content-Type %s is not documented (%s)" % (what, ct, ", ".join(content)))
        return r
    content = docs
    if ct == "application/json":
        try:
            value = r.json()
        except ValueError:
            problem("%s: not JSON: %s" % (what, r.text[:200]))
            return r
        validate(content[ct].get("schema", {}), value, what)
    # the request, when the server took it
    if body is not None and 200 <= r.status_code < 300:
        rb = deref(op.get("requestBody", {}))
        sch = rb.get("content", {}).get("application/json", {}).get("schema")
        if sch is None:
            problem("%s: a JSON body the document does not describe" % what)
        else:
            validate(sch, body, what + " (request)")
    if job and body is not None:
        errs = list(job_validator.iter_errors(body))
        if 200 <= r.status_code < 300 and errs:
            problem("%s: job.schema.json refuses a job the server took: %s" % (what, errs[0].message[:300]))
        if r.status_code == 422 and not errs:
            problem("%s: job.schema.json takes a job the server refused: %s" % (what, r.text[:200]))
    return r


def wait_job(job_id, timeout=90):
    t0 = time.time()
    while time.time() - t0 < timeout:
        j = requests.get(URL + "/v1/jobs/%s" % job_id, timeout=30).json()
        if j["state"] in ("succeeded", "failed", "cancelled"):
            return j
        time.sleep(0.1)
    problem("job %s did not finish" % job_id)
    return {}


X = [[0.5, 0.25], [-1.0, 2.0], [0.0, 0.0]]
T = {"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [0.5, 0.25, -1, 2, 0, 0]}

# ---- operations ----------------------------------------------------------------------------------
call("GET", "/healthz", expect=200)
call("GET", "/readyz", expect=200)
call("GET", "/metrics", expect=200)
call("GET", "/openapi.yaml", expect=200)
call("GET", "/openapi.json", expect=200)
call("GET", "/v1/version", expect=200)
call("PUT", "/healthz", expect=405)
call("POST", "/openapi.json", expect=405)

# ---- models and inference ---------------------------------------------------------------------
call("GET", "/v1/models", expect=200)
call("GET", "/v1/models/m", expect=200)
call("GET", "/v1/models/nosuch", expect=404)
call("POST", "/v1/models/m/log_prob", {"inputs": X}, expect=200)
call("POST", "/v1/models/m/log_prob", {"inputs": X, "bits_per_dim": True, "version": 1}, expect=200)
call("POST", "/v1/models/c/log_prob", {"inputs": X, "context": [[1.0], [2.0], [0.5]]}, expect=200)
call("POST", "/v1/models/m/log_prob", {"inputs": [[1, 2, 3]]}, expect=422)
call("POST", "/v1/models/m/log_prob", raw=b"{", ctype="application/json", expect=400)
call("POST", "/v1/models/m/log_prob", raw=b"a,b\n1,2\n", ctype="text/csv", accept="text/csv", expect=200)
call("POST", "/v1/models/m/log_prob", raw=b"1,2\n", ctype="text/plain", expect=415)
call("POST", "/v1/models/nosuch/log_prob", {"inputs": X}, expect=404)
call("POST", "/v1/models/m/sample", {"n": 3, "seed": 1, "return_log_prob": True}, expect=200)
call("POST", "/v1/models/m/sample", {"n": 3, "temperature": 0.5}, expect=200)
call("POST", "/v1/models/c/sample", {"n": 2, "context": [1.0]}, expect=200)
call("POST", "/v1/models/m/sample", {"n": 0}, expect=422)
call("POST", "/v1/models/m/sample", {"n": 2}, accept="image/png", expect=406)
call("POST", "/v1/models/m/encode", {"inputs": X}, expect=200)
call("POST", "/v1/models/m/encode", {"inputs": X, "extra": 1}, expect=422)
call("POST", "/v1/models/m/decode", {"latents": X}, expect=200)
call("POST", "/v1/models/m/decode", {"latents": [[1]]}, expect=422)
call("GET", "/v1/models/m/versions/1/checkpoint", expect=200)
call("GET", "/v1/models/m/versions/9/checkpoint", expect=404)

# ---- the standard protocols ---------------------------------------------------------------------
call("GET", "/v2/health/live", expect=200)
call("GET", "/v2/health/ready", expect=200)
call("GET", "/v2", expect=200)
call("GET", "/v2/models/c", expect=200)
call("GET", "/v2/models/nosuch", expect=404)
call("GET", "/v2/models/m/versions/1", expect=200)
call("GET", "/v2/models/m/versions/2", expect=404)
call("GET", "/v2/models/m/ready", expect=200)
call("GET", "/v2/models/nosuch/ready", expect=404)
call("GET", "/v2/models/m/versions/1/ready", expect=200)
call("GET", "/v2/models/m/versions/5/ready", expect=404)
call("POST", "/v2/models/m/infer", {"id": "1", "inputs": [T]}, expect=200)
call("POST", "/v2/models/m/infer", {"inputs": [T], "parameters": {"op": "encode"}}, expect=200)
call("POST", "/v2/models/m/infer", {"inputs": [dict(T, name="z")], "parameters": {"op": "decode"}}, expect=200)
call("POST", "/v2/models/m/infer", {"inputs": [], "parameters": {"op": "sample", "n": 2, "seed": 3},
                                    "outputs": [{"name": "samples"}, {"name": "log_prob"}]}, expect=200)
call("POST", "/v2/models/m/infer", {"inputs": [dict(T, datatype="INT32")]}, expect=400)
call("POST", "/v2/models/nosuch/infer", {"inputs": [T]}, expect=404)
call("POST", "/v2/models/m/versions/1/infer", {"inputs": [T]}, expect=200)
call("POST", "/v2/models/m/versions/1/infer", {"inputs": [dict(T, shape=[2, 3])]}, expect=400)
call("POST", "/v1/models/m:predict", {"instances": X}, expect=200)
call("POST", "/v1/models/m:predict", {"instances": [[1, 2, 3]]}, expect=400)
call("POST", "/v1/models/m/versions/1:predict", {"inputs": {"x": X}}, expect=200)
call("POST", "/v1/models/m/versions/4:predict", {"instances": X}, expect=404)

# ---- datasets -------------------------------------------------------------------------------------
ds = call("POST", "/v1/datasets?name=pts", raw=b"x,y\n0,1\n1,0\n2,2\n0.5,0.5\n", ctype="text/csv", expect=201).json()
ds2 = call("POST", "/v1/datasets?name=rows", {"rows": [[i % 7, i % 5] for i in range(300)]},
           expect=201).json()
call("POST", "/v1/datasets?name=idx", raw=b",a\n0,1\n", ctype="text/csv", expect=422)
call("POST", "/v1/datasets", raw=b"1,2\n", ctype="text/csv", expect=400)
call("GET", "/v1/datasets", expect=200)
call("GET", "/v1/datasets/%s" % ds["id"], expect=200)
call("GET", "/v1/datasets/ds_0000000000000000", expect=404)

# ---- jobs -------------------------------------------------------------------------------------------
small = {"preset": "realnvp", "depth": 2, "hidden": [8]}
jobs_ok = [
    {"model": "j1", "dataset": {"id": ds2["id"]}, "flow": small, "train": {"epochs": 2, "batch_size": 64}},
    {"model": "j2", "dataset": {"builtin": "moons", "n": 256, "seed": 1}, "flow": small,
     "train": {"epochs": 1, "batch_size": 64, "optimizer": "adamw", "schedule": "cosine",
               "early_stopping": {"patience": 3, "min_delta": 0.001}},
     "preprocess": {"standardize": True}, "submission_id": "contract-1"},
    {"model": "j3", "dataset": {"id": ds2["id"]}, "flow": small, "train": {"epochs": 1, "batch_size": 64},
     "preprocess": {"dequantize": {"kind": "variational", "levels": 8}, "logit": True}},
    {"model": "j4", "dataset": {"id": ds2["id"]}, "flow": small, "train": {"epochs": 1, "batch_size": 64},
     "preprocess": {"dequantize": {"kind": "uniform", "levels": 8}, "center": True}},
]
jobs_bad = [
    {"model": "b1", "dataset": {"builtin": "moons", "n": 256}, "flow": small, "train": {"epochs": 0}},
    {"model": "b2", "dataset": {"builtin": "moons", "n": 256}, "flow": {"preset": "nosuch"}},
    {"model": "b3", "dataset": {"builtin": "moons", "n": 256}, "flow": small,
     "preprocess": {"dequantize": {"kind": "gaussian"}}},
    {"model": "b4", "dataset": {"builtin": "moons", "n": 256}, "flow": small, "extra": 1},
    {"model": "b5", "dataset": {"builtin": "moons", "n": 256}, "flow": small,
     "preprocess": {"dequantize": {"kind": "uniform", "flow": {"preset": "realnvp"}}}},
]
ids = []
for j in jobs_ok:
    r = call("POST", "/v1/jobs", j, expect=202, job=True)
    if r.status_code == 202:
        ids.append(r.json()["id"])
for j in jobs_bad:
    call("POST", "/v1/jobs", j, expect=422, job=True)
call("POST", "/v1/jobs", raw=b"[1]", ctype="application/json", expect=400)
for i in ids:
    st = wait_job(i).get("state")
    if st != "succeeded":
        problem("job %s: %s" % (i, st))
call("GET", "/v1/jobs", expect=200)
call("GET", "/v1/jobs?state=succeeded&limit=2", expect=200)
call("GET", "/v1/jobs?state=bogus", expect=400)
if ids:
    call("GET", "/v1/jobs/%s" % ids[0], expect=200)
    call("GET", "/v1/jobs/%s/metrics?limit=5" % ids[0], expect=200)
    call("GET", "/v1/jobs/%s/metrics?limit=0" % ids[0], expect=400)
    call("GET", "/v1/jobs/%s/events" % ids[0], expect=200)
    r = requests.get(URL + "/v1/jobs/%s/events" % ids[0], headers={"Last-Event-ID": "3"}, timeout=30)
    if r.status_code != 200 or "id: 3\n" in r.text or "retry: 2000" not in r.text:
        problem("events after Last-Event-ID 3: %d %s" % (r.status_code, r.text[:200]))
    call("GET", "/v1/jobs/%s/events" % ids[0], headers={"Last-Event-ID": "x"}, expect=400)
    call("POST", "/v1/jobs/%s/cancel" % ids[0], expect=409)
    call("POST", "/v1/models/j1/evaluate", {"dataset": ds2["id"], "samples": 50}, expect=200)
    call("POST", "/v1/models/j1/evaluate", {"dataset": "ds_0000000000000000"}, expect=404)
    call("POST", "/v1/models/j1/evaluate", {"dataset": ds2["id"], "samples": -1}, expect=422)
    call("GET", "/v1/models/j3", expect=200)
call("GET", "/v1/jobs/999999", expect=404)
call("GET", "/v1/jobs/999999/metrics", expect=404)
call("GET", "/v1/jobs/999999/events", expect=404)
call("POST", "/v1/jobs/999999/cancel", expect=404)
long = call("POST", "/v1/jobs", {"model": "long", "dataset": {"builtin": "moons", "n": 4096},
                                 "flow": small, "train": {"epochs": 10000}}, expect=202, job=True)
if long.status_code == 202:
    call("POST", "/v1/jobs/%s/cancel" % long.json()["id"], expect=202)
    wait_job(long.json()["id"])

# ---- lifecycle: aliases, version upload and delete, resume ------------------------------------------
flow_bytes = call("GET", "/v1/models/m/versions/1/checkpoint", expect=200).content
call("POST", "/v1/models/up/versions", raw=flow_bytes, ctype="application/octet-stream", expect=201)
call("POST", "/v1/models/up/versions", raw=flow_bytes, ctype="application/octet-stream", expect=201)
call("POST", "/v1/models/up/versions", raw=b"not a flow", ctype="application/octet-stream", expect=422)
call("PUT", "/v1/models/up/aliases/prod", {"version": 1}, expect=200)
call("PUT", "/v1/models/up/aliases/prod", {"version": 9}, expect=422)
call("PUT", "/v1/models/up/aliases/prod", {"version": "x y"}, expect=404)
call("POST", "/v1/models/up/log_prob", {"inputs": X, "version": "prod"}, expect=200)
call("DELETE", "/v1/models/up/versions/1", expect=409)
call("DELETE", "/v1/models/up/aliases/prod", expect=204)
call("DELETE", "/v1/models/up/aliases/prod", expect=404)
call("DELETE", "/v1/models/up/versions/1", expect=204)
call("DELETE", "/v1/models/up/versions/1", expect=404)
if ids:
    call("POST", "/v1/jobs/%s/resume" % ids[0], expect=409)  # succeeded: not resumable
if long.status_code == 202:
    lid = long.json()["id"]
    call("POST", "/v1/jobs/%s/resume" % lid, expect=202)
    call("POST", "/v1/jobs/%s/cancel" % lid, expect=202)
    wait_job(lid)
call("POST", "/v1/jobs/999999/resume", expect=404)

# ---- deletes last -------------------------------------------------------------------------------
call("DELETE", "/v1/datasets/%s" % ds["id"], expect=204)
call("DELETE", "/v1/datasets/%s" % ds["id"], expect=404)
call("DELETE", "/v1/models/j2", expect=204)
call("DELETE", "/v1/models/j2", expect=404)

# ---- coverage: every operation answered, with a success --------------------------------------------
for tpl, item in spec["paths"].items():
    for method in ("get", "post", "put", "delete", "patch"):
        if method not in item:
            continue
        got = covered.get((method.upper(), tpl), set())
        if not got:
            problem("%s %s: never exercised" % (method.upper(), tpl))
        elif 2 not in got:
            problem("%s %s: no success exercised" % (method.upper(), tpl))
ops = sum(1 for i in spec["paths"].values() for m in i if m in ("get", "post", "put", "delete", "patch"))
print("check_contract: %d operations, %d exercised, %d problems" % (ops, len(covered), len(problems)))
sys.exit(1 if problems else 0)
