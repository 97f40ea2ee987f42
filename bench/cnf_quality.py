#!/usr/bin/python3
"""cnf_quality.py: held-out NLL and NFE of flowd's CNF against wall-clock time
(docs/cnf.md, "Quality").

Writes the data once as CSV files (train, test), trains each configuration
below with `flowd train` on train.csv for the same wall-clock budget
(train.max_seconds; its validation split is 5% of train.csv), reads the
validation NLL and the NFE from the progress lines as they arrive (stamped
with the seconds since the process started), and scores test.csv with
`flowd eval`.  Beside the flows it fits a Gaussian kernel density estimate
(numpy; bandwidth from a grid around Scott's rule, chosen on the same 5%)
and, for two moons, computes the true density's entropy (the uniform
density on the two arcs convolved with the noise, by Monte Carlo).

  /usr/bin/python3 bench/cnf_quality.py moons [SECONDS]     (default 120)
  /usr/bin/python3 bench/cnf_quality.py tabular [SECONDS]

moons: two moons in sklearn's units (as bench_core's W1: angle uniform on
each half circle, noise 0.05), 40,000 training and 10,000 test rows (seed 1).
tabular: the 8x8 digits of Debian's scikit-learn copy is too discrete for
densities; instead a 6-D correlated, skewed, heavy-tailed set generated
here (a fixed random rotation of independent gamma, Student-t and mixture
coordinates), 20,000 + 5,000 rows, whose entropy is known in closed form.

Writes build/bench/cnf_quality_<what>.json (the curves and the table).
Environment: FLOWD (default build/rel/flowd), FLOWD_THREADS (default 2),
CNF_QUALITY_ONLY (a comma list of the configurations to run),
CNF_QUALITY_EXTRA (more configurations, JSON: [[name, flow, train], ...]).
"""
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FLOWD = os.environ.get("FLOWD", os.path.join(ROOT, "build/rel/flowd"))
THREADS = os.environ.get("FLOWD_THREADS", "2")
LN4 = math.log(4)



def flowd_eval(model, data):
    p = subprocess.run([FLOWD, "eval", "--model", model, "--data", data, "--json"],
                       check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(p.stdout)


def run_job(name, flow, train_csv, test_csv, budget, train_over=None):
    """flowd train for budget seconds: (curve, summary)"""
    job = {"model": name, "dataset": {"path": train_csv, "format": "csv"}, "flow": flow,
           "train": {"epochs": 100000, "batch_size": 256, "lr": 1e-3, "val_fraction": 0.05,
                     "seed": 1, "log_every": 50, "max_seconds": budget}}
    job["train"].update(train_over or {})
    with tempfile.TemporaryDirectory() as d:
        cfg, out = os.path.join(d, "job.json"), os.path.join(d, "m.flow")
        with open(cfg, "w") as f:
            json.dump(job, f)
        t0 = time.monotonic()
        p = subprocess.Popen([FLOWD, "train", "--config", cfg, "--out", out, "--threads", THREADS],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        curve = []
        for line in p.stderr:
            now = time.monotonic() - t0
            kv = dict(re.findall(r"(\w+)=([^\s]+)", line))
            if line.startswith("val "):
                curve.append({"t": round(now, 2), "step": int(kv["step"].split("/")[0]),
                              "val_nll": float(kv["val_loss"])})
            elif "nfe" in kv and curve and "nfe" not in curve[-1]:
                curve[-1].update({k: float(kv[k]) for k in ("nfe", "nfe_forward", "kinetic",
                                                             "jacobian") if k in kv})
        stdout = p.stdout.read()
        if p.wait() != 0:
            sys.exit(f"{name}: flowd train failed:\n{stdout}")
        m = json.loads(stdout.split("metrics ", 1)[1].splitlines()[0])
        ev = flowd_eval(out, test_csv)
    s = {"name": name, "flow": flow, "steps": m["steps"], "train_seconds": m["train_seconds"],
         "best_val_nll": m["val_nll"], "test_nll": ev["nll_mean"], "eval": ev,
         "ode": m.get("ode"), "validations": len(curve)}
    print(f"  {name}: test NLL {ev['nll_mean']:.4f}, {m['steps']} steps in "
          f"{m['train_seconds']:.1f} s", file=sys.stderr, flush=True)
    return curve, s


def kde(train, test, val_frac=0.05):
    """Gaussian KDE (diagonal bandwidth h * std per coordinate); h = c *
    Scott's, c on a grid, chosen on the last val_frac of train (the KDE then
    keeps all of train)"""
    nv = int(len(train) * val_frac)
    fit, val = train[:-nv], train[-nv:]
    d = train.shape[1]

    def nll(ref, x, c):
        n = len(ref)
        sd = ref.std(0) * c * n ** (-1.0 / (d + 4))
        out = []
        for i in range(0, len(x), 256):
            z = ((x[i:i + 256, None, :] - ref[None]) / sd) ** 2
            lk = -0.5 * z.sum(2)
            mx = lk.max(1, keepdims=True)
            out.append(mx[:, 0] + np.log(np.exp(lk - mx).sum(1)))
        norm = 0.5 * d * math.log(2 * math.pi) + np.log(sd).sum() + math.log(n)
        return -float(np.concatenate(out).mean()) + norm

    grid = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
    vals = [nll(fit, val, c) for c in grid]
    c = grid[int(np.argmin(vals))]
    return {"name": "kde", "scott_factor": c, "val_nll": min(vals), "test_nll": nll(train, test, c)}


def moons(n, seed):
    rng = np.random.default_rng(seed)
    t = math.pi * rng.random(n)
    low = rng.random(n) < 0.5
    x = np.where(low, 1 - np.cos(t), np.cos(t))
    y = np.where(low, 0.5 - np.sin(t), np.sin(t))
    return np.stack([x, y], 1) + NOISE * rng.standard_normal((n, 2))


NOISE = 0.05


def moons_entropy(m=200000):
    """-E log p for p = uniform on the arcs (length 2 pi) * N(0, NOISE^2 I):
    Monte Carlo over fresh points, p by quadrature over the arcs"""
    pts = moons(m, 99)
    k = 3000
    s = (np.arange(k) + 0.5) * math.pi / k
    arc = np.concatenate([np.stack([np.cos(s), np.sin(s)], 1),
                          np.stack([1 - np.cos(s), 0.5 - np.sin(s)], 1)])
    lp = []
    for i in range(0, m, 500):
        d2 = ((pts[i:i + 500, None, :] - arc[None]) ** 2).sum(2)
        lk = -d2 / (2 * NOISE ** 2) - math.log(2 * math.pi * NOISE ** 2)
        mx = lk.max(1, keepdims=True)
        lp.append(mx[:, 0] + np.log(np.exp(lk - mx).mean(1)))
    lp = np.concatenate(lp)
    return -float(lp.mean()), float(lp.std() / math.sqrt(m))


def tabular(n, seed):
    """6-D: independent coordinates (gamma(2), Student-t(5), a two-component
    Gaussian mixture, gamma(5), t(3), N(0,1)), standardised by their exact
    moments, rotated by a fixed orthogonal matrix; entropy in closed form
    (rotations keep it) plus the mixture's by quadrature"""
    rng = np.random.default_rng(seed)
    g2 = rng.gamma(2.0, 1.0, n)
    t5 = rng.standard_t(5, n)
    comp = rng.random(n) < 0.3
    mix = np.where(comp, -2 + 0.5 * rng.standard_normal(n), 1 + 0.7 * rng.standard_normal(n))
    g5 = rng.gamma(5.0, 1.0, n)
    t3 = rng.standard_t(3, n)
    nz = rng.standard_normal(n)
    cols = np.stack([(g2 - 2) / math.sqrt(2), t5 / math.sqrt(5 / 3), mix, (g5 - 5) / math.sqrt(5),
                     t3 / math.sqrt(3), nz], 1)
    q = np.linalg.qr(np.random.default_rng(7).standard_normal((6, 6)))[0]
    return cols @ q.T


def h_tabular():
    """entropy of tabular()'s density (the rotation is volume-preserving)"""
    from math import lgamma, log, pi

    def digamma(v):  # asymptotic series after shifting v up
        r = 0.0
        while v < 6:
            r -= 1 / v
            v += 1
        f = 1 / (v * v)
        return r + log(v) - 0.5 / v - f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f / 240)))

    def h_gamma(k, scale):  # gamma(k, 1) divided by scale
        return k + lgamma(k) + (1 - k) * digamma(k) - log(scale)

    def h_t(nu, scale):  # Student-t(nu) divided by scale
        return ((nu + 1) / 2 * (digamma((nu + 1) / 2) - digamma(nu / 2))
                + log(math.sqrt(nu) * math.exp(lgamma(nu / 2) + lgamma(0.5) - lgamma((nu + 1) / 2)))
                - log(scale))

    g = np.linspace(-8, 8, 200001)
    pm = (0.3 * np.exp(-0.5 * ((g + 2) / 0.5) ** 2) / (0.5 * math.sqrt(2 * pi))
          + 0.7 * np.exp(-0.5 * ((g - 1) / 0.7) ** 2) / (0.7 * math.sqrt(2 * pi)))
    h_mix = -float(np.sum(pm * np.log(np.maximum(pm, 1e-300))) * (g[1] - g[0]))
    return (h_gamma(2, math.sqrt(2)) + h_t(5, math.sqrt(5 / 3)) + h_mix + h_gamma(5, math.sqrt(5))
            + h_t(3, math.sqrt(3)) + 0.5 * log(2 * pi * math.e))


# the CNF settings that did best on two moons in 2 minutes (docs/cnf.md):
# looser tolerances, both regularisers, lr 2e-3
TUNED = {"preset": "ffjord", "rtol": 1e-4, "atol": 1e-4, "reg_kinetic": 0.01,
         "reg_jacobian": 0.01}


def write_csv(path, x):
    np.savetxt(path, x, delimiter=",", fmt="%.9g",
               header=",".join(f"x{i}" for i in range(x.shape[1])), comments="")


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "moons"
    budget = float(sys.argv[2]) if len(sys.argv) > 2 else 120
    if what == "moons":
        train, test = moons(40000, 1), moons(10000, 2)
        truth, truth_se = moons_entropy()
        configs = [
            ("ffjord", {"preset": "ffjord"}, None),
            ("ffjord_reg", {"preset": "ffjord", "reg_kinetic": 0.01, "reg_jacobian": 0.01}, None),
            ("nsf", {"preset": "nsf"}, None),
            ("realnvp", {"preset": "realnvp"}, None),
            ("ffjord_tuned", TUNED, {"lr": 2e-3}),
        ]
    elif what == "tabular":
        train, test = tabular(20000, 1), tabular(5000, 2)
        truth, truth_se = h_tabular(), 0.0
        configs = [
            ("ffjord_exact", dict(TUNED, trace="exact"), {"lr": 2e-3}),
            ("ffjord_hutch", dict(TUNED, trace="hutchinson"), {"lr": 2e-3}),
            ("nsf", {"preset": "nsf"}, None),
            ("maf", {"preset": "maf"}, None),
        ]
    else:
        sys.exit("usage: cnf_quality.py moons|tabular [SECONDS]")
    extra = os.environ.get("CNF_QUALITY_EXTRA")  # JSON [[name, flow, train overrides], ...]
    if extra:
        configs += [tuple(c) for c in json.loads(extra)]
    only = os.environ.get("CNF_QUALITY_ONLY")
    if only:
        configs = [c for c in configs if c[0] in only.split(",")]
    res = {"what": what, "budget_s": budget, "threads": int(THREADS), "rows_train": len(train),
           "rows_test": len(test), "dim": train.shape[1], "entropy": truth,
           "entropy_se": truth_se, "load_avg_start": list(os.getloadavg()), "runs": []}
    with tempfile.TemporaryDirectory() as d:
        tr, te = os.path.join(d, "train.csv"), os.path.join(d, "test.csv")
        write_csv(tr, train)
        write_csv(te, test)
        for name, flow, over in configs:
            curve, s = run_job(name, flow, tr, te, budget, over)
            s["curve"] = curve
            s["load_avg_end"] = list(os.getloadavg())
            res["runs"].append(s)
    k = kde(train, test)
    res["kde"] = k
    print(f"\n{what}: {len(train)} train / {len(test)} test rows, dim {train.shape[1]}, "
          f"{budget:g} s per flow on {THREADS} threads")
    print(f"{'model':14}{'test NLL':>10}{'steps':>8}{'final NFE fwd':>15}{'fwd+grad':>10}")
    for s in res["runs"]:
        last = s["curve"][-1] if s["curve"] else {}
        print(f"{s['name']:14}{s['test_nll']:10.4f}{s['steps']:8d}"
              f"{last.get('nfe_forward', float('nan')):15.1f}{last.get('nfe', float('nan')):10.1f}")
    print(f"{'kde':14}{k['test_nll']:10.4f}   (bandwidth {k['scott_factor']:g} x Scott's)")
    print(f"{'entropy':14}{truth:10.4f}   (the true density's; +- {truth_se:.4f})")
    os.makedirs(os.path.join(ROOT, "build/bench"), exist_ok=True)
    out = os.path.join(ROOT, f"build/bench/cnf_quality_{what}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
