# lib.sh: shared by the benchmark scripts that drive a real `flowd serve`
# (http_bench.sh, daemon_bench.sh).  Source it after setting NAME (the
# script's name for messages) and PY (a python3).
#
#   bench_tmp                          TMP: a temporary folder, removed with the
#                                      daemon at exit
#   bench_serve FLOWD [ARGS...]        starts FLOWD serve on a free loopback port
#                                      with a fresh database under TMP; sets PID, URL
#   bench_gauss_npy PATH ROWS DIM SEED writes ROWS x DIM N(0,1) float32 rows as .npy
#   bench_upload NAME FILE CTYPE       POST /v1/datasets; prints the dataset id

bench_tmp() {
    TMP=$(mktemp -d)
    PID=
    trap bench_cleanup EXIT INT TERM
}

bench_cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$TMP"
}

bench_serve() {
    _flowd=$1
    shift
    "$_flowd" serve --quiet --listen 127.0.0.1:0 --port-file "$TMP/port" --db "$TMP/flowd.db" "$@" \
        >"$TMP/serve.log" 2>&1 &
    PID=$!
    _i=0
    while [ ! -s "$TMP/port" ]; do
        _i=$((_i + 1))
        [ $_i -gt 100 ] && { echo "$NAME: flowd did not start" >&2; cat "$TMP/serve.log" >&2; exit 1; }
        sleep 0.1
    done
    URL=http://127.0.0.1:$(cat "$TMP/port")
}

bench_gauss_npy() {
    $PY - "$@" <<'PYEOF'
import random, struct, sys
path, n, d, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
r = random.Random(seed)
hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (n, d)
hdr += " " * (63 - (len(hdr) + 10) % 64) + "\n"
with open(path, "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode())
    f.write(struct.pack("<%df" % (n * d), *[r.gauss(0, 1) for _ in range(n * d)]))
PYEOF
}

bench_upload() {
    curl -sf "$URL/v1/datasets?name=$1" -H "Content-Type: $3" --data-binary "@$2" |
        sed -n 's/.*"id":"\([^"]*\)".*/\1/p'
}
