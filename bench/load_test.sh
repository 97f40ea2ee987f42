#!/bin/sh
# bench/load_test.sh: load test of a real flowd (docs/reliability.md, "Load").
#
#   sh bench/load_test.sh [BUILD]        (default build/rel; needs wrk, python3)
#
# Starts flowd on a fresh database in a temporary directory, trains a small
# moons model over HTTP, then starts a long training job and, while it runs,
# drives POST log_prob (64 rows a request) and POST sample (n=64) with wrk
# for DURATION seconds each (default 30; CONNS connections, default 16).
# Prints, per endpoint: requests/s, latency percentiles, and every status
# other than 200 (deliberate 429/503 shedding counts separately from
# errors); the daemon's RSS sampled every second (first/last/max); and the
# largest difference between HTTP log_prob and the in-process score of the
# same rows (flowd eval --per-row on the downloaded checkpoint).
# Exit status 1 on any error response or transport error.
set -eu
BUILD=${1:-build/rel}
FLOWD=$(pwd)/$BUILD/flowd
DURATION=${DURATION:-30}
CONNS=${CONNS:-16}
THREADS=${THREADS:-2}
command -v wrk >/dev/null || { echo "wrk not found (apt-get install -y wrk)"; exit 2; }
[ -x "$FLOWD" ] || { echo "$FLOWD not built (make)"; exit 2; }
dir=$(mktemp -d /tmp/flowd_load_XXXXXX)
pid=""; rss_pid=""
cleanup() {
  [ -n "$rss_pid" ] && kill "$rss_pid" 2>/dev/null || true
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

export OPENBLAS_NUM_THREADS=1
"$FLOWD" migrate --db "$dir/db" >/dev/null
"$FLOWD" serve --db "$dir/db" --listen 127.0.0.1:0 --port-file "$dir/port" --quiet 2>"$dir/log" &
pid=$!
for i in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.1; done
port=$(cat "$dir/port")
url=http://127.0.0.1:$port
json() { python3 -c "import sys,json; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

echo "flowd pid $pid on $url"
job=$(curl -sf "$url/v1/jobs" -H 'Content-Type: application/json' -d '{"model":"moons",
  "dataset":{"builtin":"moons","n":4000,"seed":1},
  "flow":{"preset":"realnvp","depth":4,"hidden":[32,32]},"train":{"epochs":10,"batch_size":256}}' | json 'd["id"]')
while :; do
  st=$(curl -sf "$url/v1/jobs/$job" | json 'd["state"]')
  case $st in succeeded) break;; failed|cancelled) echo "training failed"; exit 1;; esac
  sleep 0.5
done
echo "model trained (job $job); starting a background training job"
bg=$(curl -sf "$url/v1/jobs" -H 'Content-Type: application/json' -d '{"model":"background",
  "dataset":{"builtin":"moons","n":20000,"seed":2},
  "flow":{"preset":"realnvp","depth":6,"hidden":[64,64]},"train":{"epochs":100000,"batch_size":256}}' | json 'd["id"]')

# RSS every second
( while kill -0 "$pid" 2>/dev/null; do
    awk '/VmRSS/ {print $2}' /proc/$pid/status; sleep 1; done ) > "$dir/rss" 2>/dev/null &
rss_pid=$!

# request bodies and a wrk script that counts statuses
python3 - "$dir" <<'PY'
import sys, math, random
d = sys.argv[1]
random.seed(5)
rows = []
for i in range(64):
    t = random.uniform(0, math.pi)
    if i % 2: rows.append([math.cos(t) + random.gauss(0, .1), math.sin(t) + random.gauss(0, .1)])
    else: rows.append([1 - math.cos(t) + random.gauss(0, .1), .5 - math.sin(t) + random.gauss(0, .1)])
open(d + "/lp.json", "w").write('{"inputs":[' + ",".join("[%.9g,%.9g]" % tuple(r) for r in rows) + "]}")
open(d + "/rows.csv", "w").write("a,b\n" + "".join("%.9g,%.9g\n" % tuple(r) for r in rows))
PY
cat > "$dir/post.lua" <<'LUA'
local body_file = os.getenv("WRK_BODY")
local f = io.open(body_file, "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
  end
  local line = "statuses:"
  for k, v in pairs(total) do line = line .. " " .. k .. "=" .. v end
  print(line)
  print(string.format("errors: connect %d read %d write %d timeout %d",
        summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    print(string.format("p%g %.2f ms", p, latency:percentile(p) / 1000))
  end
  print(string.format("max %.2f ms, requests/s %.1f", latency.max / 1000, summary.requests / (summary.duration / 1e6)))
end
LUA
printf '{"n":64,"seed":7}' > "$dir/sample.json"

fail=0
for ep in log_prob sample; do
  body=$dir/lp.json; [ $ep = sample ] && body=$dir/sample.json
  echo
  echo "== POST /v1/models/moons/$ep: ${DURATION}s, $CONNS connections, $THREADS threads (training job running)"
  WRK_BODY=$body wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 10s -s "$dir/post.lua" \
    "$url/v1/models/moons/$ep" > "$dir/wrk_$ep" 2>&1 || true
  grep -E "^(statuses|errors|p[0-9]|max)" "$dir/wrk_$ep"
  bad=$(sed -n 's/^statuses://p' "$dir/wrk_$ep" | tr ' ' '\n' | grep '=' | grep -v '^200=' | grep -v '^429=' | grep -v '^503=' || true)
  terr=$(sed -n 's/^errors: connect \([0-9]*\) read \([0-9]*\) write \([0-9]*\) timeout \([0-9]*\)/\1 \2 \3 \4/p' "$dir/wrk_$ep" | awk '{print $1+$2+$3+$4}')
  if [ -n "$bad" ] || [ "${terr:-1}" != 0 ]; then echo "ERRORS: statuses [$bad] transport $terr"; fail=1; fi
done

st=$(curl -sf "$url/v1/jobs/$bg" | json 'd["state"] + " at step " + str(d["progress"].get("step"))')
echo
echo "background training job: $st"
kill "$rss_pid" 2>/dev/null || true; rss_pid=""
python3 - "$dir/rss" <<'PY'
import sys
v = [int(x) for x in open(sys.argv[1]).read().split() if x.strip()]
if v: print("daemon RSS (MiB) over %d samples: first %.1f, last %.1f, max %.1f" % (len(v), v[0]/1024, v[-1]/1024, max(v)/1024))
if v: print("  every 5 s:", " ".join("%.1f" % (x/1024) for x in v[::5]))
PY

# HTTP scores against in-process scores of the same rows
curl -sf "$url/v1/models/moons/log_prob" -H 'Content-Type: application/json' -d @"$dir/lp.json" > "$dir/http_lp.json"
curl -sf "$url/v1/models/moons/versions/1/checkpoint" -o "$dir/moons.flow"
"$FLOWD" eval --model "$dir/moons.flow" --data "$dir/rows.csv" --per-row "$dir/nll.txt" >/dev/null
python3 - "$dir" <<'PY'
import sys, json
d = sys.argv[1]
h = json.load(open(d + "/http_lp.json"))["log_prob"]
c = [-float(x) for x in open(d + "/nll.txt").read().split()]
diff = max(abs(a - b) for a, b in zip(h, c))
print("HTTP vs in-process log_prob over %d rows: max |diff| %.3g (mean log_prob %.4f)" % (len(h), diff, sum(h)/len(h)))
sys.exit(0 if len(h) == len(c) and diff <= 1e-4 else 1)
PY
[ $? -eq 0 ] || fail=1
curl -sf -X POST "$url/v1/jobs/$bg/cancel" >/dev/null || true
exit $fail
