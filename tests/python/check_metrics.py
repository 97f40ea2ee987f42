"""tests/python/check_metrics.py: GET /metrics parsed by a real Prometheus
text parser (prometheus_client, Debian's python3-prometheus-client).

Started by tests/server/test_python.c against a daemon holding the models
"m" and "c"; drives known traffic, then scrapes and fails on:
  - a scrape the parser refuses;
  - two samples with the same name and label set (the old GET and DELETE
    of /v1/models/{name} collided);
  - a synthetic label (the old histogram "id"), a series without `method`;
  - per-model counters and histograms that do not count the traffic sent;
  - a missing flowd_build_info or process_* metric.
"""

import collections
import os
import sys

import requests
from prometheus_client.parser import text_string_to_metric_families

URL = os.environ.get("FLOWD_URL", "http://127.0.0.1:8080")
X = [[0.5, 0.25], [-1.0, 2.0]]
errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)


def post(path, body):
    return requests.post(URL + path, json=body, timeout=30).status_code


# ---- traffic with known counts -------------------------------------------------------
for _ in range(3):
    check(post("/v1/models/m/log_prob", {"inputs": X}) == 200, "log_prob")
check(post("/v1/models/m/log_prob", {"inputs": [[1, 2, 3]]}) == 422, "bad width")
check(post("/v2/models/m/infer", {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                                               "data": [1, 2, 3, 4]}]}) == 200, "v2 infer")
check(post("/v2/models/m/infer", {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32",
                                               "data": [1, 2, 3, 4, 5, 6]}]}) == 400, "v2 shape")
check(post("/v1/models/m:predict", {"instances": X}) == 200, "predict")
check(post("/v1/models/m/sample", {"n": 5, "seed": 1}) == 200, "sample")
check(post("/v1/models/c/encode", {"inputs": X, "context": [1.0]}) == 200, "encode")
check(post("/v1/models/nosuch/log_prob", {"inputs": X}) == 404, "404 model")
check(requests.get(URL + "/v1/models/nosuch", timeout=30).status_code == 404, "GET 404")
check(requests.delete(URL + "/v1/models/nosuch", timeout=30).status_code == 404, "DELETE 404")
check(requests.put(URL + "/v1/models", timeout=30).status_code == 405, "405")

# ---- the scrape ------------------------------------------------------------------------
r = requests.get(URL + "/metrics", timeout=30)
check(r.status_code == 200, "GET /metrics: %d" % r.status_code)
check(r.headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"), "Content-Type")
try:
    families = list(text_string_to_metric_families(r.text))
except Exception as e:  # the parser refuses the text
    print("the scrape does not parse: %s" % e)
    sys.exit(1)

seen = collections.Counter()
samples = {}
by_family = {}
for fam in families:
    by_family[fam.name] = fam
    for s in fam.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        seen[key] += 1
        samples[key] = s.value
        check("id" not in s.labels, "synthetic id label: %s %s" % (s.name, s.labels))
        if s.name.startswith("flowd_http_"):
            check("method" in s.labels and "route" in s.labels, "no method/route label: %s %s" % (s.name, s.labels))
for key, n in seen.items():
    check(n == 1, "%d samples of %s %s" % (n, key[0], dict(key[1])))


def value(name, **labels):
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))))


# one series per method of a shared path
check(value("flowd_http_requests_total", method="GET", route="/v1/models/{name}", code=404) == 1, "GET 404 series")
check(value("flowd_http_requests_total", method="DELETE", route="/v1/models/{name}", code=404) == 1,
      "DELETE 404 series")
check(value("flowd_http_requests_total", method="any", route="unmatched", code=405) == 1, "405 series")
# per model: /v1 log_prob x3, v2 infer, :predict are op=log_prob 200; the bad width reached the model
inf = dict(model="m", version="1", op="log_prob")
check(value("flowd_inference_requests_total", code=200, **inf) == 5,
      "m log_prob 200: %s" % value("flowd_inference_requests_total", code=200, **inf))
check(value("flowd_inference_requests_total", code=422, **inf) == 1, "m log_prob 422")
check(value("flowd_inference_requests_total", code=400, **inf) == 1, "m log_prob 400 (v2)")
check(value("flowd_inference_duration_seconds_count", **inf) == 7, "m log_prob histogram count")
check(value("flowd_inference_duration_seconds_bucket", le="+Inf", **inf) == 7, "m log_prob +Inf bucket")
check(value("flowd_inference_requests_total", model="m", version="1", op="sample", code=200) == 1, "m sample")
check(value("flowd_inference_requests_total", model="c", version="1", op="encode", code=200) == 1, "c encode")
check(not any(k[0] == "flowd_inference_requests_total" and ("model", "nosuch") in k[1] for k in samples),
      "a model that does not exist has series")
# build and process
bi = [k for k in samples if k[0] == "flowd_build_info"]
check(len(bi) == 1 and dict(bi[0][1]).get("version") and samples[bi[0]] == 1, "flowd_build_info")
for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
             "process_open_fds", "process_max_fds", "process_start_time_seconds"):
    v = value(name)
    check(v is not None and v >= 0, "%s: %s" % (name, v))
check((value("process_resident_memory_bytes") or 0) > 1 << 20, "resident memory under 1 MiB")
check((value("process_open_fds") or 0) >= 3, "open fds")
check(by_family.get("flowd_http_request_duration_seconds") is not None and
      by_family["flowd_http_request_duration_seconds"].type == "histogram", "http histogram type")

for e in errors:
    print("FAIL:", e)
print("check_metrics: %d families, %d samples, %d problems" % (len(families), len(samples), len(errors)))
sys.exit(1 if errors else 0)
