#!/usr/bin/python3
"""compare.py: flowd (bench_core) against the PyTorch reference (torch_ref.py).

Runs, each in its own process so peak RSS figures do not accumulate and
machine drift hits both sides alike:
    sgemm peak (C), C W1, torch W1, C W2, torch W2, C W3, torch W3,
    C serve, torch serve, sgemm peak again (best kept)
then prints a table with flowd / torch ratios and the issue's targets and
writes build/bench/results.json (FLOWD_BENCH_OUT overrides): per workload
"flowd", "torch" and "ratio" objects with the same keys, "serve",
"sgemm_peak_gflops", the load average before each step, and "targets".
An existing "http" object (bench/http_bench.sh) is kept and its target checked.

Environment: BENCH_CORE (default build/rel/bench_core), FLOWD_BENCH_QUICK,
FLOWD_BENCH_W2_SAMPLE_N, OPENBLAS_NUM_THREADS (default 2; torch gets the same
count via TORCH_THREADS).  Without a working `import torch` in /usr/bin/python3
only the flowd side runs (apt-get install python3-torch for the comparison).
"""
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORE = os.environ.get("BENCH_CORE", os.path.join(ROOT, "build/rel/bench_core"))
OUT = os.environ.get("FLOWD_BENCH_OUT") or os.path.join(ROOT, "build/bench/results.json")
PY = "/usr/bin/python3"
THREADS = os.environ.get("OPENBLAS_NUM_THREADS", "2")
KEYS = ("W1", "W2", "W3")
LP = ("1", "64", "256", "4096")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load():
    return round(os.getloadavg()[0], 2)


def env(**kw):
    e = dict(os.environ, OPENBLAS_NUM_THREADS=THREADS, TORCH_THREADS=THREADS)
    e.update(kw)
    return e


def run_c(only, loads):
    loads.append({"step": "flowd " + only, "load1": load()})
    log(f"[load {loads[-1]['load1']}] flowd {only} ...")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        subprocess.run([CORE], env=env(FLOWD_BENCH_ONLY=only, FLOWD_BENCH_OUT=path),
                       check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            return json.load(f)
    finally:
        os.unlink(path)


def run_torch(what, loads):
    loads.append({"step": "torch " + what, "load1": load()})
    log(f"[load {loads[-1]['load1']}] torch {what} ...")
    p = subprocess.run([PY, os.path.join(HERE, "torch_ref.py"), what], env=env(),
                       check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(p.stdout)


def have_torch():
    try:
        return subprocess.run([PY, "-c", "import torch"], capture_output=True).returncode == 0
    except OSError:
        return False


def ratio(a, b):
    if isinstance(a, dict):
        return {k: ratio(a[k], b[k]) for k in a if k in b}
    return a / b if b else None


def fmt(v):
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}"


def fmt_ratio(v):
    if v is None:
        return "-"
    return f"{v:.0f}x" if v >= 100 else f"{v:.1f}x" if v >= 10 else f"{v:.2f}x"


def targets(res):
    """the issue's targets, each {name, value, target, met}"""
    t = []

    def add(name, value, target, ge=True):
        if value is None:
            return
        t.append({"name": name, "value": value, "target": target,
                  "met": value >= target if ge else value <= target})

    g = lambda k, *path: _get(res, k, "ratio", *path)  # noqa: E731
    add("W1 train vs torch", g("W1", "train_samples_per_s"), 10)
    add("W1 log_prob B=1 vs torch", g("W1", "log_prob_rows_per_s", "1"), 50)
    add("W2 train vs torch", g("W2", "train_samples_per_s"), 2.5)
    add("W2 train % of sgemm peak", _get(res, "W2", "flowd", "gflops_frac_peak"), 0.6)
    add("W2 sampling vs torch", g("W2", "sample_rows_per_s"), 100)
    add("W3 train vs torch", g("W3", "train_samples_per_s"), 3)
    for k in KEYS:
        add(f"{k} peak RSS flowd/torch", g(k, "peak_rss_bytes"), 0.2, ge=False)
    add("serving peak RSS flowd/torch", _get(res, "serve", "ratio"), 0.2, ge=False)
    add("HTTP W1 B=1 req/s", _get(res, "http", "log_prob_1", "requests_per_s"), 10000)
    add("HTTP W1 B=1 p99 ms", _get(res, "http", "log_prob_1", "latency_ms", "p99"), 5, ge=False)
    return t


def _get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def main():
    quick = os.environ.get("FLOWD_BENCH_QUICK", "0") not in ("", "0")
    if not os.access(CORE, os.X_OK):
        sys.exit(f"compare.py: {CORE} missing (make {os.path.relpath(CORE, ROOT)})")
    torch_ok = have_torch()
    if not torch_ok:
        log("compare.py: /usr/bin/python3 cannot import torch (apt-get install python3-torch);"
            " running the flowd side only")
    loads = []
    res = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "mode": "quick" if quick else "full", "blas_threads": int(THREADS),
           "machine": {"cpus": os.cpu_count(), "cpu": _cpu_name(), "kernel": platform.release()},
           "load_avg_start": list(round(v, 2) for v in os.getloadavg()), "steps": loads}
    g = run_c("sgemm", loads)
    sg = g["sgemm_gflops"]
    for k in KEYS:
        c = run_c(k, loads)
        w = c[k]
        res[k] = w
        if torch_ok:
            tr = run_torch(k, loads)
            res["torch_version"] = tr["torch_version"]
            res["torch_threads"] = tr["threads"]
            if abs(tr["dense_flops_per_row_fwd"] - w["dense_flops_per_row_fwd"]) > 0.5:
                log(f"compare.py: {k}: torch model has {tr['dense_flops_per_row_fwd']} dense "
                    f"flops/row, flowd {w['dense_flops_per_row_fwd']}")
            w["torch"] = tr[k]["torch"]
    c = run_c("serve", loads)
    res["serve"] = {"flowd_peak_rss_bytes": c["serve_peak_rss_bytes"]}
    if torch_ok:
        t = run_torch("serve", loads)
        res["serve"]["torch_peak_rss_bytes"] = t["serve_peak_rss_bytes"]
        res["serve"]["ratio"] = c["serve_peak_rss_bytes"] / t["serve_peak_rss_bytes"]
    g = run_c("sgemm", loads)
    sg = {n: max(sg[n], g["sgemm_gflops"][n]) for n in sg}
    peak = max(sg.values())
    res["sgemm_gflops"] = sg
    res["sgemm_peak_gflops"] = peak
    fields = ("train_samples_per_s", "log_prob_rows_per_s", "sample_rows_per_s",
              "peak_rss_bytes", "gflops")
    for k in KEYS:
        w = res[k]
        w["flowd"]["gflops_frac_peak"] = w["flowd"]["gflops"] / peak
        if "torch" in w:
            w["torch"]["gflops_frac_peak"] = w["torch"]["gflops"] / peak
            w["ratio"] = {f: ratio(w["flowd"][f], w["torch"][f]) for f in fields}
    try:
        with open(OUT) as f:
            old = json.load(f)
        if "http" in old:
            res["http"] = old["http"]
    except (OSError, ValueError):
        pass
    res["targets"] = targets(res)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    print_table(res, torch_ok)
    print(f"JSON: {OUT}")


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_table(res, torch_ok):
    peak = res["sgemm_peak_gflops"]
    print(f"\nflowd vs PyTorch {res.get('torch_version', '(not installed)')} "
          f"({res['mode']} mode, {res['blas_threads']} threads each, float32)")
    print(f"{res['date']}  {res['machine']['cpu']}, {res['machine']['cpus']} cpus; "
          f"load average at start {res['load_avg_start']}")
    print(f"sgemm peak: {peak:.1f} GFLOP/s (n=1024 {res['sgemm_gflops']['1024']:.1f}, "
          f"n=2048 {res['sgemm_gflops']['2048']:.1f})\n")
    cols = ("flowd", "torch", "ratio") if torch_ok else ("flowd",)
    head = f"{'':24}" + "".join(f"{k:>10}{'':>{10 * (len(cols) - 1)}}" for k in KEYS)
    print(head)
    print(f"{'':24}" + "".join(f"{c:>10}" for _ in KEYS for c in cols))

    def row(label, path, scale=1.0, show_ratio=True):
        cells = []
        for k in KEYS:
            w = res[k]
            for c in cols:
                v = _get(w, c, *path)
                if c == "ratio":
                    cells.append(fmt_ratio(v) if show_ratio and v is not None else "")
                else:
                    cells.append(fmt(v * scale) if v is not None else "-")
        print(f"{label:24}" + "".join(f"{c:>10}" for c in cells))

    row("train samples/s", ("train_samples_per_s",))
    for b in LP:
        row(f"log_prob rows/s B={b}", ("log_prob_rows_per_s", b))
    row("sample rows/s", ("sample_rows_per_s",))
    row("peak RSS MB", ("peak_rss_bytes",), 1e-6)
    row("train GFLOP/s", ("gflops",))
    row("  % of sgemm peak", ("gflops_frac_peak",), 100, False)
    row("log_prob 4096 GFLOP/s", ("gflops_log_prob_4096",), 1, False)
    row("max repeat spread %", ("max_repeat_spread",), 100, False)
    print(f"(sample batch: W1 {res['W1']['sample_batch']}, W2 {res['W2']['sample_batch']}, "
          f"W3 {res['W3']['sample_batch']} rows per call)")
    s = res["serve"]
    line = f"serving all three models: flowd {s['flowd_peak_rss_bytes'] / 1e6:.1f} MB"
    if "torch_peak_rss_bytes" in s:
        line += (f", torch {s['torch_peak_rss_bytes'] / 1e6:.1f} MB, "
                 f"ratio {s['ratio']:.2f}")
    print(line + " peak RSS")
    if "http" in res:
        h = res["http"]
        for k in ("log_prob_1", "log_prob_256", "log_prob_1_training", "log_prob_256_training"):
            if k in h:
                v = h[k]
                print(f"HTTP {k:22} {v['requests_per_s']:>9.0f} req/s  p50 "
                      f"{v['latency_ms']['p50']:.2f} ms  p99 {v['latency_ms']['p99']:.2f} ms")
    print("\ntargets:")
    for t in res["targets"]:
        v, tg = t["value"], t["target"]
        print(f"  {'met ' if t['met'] else 'MISS'}  {t['name']:32} {v:10.3g}  "
              f"(target {'>=' if 'RSS' not in t['name'] and 'p99' not in t['name'] else '<='} "
              f"{tg:g})")
    print("\nsteps (1-min load average before each):",
          ", ".join(f"{s['step']} {s['load1']}" for s in res["steps"]))


if __name__ == "__main__":
    main()
