#!/usr/bin/python3
"""torch_cnf.py: the PyTorch peer of bench_core.c's W5, an FFJORD CNF.

W5 is flowd's `ffjord` preset on 2-D two moons (noise 0.05, as W1), written
here in plain PyTorch 1.13 the way FFJORD's reference code does it
(torchdiffeq and FFJORD cannot be installed here, so the solver is written
out below, following torchdiffeq's dopri5):

  dynamics   concat-squash layers (W h + b) * sigmoid(a t + c) + d t,
             2 -> 64 -> 64 -> 64 -> 2, tanh between them
  density    z(0) = x, integrate [z, l] to t = 1 with dl/dt = tr(df/dz);
             log p(x) = log N(z(1); 0, I) + l(1)
  trace      exact, FFJORD's `divergence_bf`: one autograd.grad per dimension
             (create_graph=True when training, so the loss differentiates it)
  solver     Dormand-Prince 5(4) at rtol = atol = 1e-5 with torchdiffeq's
             controller: one step size for the whole batch, error norm the
             max over [z, l] of the RMS over the batch of e / (atol + rtol
             max(|y0|, |y1|)), factor clamp(0.9 err^(-1/5), 0.2, 10) (at most 1
             after a rejection), Hairer's first step, FSAL; step sizes are
             plain numbers (not differentiated), the last step ends at t = 1
  gradients  backpropagation through the solver's operations (torchdiffeq's
             `odeint`, not the adjoint), as flowd's "gradient": "backprop"
  sampling   z ~ N(0, I), integrate z alone from t = 1 to 0 (no trace)

Parameters: both sides start from the same non-trivial values, a function of
the parameter's index (bench_core.c's w5_init, repeated in w5_init below), so
they integrate the same ODE; "check_log_prob" scores four fixed points at
those parameters on each side, and compare.py checks they agree.

The only difference in the solver is deliberate and documented: flowd
controls the step size per row (a row's log p does not depend on the other
rows of a request), PyTorch solvers per batch.  Both report the dynamics
evaluations (NFE) per row and solve, so a ratio can be read per evaluation.

Figures (timed as torch_ref.py times W1-W3, whose timing loop, thread and
allocator settings are imported): training samples/s at batch 256 (zero_grad,
-log_prob.mean(), backward, Adam(lr 1e-4) step), log_prob rows/s at 256 and
64, 256 and 4096 rows, and one (no_grad around the solve; the trace's autograd calls enable
gradients inside, as FFJORD does), sampling rows/s for 4096 samples.

Usage (Debian's python3-torch):
  /usr/bin/python3 bench/torch_cnf.py W5      # JSON on stdout (as torch_ref.py W1)
  /usr/bin/python3 bench/torch_cnf.py check   # self-test (float64)
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
import torch_ref as ref  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

LN2PI = math.log(2 * math.pi)
D, HIDDEN = 2, (64, 64, 64)
TRAIN_B, LP_B, SAMPLE_N, LR = 256, ("1", "64", "256", "4096"), 4096, 1e-4
RTOL = ATOL = 1e-5
MAX_STEPS = 1000
W5_SEED = 5
CHECK_X = [[0.5, 0.25], [-0.5, 0.5], [1.5, -0.2], [0.0, 0.0]]

# ---- Dormand-Prince 5(4) -----------------------------------------------------------
DP_C = [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1]
DP_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
        [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
DP_B = [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0]
DP_E = [35 / 384 - 5179 / 57600, 0, 500 / 1113 - 7571 / 16695, 125 / 192 - 393 / 640,
        -2187 / 6784 + 92097 / 339200, 11 / 84 - 187 / 2100, -1 / 40]


def splitmix_unit(seed, n):
    """u_i, i < n: the top 53 bits of splitmix64 at seed + (i + 1) golden"""
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


class ConcatSquash(nn.Module):
    """(W h + b) * sigmoid(a t + c) + d t (FFJORD's ConcatSquashLinear)"""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(n_out, n_in))
        self.b = nn.Parameter(torch.zeros(n_out))
        self.a = nn.Parameter(torch.zeros(n_out))
        self.c = nn.Parameter(torch.zeros(n_out))
        self.d = nn.Parameter(torch.zeros(n_out))

    def forward(self, t, h):
        return torch.addmm(self.b, h, self.W.t()) * torch.sigmoid(self.a * t + self.c) + self.d * t


class Dynamics(nn.Module):
    def __init__(self):
        super().__init__()
        dims = (D,) + HIDDEN + (D,)
        self.layers = nn.ModuleList(ConcatSquash(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, t, z):
        h = z
        for k, l in enumerate(self.layers):
            h = l(t, h)
            if k < len(self.layers) - 1:
                h = torch.tanh(h)
        return h


def w5_init(net):
    """bench_core.c's w5_init: parameter i = bound (2 u_i - 1) in flowd's order"""
    n = sum(p.numel() for p in net.parameters())
    u = splitmix_unit(W5_SEED, n)
    i = 0
    with torch.no_grad():
        for l in net.layers:
            bw = 1 / math.sqrt(l.W.shape[1])
            for p, bound in ((l.W, bw), (l.b, bw), (l.a, 1.0), (l.c, 1.0), (l.d, 1.0)):
                k = p.numel()
                p.copy_(torch.tensor(bound * (2 * u[i:i + k] - 1)).reshape(p.shape))
                i += k
    assert i == n


class Counter:
    def __init__(self):
        self.nfe = 0
        self.solves = 0


def rms_norm(e, y0, y1):
    sc = ATOL + RTOL * torch.maximum(y0.abs(), y1.abs())
    return (e / sc).pow(2).mean().sqrt().item()


def mixed(parts):
    return max(rms_norm(*p) for p in parts)


def dopri5(func, ys, t0, t1, cnt):
    """Integrate the tuple state ys (tensors) from t0 to t1; func(t, ys) ->
    tuple of derivatives.  Returns the state at t1."""
    cnt.solves += 1
    sgn = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    f0 = func(t0, ys)
    cnt.nfe += 1
    with torch.no_grad():  # Hairer's first step (torchdiffeq's _select_initial_step)
        sc = [ATOL + RTOL * y.abs() for y in ys]
        d0 = max((y / s).pow(2).mean().sqrt().item() for y, s in zip(ys, sc))
        d1 = max((f / s).pow(2).mean().sqrt().item() for f, s in zip(f0, sc))
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        y1 = tuple(y + sgn * h0 * f for y, f in zip(ys, f0))
    f1 = func(t0 + sgn * h0, tuple(y.detach() for y in y1))
    cnt.nfe += 1
    with torch.no_grad():
        d2 = max(((b - a) / s).pow(2).mean().sqrt().item()
                 for a, b, s in zip(f0, f1, sc)) / h0
        m = max(d1, d2)
        h1 = max(1e-6, h0 * 1e-3) if m <= 1e-15 else (0.01 / m) ** 0.2
        h = min(100 * h0, h1)
    t, k1, steps = t0, f0, 0
    while abs(t1 - t) > 1e-12 * span:
        steps += 1
        if steps > MAX_STEPS:
            raise RuntimeError("dopri5: more than %d steps" % MAX_STEPS)
        hs = sgn * min(h, abs(t1 - t))
        ks = [k1]
        for i in range(1, 7):
            yi = tuple(y + hs * sum(DP_A[i][j] * ks[j][q] for j in range(i) if DP_A[i][j])
                       for q, y in enumerate(ys))
            ks.append(func(t + DP_C[i] * hs, yi))
            cnt.nfe += 1
        y5 = yi  # stage 7 is evaluated at the 5th-order solution (FSAL)
        with torch.no_grad():
            err = mixed([(hs * sum(DP_E[j] * ks[j][q] for j in range(7) if DP_E[j]), y.detach(),
                          y5[q].detach()) for q, y in enumerate(ys)])
        accept = err <= 1
        if accept:
            ys, k1, t = y5, ks[6], t + hs
        f = 10.0 if err == 0 else min(10.0, max(0.2, 0.9 * err ** -0.2))
        if not accept:
            f = min(f, 1.0)
        h = abs(hs) * f
    return ys


class CNF(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = Dynamics()
        self.cnt = Counter()

    def _aug(self, create_graph):
        def func(t, ys):
            z = ys[0]
            with torch.enable_grad():
                if not z.requires_grad:
                    z = z.detach().requires_grad_(True)
                f = self.net(t, z)
                div = 0.0
                for i in range(D):  # FFJORD's divergence_bf
                    div = div + torch.autograd.grad(f[:, i].sum(), z, create_graph=create_graph,
                                                    retain_graph=True)[0][:, i]
            if not create_graph:
                f, div = f.detach(), div.detach()
            return f, div
        return func

    def log_prob(self, x):
        train = torch.is_grad_enabled()
        l0 = torch.zeros(x.shape[0], dtype=x.dtype)
        z, l = dopri5(self._aug(train), (x, l0), 0.0, 1.0, self.cnt)
        return -0.5 * (z * z).sum(1) - 0.5 * D * LN2PI + l

    def sample(self, n, temperature=1.0, gen=None):
        z = temperature * torch.randn(n, D, generator=gen)
        (x,) = dopri5(lambda t, ys: (self.net(t, ys[0]),), (z,), 1.0, 0.0, self.cnt)
        return x


def build():
    flow = CNF()
    w5_init(flow.net)
    return flow


def run():
    flow = build()
    nparams = sum(p.numel() for p in flow.parameters())
    pool = ref.gen_data("W1", 4096)
    res, rates = {}, {}
    with torch.no_grad():
        check = flow.log_prob(torch.tensor(CHECK_X)).tolist()

    opt = torch.optim.Adam(flow.parameters(), lr=LR)
    state = {"next": 0}

    def train_step():
        if state["next"] + TRAIN_B > pool.shape[0]:
            state["next"] = 0
        x = pool[state["next"]:state["next"] + TRAIN_B]
        state["next"] += TRAIN_B
        opt.zero_grad(set_to_none=True)
        loss = -flow.log_prob(x).mean()
        loss.backward()
        if not torch.isfinite(loss):
            raise RuntimeError("non-finite loss")
        opt.step()

    nfe = {}
    flow.cnt = Counter()
    t = ref.time_op(train_step)
    nfe["train_forward"] = flow.cnt.nfe / flow.cnt.solves
    rates["train_samples_per_s"] = t.rate(TRAIN_B)
    res["train_samples_per_s"] = rates["train_samples_per_s"]["med"]
    del opt

    lp_rates = {}
    with torch.no_grad():
        for b in LP_B:
            x = pool[:int(b)]

            def call():
                out = flow.log_prob(x)
                if not torch.isfinite(out).all():
                    raise RuntimeError("non-finite log_prob")

            flow.cnt = Counter()
            t = ref.time_op(call)
            nfe["log_prob_" + b] = flow.cnt.nfe / flow.cnt.solves
            lp_rates[b] = t.rate(int(b))
    res["log_prob_rows_per_s"] = {b: r["med"] for b, r in lp_rates.items()}

    gen = torch.Generator().manual_seed(99)
    flow.cnt = Counter()
    with torch.no_grad():
        t = ref.time_op(lambda: flow.sample(SAMPLE_N, 1.0, gen))
    nfe["sample"] = flow.cnt.nfe / flow.cnt.solves
    rates["sample_rows_per_s"] = t.rate(SAMPLE_N)
    res["sample_rows_per_s"] = rates["sample_rows_per_s"]["med"]
    res["sample_batch"] = SAMPLE_N
    res["nfe"] = nfe
    res["check_log_prob"] = check
    res["param_bytes"] = 4 * nparams
    res["peak_rss_bytes"] = ref.peak_rss_bytes()
    res["max_repeat_spread"] = ref.spread
    for out, part in (("min", "min"), ("max", "max"), ("repeats", "reps")):
        res[out] = {
            "train_samples_per_s": rates["train_samples_per_s"][part],
            "log_prob_rows_per_s": {b: r[part] for b, r in lp_rates.items()},
            "sample_rows_per_s": rates["sample_rows_per_s"][part]}
    return {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
            "blas_libs": ref.blas_libs(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "malloc_tuned": "MALLOC_MMAP_THRESHOLD_" in os.environ,
            # per dynamics evaluation and row, the value pass (as bench_core)
            "dense_flops_per_row_fwd": 2 * sum(l.W.numel() for l in flow.net.layers),
            "W5": {"torch": res}}


# ---- self-test ------------------------------------------------------------------------
def check():
    ok = True

    def report(name, err, tol):
        nonlocal ok
        good = err < tol
        ok &= good
        print(f"{name}: {err:.2e} {'ok' if good else 'FAIL'} (tolerance {tol:g})")

    global RTOL, ATOL
    torch.set_default_dtype(torch.float64)
    flow = build().double()
    # splitmix64 against its published first output for seed 0 (Vigna)
    u0 = splitmix_unit(0, 1)[0]
    report("splitmix64(0) first output", abs(u0 - (0xE220A8397B1DCDAF >> 11) * 2.0 ** -53), 1e-18)
    # the divergence against a finite-difference Jacobian trace
    z = torch.tensor(CHECK_X, dtype=torch.float64)
    f, div = flow._aug(False)(0.3, (z, None))
    eps, fd = 1e-6, torch.zeros(z.shape[0], dtype=torch.float64)
    for i in range(D):
        e = torch.zeros_like(z)
        e[:, i] = eps
        fd += (flow.net(0.3, z + e)[:, i] - flow.net(0.3, z - e)[:, i]) / (2 * eps)
    report("divergence vs finite differences", (div - fd).abs().max().item(), 1e-7)
    # tight tolerances: decode(encode(x)) = x, and log p against a fine RK4
    RTOL = ATOL = 1e-10
    cnt = Counter()
    x = z.clone()
    with torch.no_grad():
        zz, l = dopri5(flow._aug(False), (x, torch.zeros(4)), 0.0, 1.0, cnt)
        (xb,) = dopri5(lambda t, ys: (flow.net(t, ys[0]),), (zz,), 1.0, 0.0, cnt)
    report("decode(encode(x)) - x at 1e-10", (xb - x).abs().max().item(), 1e-7)
    y, ll, n = x.clone(), torch.zeros(4), 2000
    func = flow._aug(False)
    for k in range(n):
        t, h = k / n, 1.0 / n
        k1 = func(t, (y, ll))
        k2 = func(t + h / 2, (y + h / 2 * k1[0], None))
        k3 = func(t + h / 2, (y + h / 2 * k2[0], None))
        k4 = func(t + h, (y + h * k3[0], None))
        y = y + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        ll = ll + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    report("dopri5 z(1) vs RK4 with 2000 steps", (y - zz).abs().max().item(), 1e-8)
    report("dopri5 l(1) vs RK4 with 2000 steps", (ll - l).abs().max().item(), 1e-8)
    # the density integrates to 1 over a grid (moderate tolerance, coarse grid)
    RTOL = ATOL = 1e-6
    g = torch.linspace(-6, 6, 121)
    gx = torch.cartesian_prod(g, g)
    with torch.no_grad():
        mass = flow.log_prob(gx).exp().sum().item() * (g[1] - g[0]).item() ** 2
    report("integral of p over [-6, 6]^2 - 1", abs(mass - 1), 2e-3)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return ok


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "W5"
    if what == "check":
        sys.exit(0 if check() else 1)
    if what != "W5":
        sys.exit("usage: torch_cnf.py W5|check")
    print(json.dumps(run()))
