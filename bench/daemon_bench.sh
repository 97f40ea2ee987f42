#!/bin/sh
# daemon_bench.sh: training speed through the daemon, against `flowd train`
# and the core bench.
#
# Three jobs, each submitted to `flowd serve` (its defaults: training threads
# and priority as a user gets them) over HTTP, then run again with
# `flowd train --config` (all CPUs) on the same data and job JSON:
#   mnist: MAF 5x1024 on 8,000 Fashion-MNIST images (784-D), uniform
#          dequantization, logit 0.05, batch 128, Adam 1e-4 (issue 18's job;
#          the images are uploaded as IDX, as a user would)
#   w1:    realnvp depth 8, MLP [128,128] on 20,000 two-moons rows, batch 512
#   w3:    nsf depth 5, resnet [256] x 2 blocks, 8 bins, on 20,000 30-D
#          Gaussian rows (uploaded as .npy), batch 512
# The figure is the job's final metric samples_per_second (training rows per
# second of its training loop, validations and checkpoints included) and its
# wall time from submission to 'succeeded'.  The core bench's train figure
# (bench_core, same architecture, threads as `flowd train`, no validation)
# is read from build/bench/results.json when a `make bench` left one.
#
#   make bench-daemon                        (about 4 minutes on 2 cores)
#   DAEMON_BENCH_EPOCHS=17 (mnist; default 3)  DAEMON_BENCH_FLOWD=path/to/flowd
#   DAEMON_BENCH_SERVE_ARGS="--train-threads 1"  (extra flags for flowd serve)
# Results go under "daemon" in build/bench/results.json (other keys kept).
set -eu

BUILD=${BUILD:-build/rel}
FLOWD=${DAEMON_BENCH_FLOWD:-$BUILD/flowd}
OUT=${FLOWD_BENCH_OUT:-build/bench/results.json}
EPOCHS=${DAEMON_BENCH_EPOCHS:-3}
SERVE_ARGS=${DAEMON_BENCH_SERVE_ARGS:-}
FMNIST=${FMNIST_IMAGES:-/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz}
PY=/usr/bin/python3

[ -x "$FLOWD" ] || { echo "daemon_bench: build $FLOWD first" >&2; exit 1; }
[ -r "$FMNIST" ] || { echo "daemon_bench: $FMNIST missing (apt-get install dataset-fashion-mnist)" >&2; exit 1; }
command -v curl >/dev/null || { echo "daemon_bench: curl missing" >&2; exit 1; }

NAME=daemon_bench
. "$(dirname "$0")/lib.sh"
bench_tmp

echo "daemon_bench: load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# the data: the first 8,000 Fashion-MNIST images as IDX, 20,000 30-D Gaussian rows as .npy
$PY - "$FMNIST" "$TMP" <<'EOF'
import gzip, struct, sys
src, tmp = sys.argv[1:3]
raw = gzip.open(src).read()
magic, n, h, w = struct.unpack(">4I", raw[:16])
k = 8000
open(f"{tmp}/mnist8k.idx", "wb").write(struct.pack(">4I", magic, k, h, w) + raw[16:16 + k * h * w])
EOF
bench_gauss_npy "$TMP/gauss30.npy" 20000 30 7

# shellcheck disable=SC2086 # SERVE_ARGS is a list of flags
bench_serve "$FLOWD" $SERVE_ARGS
head -n 1 "$TMP/serve.log"

MNIST_ID=$(bench_upload mnist8k "$TMP/mnist8k.idx" application/octet-stream)
GAUSS_ID=$(bench_upload gauss30 "$TMP/gauss30.npy" application/x-npy)

# job JSON: $1 name, $2 dataset object, $3 flow, $4 preprocess, $5 train
job() {
    printf '{"model":"%s","dataset":%s,"flow":%s,"preprocess":%s,"train":%s}' "$1" "$2" "$3" "$4" "$5"
}
MAF_FLOW='{"preset":"maf","depth":5,"hidden":[1024],"seed":1}'
MAF_PRE='{"dequantize":{"kind":"uniform","levels":256},"logit":{"alpha":0.05}}'
MAF_TRAIN="{\"epochs\":$EPOCHS,\"batch_size\":128,\"lr\":0.0001,\"seed\":1}"
W1_FLOW='{"preset":"realnvp","depth":8,"hidden":[128,128],"seed":1}'
W1_TRAIN='{"epochs":20,"batch_size":512,"seed":1}'
W3_FLOW='{"preset":"nsf","depth":5,"hidden":[256],"bins":8,"tail_bound":3,"seed":1}'
W3_TRAIN='{"epochs":10,"batch_size":512,"seed":1}'
NOPRE='{}'

run_daemon() { # key json
    t0=$(date +%s.%N)
    id=$(curl -sf "$URL/v1/jobs" -H 'Content-Type: application/json' -d "$2" |
        $PY -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    # poll lightly (curl and sed once a second): the machine's other work
    # slows a job's training threads, which wait for each other every pass
    while :; do
        s=$(curl -sf "$URL/v1/jobs/$id" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p')
        case $s in
        succeeded) break ;;
        failed | cancelled) echo "daemon_bench: job $1 $s" >&2; curl -s "$URL/v1/jobs/$id" >&2; exit 1 ;;
        esac
        sleep 1
    done
    t1=$(date +%s.%N)
    curl -sf "$URL/v1/models/$1" | $PY -c "
import json, sys
m = json.load(sys.stdin)['versions'][0]['metrics']
json.dump({'samples_per_second': m.get('samples_per_second'), 'train_seconds': m.get('train_seconds'),
           'wall_seconds': $t1 - $t0, 'steps': m['steps'], 'val_nll': m.get('val_nll'),
           'val_bits_per_dim': m.get('val_bits_per_dim')}, open('$TMP/daemon_$1.json', 'w'))"
    echo "daemon_bench: $1 through the daemon: $(cat "$TMP/daemon_$1.json")"
}
run_train() { # key json-with-dataset-path
    printf '%s' "$2" >"$TMP/train_$1.job"
    t0=$(date +%s.%N)
    "$FLOWD" train --quiet --config "$TMP/train_$1.job" --out "$TMP/$1.flow" >"$TMP/train_$1.out"
    t1=$(date +%s.%N)
    sed -n 's/^metrics //p' "$TMP/train_$1.out" | $PY -c "
import json, sys
m = json.load(sys.stdin)
json.dump({'samples_per_second': m.get('samples_per_second'), 'train_seconds': m.get('train_seconds'),
           'wall_seconds': $t1 - $t0, 'steps': m['steps'], 'val_nll': m.get('val_nll'),
           'val_bits_per_dim': m.get('val_bits_per_dim')}, open('$TMP/train_$1.json', 'w'))"
    echo "daemon_bench: $1 with flowd train: $(cat "$TMP/train_$1.json")"
}

run_daemon mnist "$(job mnist "{\"id\":\"$MNIST_ID\"}" "$MAF_FLOW" "$MAF_PRE" "$MAF_TRAIN")"
run_train mnist "$(job mnist "{\"path\":\"$TMP/mnist8k.idx\",\"format\":\"idx\"}" "$MAF_FLOW" "$MAF_PRE" "$MAF_TRAIN")"
run_daemon w1 "$(job w1 '{"builtin":"moons","n":20000,"seed":1}' "$W1_FLOW" "$NOPRE" "$W1_TRAIN")"
run_train w1 "$(job w1 '{"builtin":"moons","n":20000,"seed":1}' "$W1_FLOW" "$NOPRE" "$W1_TRAIN")"
run_daemon w3 "$(job w3 "{\"id\":\"$GAUSS_ID\"}" "$W3_FLOW" "$NOPRE" "$W3_TRAIN")"
run_train w3 "$(job w3 "{\"path\":\"$TMP/gauss30.npy\",\"format\":\"npy\"}" "$W3_FLOW" "$NOPRE" "$W3_TRAIN")"

$PY - "$TMP" "$OUT" "$EPOCHS" "$(head -n 1 "$TMP/serve.log")" "$(dirname "$0")" <<'EOF'
import json, sys
tmp, out, epochs, serve_line, bench_dir = sys.argv[1:6]
sys.path.insert(0, bench_dir)
from compare import measured_at, read_results, write_results  # noqa: E402
res = read_results(out)
# the core bench's train figure (a median) from a `make bench` that left one
core = {key: res.get(w, {}).get("flowd", {}).get("train_samples_per_s")
        for key, w in (("w1", "W1"), ("w3", "W3"), ("mnist", "W2"))}
d = {"serve": serve_line, "mnist_epochs": int(epochs), "jobs": {}}
print(f"\n{'job':8}{'daemon rows/s':>15}{'flowd train':>13}{'daemon/train':>14}"
      f"{'core bench':>12}{'daemon wall s':>15}{'train wall s':>14}")
for key in ("mnist", "w1", "w3"):
    a = json.load(open(f"{tmp}/daemon_{key}.json"))
    b = json.load(open(f"{tmp}/train_{key}.json"))
    d["jobs"][key] = {"daemon": a, "flowd_train": b, "core_bench_train_samples_per_s": core[key]}
    c = f"{core[key]:.0f}" if core[key] else "-"
    sa, sb = a["samples_per_second"], b["samples_per_second"]
    fa, fb = (f"{sa:.0f}" if sa else "-"), (f"{sb:.0f}" if sb else "-")
    r = f"{sa / sb:.2f}" if sa and sb else "-"
    print(f"{key:8}{fa:>15}{fb:>13}{r:>14}{c:>12}"
          f"{a['wall_seconds']:>15.1f}{b['wall_seconds']:>14.1f}")
print("(core bench: W2's 784-D MAF on Gaussian rows, no dequantization or validation; "
      "blank without a build/bench/results.json)")
d.update(measured_at(bench_dir))
res["daemon"] = d
write_results(out, res)
print(f"JSON: {out} (\"daemon\")")
EOF
