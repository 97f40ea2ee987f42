#!/bin/sh
# http_bench.sh: flowd's HTTP scoring throughput against the in-process figure.
#
# Starts `flowd serve --quiet` on a fresh database, trains a W1-sized model
# through the API (realnvp depth 8, hidden [128,128], builtin moons, 1 epoch:
# the architecture matters here, not the fit), then runs wrk (POST log_prob,
# JSON body of 1 row and of 256 rows; --latency) idle and again while a
# training job runs in the daemon.  The in-process figure is bench_core's W1
# log_prob at B=1 and B=256 (OPENBLAS_NUM_THREADS=1, as the daemon runs
# OpenBLAS single-threaded).  Results go under "http" in
# build/bench/results.json (other keys kept) and are printed.
#
#   make bench-http                      (about 2 minutes)
#   HTTP_BENCH_SECONDS=10 HTTP_BENCH_CONNECTIONS=32 HTTP_BENCH_THREADS=2 (defaults)
#   HTTP_BENCH_SERVE_ARGS="--train-yield 0"  (added to `flowd serve`)
#
# wrk runs on the same machine as the daemon and takes CPU from it.
set -eu

BUILD=${BUILD:-build/rel}
FLOWD=$BUILD/flowd
CORE=$BUILD/bench_core
OUT=${FLOWD_BENCH_OUT:-build/bench/results.json}
DUR=${HTTP_BENCH_SECONDS:-10}
CONNS=${HTTP_BENCH_CONNECTIONS:-32}
WT=${HTTP_BENCH_THREADS:-2}
PY=/usr/bin/python3

command -v wrk >/dev/null || { echo "http_bench: wrk missing (apt-get install wrk)" >&2; exit 1; }
command -v curl >/dev/null || { echo "http_bench: curl missing" >&2; exit 1; }
[ -x "$FLOWD" ] && [ -x "$CORE" ] || { echo "http_bench: build $FLOWD and $CORE first" >&2; exit 1; }

NAME=http_bench
. "$(dirname "$0")/lib.sh"
bench_tmp
echo "http_bench: load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# shellcheck disable=SC2086 # words on purpose
bench_serve "$FLOWD" ${HTTP_BENCH_SERVE_ARGS:-}

# submit a job and print its id
submit() {
    curl -sf "$URL/v1/jobs" -H 'Content-Type: application/json' -d "$1" |
        $PY -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
job_state() {
    curl -sf "$URL/v1/jobs/$1" | $PY -c 'import json,sys; print(json.load(sys.stdin)["state"])'
}
FLOW='"flow":{"preset":"realnvp","depth":8,"hidden":[128,128]}'
echo "http_bench: training the W1 model through the API ..."
ID=$(submit "{\"model\":\"w1\",\"dataset\":{\"builtin\":\"moons\",\"n\":20000,\"seed\":1},$FLOW,\"train\":{\"epochs\":1,\"batch_size\":512}}")
while :; do
    s=$(job_state "$ID")
    case $s in
    succeeded) break ;;
    failed | cancelled) echo "http_bench: training job $s" >&2; curl -s "$URL/v1/jobs/$ID" >&2; exit 1 ;;
    esac
    sleep 0.5
done

# request bodies: 1 and 256 rows of two-moons-like points
$PY - "$TMP" <<'EOF'
import json, math, random, sys
r = random.Random(3)
def row():
    t = math.pi * r.random()
    if r.random() < 0.5:
        return [round(1 - math.cos(t) + r.gauss(0, .05), 5), round(.5 - math.sin(t) + r.gauss(0, .05), 5)]
    return [round(math.cos(t) + r.gauss(0, .05), 5), round(math.sin(t) + r.gauss(0, .05), 5)]
for n in (1, 256):
    with open(f"{sys.argv[1]}/body{n}.json", "w") as f:
        json.dump({"inputs": [row() for _ in range(n)]}, f)
EOF
for n in 1 256; do
    cat >"$TMP/post$n.lua" <<EOF
local f = io.open("$TMP/body$n.json", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
EOF
    code=$(curl -s -o "$TMP/check$n.json" -w '%{http_code}' "$URL/v1/models/w1/log_prob" \
        -H 'Content-Type: application/json' --data-binary "@$TMP/body$n.json")
    [ "$code" = 200 ] || { echo "http_bench: log_prob answered $code:" >&2; cat "$TMP/check$n.json" >&2; exit 1; }
done

run_wrk() { # name rows [threads connections]
    echo "http_bench: $1 (load $(cut -d' ' -f1 /proc/loadavg)) ..."
    cut -d' ' -f1 /proc/loadavg >"$TMP/$1.load"
    wrk -t"${3:-$WT}" -c"${4:-$CONNS}" -d"${DUR}s" --latency -s "$TMP/post$2.lua" \
        "$URL/v1/models/w1/log_prob" >"$TMP/$1.txt"
}
run_wrk log_prob_1 1
run_wrk log_prob_256 256
# one connection: per-request latency without queueing, against the in-process call
run_wrk log_prob_1_serial 1 1 1
run_wrk log_prob_256_serial 256 1 1

# the same while a W2-sized training job runs (MAF 5x1024 on 784-D Gaussian
# rows, uploaded as .npy; long enough to outlast both runs), with the
# daemon's default training threads and priority
bench_gauss_npy "$TMP/w2.npy" 4000 784 5
W2DS=$(bench_upload w2 "$TMP/w2.npy" application/x-npy)
ID2=$(submit "{\"model\":\"w2-busy\",\"dataset\":{\"id\":\"$W2DS\"},\"flow\":{\"preset\":\"maf\",\"depth\":5,\"hidden\":[1024]},\"train\":{\"epochs\":1000,\"batch_size\":128,\"log_every\":5,\"max_seconds\":$((4 * DUR + 30))}}")
i=0
while [ "$(job_state "$ID2")" != running ]; do
    i=$((i + 1))
    [ $i -gt 100 ] && { echo "http_bench: training job did not start" >&2; exit 1; }
    sleep 0.2
done
sleep 2 # past the job's start-up (data load, first steps)
run_wrk log_prob_1_training 1
run_wrk log_prob_256_training 256
TRAIN_STATE=$(job_state "$ID2")
curl -sf "$URL/v1/jobs/$ID2" >"$TMP/train_job.json"
curl -sf -X POST "$URL/v1/jobs/$ID2/cancel" >/dev/null || true

# in-process reference: bench_core W1 with the daemon's single BLAS thread
echo "http_bench: in-process W1 log_prob (bench_core, 1 BLAS thread) ..."
FLOWD_BENCH_ONLY=W1 FLOWD_BENCH_OUT="$TMP/core.json" OPENBLAS_NUM_THREADS=1 "$CORE" >/dev/null

$PY - "$TMP" "$OUT" "$DUR" "$CONNS" "$WT" "$TRAIN_STATE" "$(dirname "$0")" "$(head -n 1 "$TMP/serve.log")" "${HTTP_BENCH_SERVE_ARGS:-}" <<'EOF'
import json, os, re, sys
tmp, out, dur, conns, wt, train_state, bench_dir, serve_line, serve_args = sys.argv[1:10]

def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    x, u = float(m.group(1)), m.group(2)
    return x * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[u]

def parse(name):
    txt = open(f"{tmp}/{name}.txt").read()
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", txt, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", txt)
    errs = re.search(r"Socket errors: (.*)", txt)
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", txt).group(1)),
            "latency_ms": {"p" + k: ms(v) for k, v in lat.items()},
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errs.group(1).strip() if errs else None,
            "load1_before": float(open(f"{tmp}/{name}.load").read())}

sys.path.insert(0, bench_dir)
from compare import measured_at, read_results, write_results  # noqa: E402
core = json.load(open(f"{tmp}/core.json"))["W1"]["flowd"]["log_prob_rows_per_s"]
h = {"model": "realnvp depth 8 hidden [128,128], 2-D (W1), trained 1 epoch via the API",
     "training_alongside": "MAF 5x1024 on 784-D rows (W2-sized), batch 128, daemon defaults",
     "wrk": {"threads": int(wt), "connections": int(conns), "seconds": int(dur)},
     "server": serve_line}
NAMES = ("log_prob_1", "log_prob_256", "log_prob_1_serial", "log_prob_256_serial",
         "log_prob_1_training", "log_prob_256_training")
for name in NAMES:
    h[name] = parse(name)
h["training_job_state_after"] = train_state
h["serve_args"] = serve_args
# when and what: make bench's table shows these figures beside its own
h.update(measured_at(bench_dir))
# the job's side: its progress after both runs (steps taken, rows/s since its
# last report, seconds held back for requests: --train-yield)
tp = json.load(open(f"{tmp}/train_job.json")).get("progress") or {}
h["training_job_progress_after"] = {k: tp.get(k) for k in ("step", "samples_per_second", "held_seconds")}
h["in_process"] = {"blas_threads": 1,
                   "log_prob_calls_per_s": {"1": core["1"], "256": core["256"] / 256}}
# service-layer cost: one request at a time (1 connection) against one in-process
# call at a time, both on one core's worth of work
for b in ("1", "256"):
    h[f"service_cost_ratio_{b}"] = h["in_process"]["log_prob_calls_per_s"][b] / h[f"log_prob_{b}_serial"]["requests_per_s"]
res = read_results(out)
res["http"] = h
write_results(out, res)
print(f"\nflowd HTTP log_prob, W1 model; wrk {wt} threads, {conns} connections "
      f"(_serial: 1 thread, 1 connection), {dur} s each")
print(f"{'':26}{'req/s':>10}{'rows/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
for name in NAMES:
    v, rows = h[name], 256 if "256" in name else 1
    print(f"{name:26}{v['requests_per_s']:>10.0f}{v['requests_per_s'] * rows:>11.0f}"
          f"{v['latency_ms']['p50']:>9.2f}{v['latency_ms']['p99']:>9.2f}{v['non_2xx']:>9}")
for b in ("1", "256"):
    print(f"in-process B={b}: {h['in_process']['log_prob_calls_per_s'][b]:.0f} calls/s "
          f"(1 BLAS thread, one call at a time); in-process / HTTP with 1 connection = "
          f"{h['service_cost_ratio_' + b]:.1f}x")
tp = h["training_job_progress_after"]
print(f"training job after both runs: step {tp['step']}, held back {tp['held_seconds']} s "
      f"(serve args: {serve_args or 'defaults'})")
print(f"JSON: {out} (\"http\")")
EOF
