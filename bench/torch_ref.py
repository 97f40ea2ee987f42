#!/usr/bin/python3
"""torch_ref.py: a PyTorch reference for bench_core.c's workloads.

The same three flows, written here in plain PyTorch (no flow library), with
the same architectures, batch sizes, float32, data and timing method as
bench/bench_core.c, so `make bench` can report flowd / torch ratios:

  W1  realnvp: 8 affine couplings (even/odd masks), MLP [128,128], 2-D moons,
      train batch 512; s = 3 tanh(h/3), z = x exp(s) + t (density direction)
  W2  maf: 5 MADE [1024] affine layers (ascending degrees, masked weights),
      reversed between layers, 784-D N(0,I), train batch 128
  W3  nsf: 5 rational-quadratic spline couplings (8 bins, tail bound 3,
      linear tails, resnet [256] x 2 blocks) with 4 lu_linear layers between
      them, 30-D N(0,I), train batch 512

Figures: training samples/s (zero_grad, -mean log_prob, backward,
clip_grad_norm_(10), Adam(lr 1e-4) step), log_prob rows/s at batch 1, 64,
256, 4096 under torch.inference_mode(), sampling rows/s (4096 rows per call;
W2 64 rows, 4 in quick mode: D sequential MADE passes per layer, as PyTorch
flow libraries sample a MAF), peak RSS (ru_maxrss, one workload per process),
GFLOP/s with bench_core.c's dense-layer count.  Timing: warm-up >= 0.1 s,
repeats >= 0.3 s, median of 5 (fewer where 5 would exceed ~4 s); "min" and
"max" hold the slowest and fastest repeat's rates, "repeats" every repeat's
rate in the order run (same keys as bench_core).

Usage (system python with Debian's python3-torch):
  /usr/bin/python3 bench/torch_ref.py W1|W2|W3   # one workload, JSON on stdout
  /usr/bin/python3 bench/torch_ref.py serve      # all three models, peak RSS
  /usr/bin/python3 bench/torch_ref.py check      # self-test (inverses, log-dets)
FLOWD_BENCH_QUICK=1 and FLOWD_BENCH_W2_SAMPLE_N as for bench_core.
Threads: 2 intra-op, 1 inter-op (TORCH_THREADS overrides the 2); OpenMP
OMP_WAIT_POLICY PASSIVE only beside a multi-threaded pthread OpenBLAS (see
below).  glibc's allocator is tuned to keep freed blocks (see below);
FLOWD_BENCH_TORCH_MALLOC=0 runs torch with glibc's defaults.
"""
import json
import math
import os
import resource
import sys
import time

# glibc's allocator: every torch op returns a new tensor, and a tensor above
# the mmap threshold (128 KiB at first) is mmap'd and unmapped each time, so
# every op of a large batch faults its output in page by page.  On this VM a
# page fault is expensive: W1 log_prob at 4096 rows ran at 32k rows/s, and
# 228k with the settings below (freed blocks stay in the heap), about what a
# flow library gets on a machine where faults are cheap.  glibc reads them
# at start-up, so the script re-executes itself once with them set.
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": "33554432",  # glibc's maximum
                 "MALLOC_TRIM_THRESHOLD_": "4294967296",
                 "MALLOC_TOP_PAD_": "268435456"}
if (os.environ.get("FLOWD_BENCH_TORCH_MALLOC", "1") != "0"
        and any(k not in os.environ for k in MALLOC_TUNING)):
    os.execve(sys.executable, [sys.executable] + sys.argv, {**MALLOC_TUNING, **os.environ})

NTHREADS = int(os.environ.get("TORCH_THREADS", "2"))
os.environ.setdefault("OMP_NUM_THREADS", str(NTHREADS))
os.environ.setdefault("MKL_NUM_THREADS", str(NTHREADS))
# OpenMP waits: torch's intra-op threads are OpenMP.  Beside a pthread
# OpenBLAS with more than one thread, two pools spin for the same cores, and
# passive waits are faster; with one BLAS thread, or with the OpenMP build
# of OpenBLAS (one pool for both), libgomp's default spinning is (W1 train
# 31k -> 48k samples/s at 2:1, 38k -> 55k with the OpenMP OpenBLAS).
OMP_BLAS = "openblas-openmp" in os.environ.get("LD_LIBRARY_PATH", "")
if int(os.environ.get("OPENBLAS_NUM_THREADS", "1")) > 1 and not OMP_BLAS:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(NTHREADS)
torch.set_num_interop_threads(1)
torch.set_default_dtype(torch.float32)

SCALE_BOUND = 3.0  # NF_SCALE_BOUND: s = b tanh(h / b)


def zero_last(lin):
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)


# ---- conditioner nets ---------------------------------------------------------
class MLP(nn.Module):
    """in -> hidden... -> out, ReLU; the last layer starts at zero (identity flow)."""

    def __init__(self, d_in, hidden, d_out):
        super().__init__()
        dims = [d_in] + list(hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], d_out)
        zero_last(self.out)

    def forward(self, x):
        for lin in self.hidden:
            x = F.relu(lin(x))
        return self.out(x)


class ResNet(nn.Module):
    """flowd's resnet: s0 = W0 x + b0; per block s' = s + W2 relu(W1 relu(s) + b1) + b2;
    out = Wf relu(s) + bf."""

    def __init__(self, d_in, H, nblocks, d_out):
        super().__init__()
        self.first = nn.Linear(d_in, H)
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Linear(H, H), nn.Linear(H, H)]) for _ in range(nblocks))
        self.out = nn.Linear(H, d_out)
        zero_last(self.out)

    def forward(self, x):
        s = self.first(x)
        for l1, l2 in self.blocks:
            s = s + l2(F.relu(l1(F.relu(s))))
        return self.out(F.relu(s))


class MADE(nn.Module):
    """Masked MLP with flowd's ascending degrees: input i has degree i+1, hidden
    unit k of a layer degree lo + k % (D - lo); output 2i+p (p = 0: scale
    pre-activation, 1: shift) sees inputs of lower degree than i's."""

    def __init__(self, D, hidden, P=2):
        super().__init__()
        self.D, self.P = D, P
        dims = [D] + list(hidden)
        self.lins = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], D * P)
        zero_last(self.out)
        deg_in = np.arange(1, D + 1)
        prev, lo = deg_in, min(int(deg_in.min()), D - 1)
        for i, lin in enumerate(self.lins):
            span = D - lo
            cur = lo + np.arange(lin.out_features) % span
            self.register_buffer(f"mask{i}", torch.tensor(
                (cur[:, None] >= prev[None, :]).astype(np.float32)))
            prev, lo = cur, int(cur.min())
        out_deg = np.repeat(deg_in, P)
        self.register_buffer("mask_out", torch.tensor(
            (out_deg[:, None] > prev[None, :]).astype(np.float32)))
        with torch.no_grad():
            for i, lin in enumerate(self.lins):
                lin.weight.mul_(getattr(self, f"mask{i}"))

    def masked_weights(self):
        ws = [(lin.weight * getattr(self, f"mask{i}"), lin.bias) for i, lin in enumerate(self.lins)]
        ws.append((self.out.weight * self.mask_out, self.out.bias))
        return ws

    @staticmethod
    def run(ws, x):
        for w, b in ws[:-1]:
            x = F.relu(F.linear(x, w, b))
        w, b = ws[-1]
        return F.linear(x, w, b)

    def forward(self, x):
        return self.run(self.masked_weights(), x)


# ---- layers: inverse() is the density direction x -> z, forward() sampling ----
def soft_clamp(h):
    return SCALE_BOUND * torch.tanh(h / SCALE_BOUND)


class AffineCoupling(nn.Module):
    def __init__(self, D, odd, hidden):
        super().__init__()
        mask = [(i % 2 == 0) != odd for i in range(D)]  # 1 = passes through
        ident = [i for i in range(D) if mask[i]]
        trans = [i for i in range(D) if not mask[i]]
        self.register_buffer("ident", torch.tensor(ident))
        self.register_buffer("trans", torch.tensor(trans))
        self.register_buffer("unperm", torch.tensor(np.argsort(ident + trans)))
        self.net = MLP(len(ident), hidden, 2 * len(trans))

    def _st(self, u):
        o = self.net(u[:, self.ident])
        return soft_clamp(o[:, 0::2]), o[:, 1::2]

    def inverse(self, x):
        s, t = self._st(x)
        zt = x[:, self.trans] * torch.exp(s) + t
        return torch.cat([x[:, self.ident], zt], 1)[:, self.unperm], s.sum(1)

    def forward(self, z):
        s, t = self._st(z)
        xt = (z[:, self.trans] - t) * torch.exp(-s)
        return torch.cat([z[:, self.ident], xt], 1)[:, self.unperm]


class MAF(nn.Module):
    def __init__(self, D, hidden):
        super().__init__()
        self.made = MADE(D, hidden, 2)

    def inverse(self, x):
        o = self.made(x)
        s = soft_clamp(o[:, 0::2])
        return x * torch.exp(s) + o[:, 1::2], s.sum(1)

    def forward(self, z):
        # D sequential passes: after pass k every dim of degree <= k is exact
        ws = self.made.masked_weights()
        x = torch.zeros_like(z)
        for _ in range(z.shape[1]):
            o = MADE.run(ws, x)
            x = (z - o[:, 1::2]) * torch.exp(-soft_clamp(o[:, 0::2]))
        return x


class Reverse(nn.Module):
    def inverse(self, x):
        return x.flip(1), None

    def forward(self, z):
        return z.flip(1)


def rq_spline(x, uw, uh, ud, B, inverse=False, mw=1e-3, mh=1e-3, md=1e-3):
    """Rational-quadratic spline on [-B,B] with K bins, identity (linear tails)
    outside; uw, uh (..., K), ud (..., K-1) unconstrained as flowd's spline.c.
    Returns (y, log|dy/dx|) for the direction taken."""
    K = uw.shape[-1]
    dconst = math.log(math.expm1(1.0 - md))
    inside = (x >= -B) & (x <= B)
    xc = x.clamp(-B, B)

    def knots(u, mn):
        sz = mn + (1 - K * mn) * torch.softmax(u, -1)
        k = F.pad(torch.cumsum(sz, -1), (1, 0)) * (2 * B) - B
        k = torch.cat([torch.full_like(k[..., :1], -B), k[..., 1:-1],
                       torch.full_like(k[..., :1], B)], -1)
        return k

    xs, ys = knots(uw, mw), knots(uh, mh)
    d = F.pad(md + F.softplus(ud + dconst), (1, 1), value=1.0)
    ref = ys if inverse else xs
    idx = (xc[..., None] >= ref[..., 1:K]).sum(-1, keepdim=True)
    xk, xk1 = xs.gather(-1, idx)[..., 0], xs.gather(-1, idx + 1)[..., 0]
    yk, yk1 = ys.gather(-1, idx)[..., 0], ys.gather(-1, idx + 1)[..., 0]
    d0, d1 = d.gather(-1, idx)[..., 0], d.gather(-1, idx + 1)[..., 0]
    w, h = xk1 - xk, yk1 - yk
    s = h / w
    if not inverse:
        xi = ((xc - xk) / w).clamp(0, 1)
    else:
        dy, delta = xc - yk, d0 + d1 - 2 * s
        a = h * (s - d0) + dy * delta
        b = h * d0 - dy * delta
        c = -s * dy
        disc = (b * b - 4 * a * c).clamp_min(0)
        xi = (2 * c / (-b - torch.sqrt(disc))).clamp(0, 1)
    t = xi * (1 - xi)
    den = s + (d0 + d1 - 2 * s) * t
    ld = 2 * torch.log(s) + torch.log(d1 * xi * xi + 2 * s * t + d0 * (1 - xi) ** 2) \
        - 2 * torch.log(den)
    if not inverse:
        y = yk + h * (s * xi * xi + d0 * t) / den
    else:
        y, ld = xk + xi * w, -ld
    return torch.where(inside, y, x), torch.where(inside, ld, torch.zeros_like(ld))


class SplineCoupling(nn.Module):
    def __init__(self, D, odd, H, nblocks, K, B):
        super().__init__()
        mask = [(i % 2 == 0) != odd for i in range(D)]
        ident = [i for i in range(D) if mask[i]]
        trans = [i for i in range(D) if not mask[i]]
        self.register_buffer("ident", torch.tensor(ident))
        self.register_buffer("trans", torch.tensor(trans))
        self.register_buffer("unperm", torch.tensor(np.argsort(ident + trans)))
        self.K, self.B, self.nt = K, B, len(trans)
        self.net = ResNet(len(ident), H, nblocks, len(trans) * (3 * K - 1))

    def _run(self, u, inverse):
        th = self.net(u[:, self.ident]).view(-1, self.nt, 3 * self.K - 1)
        K = self.K
        y, ld = rq_spline(u[:, self.trans], th[..., :K], th[..., K:2 * K], th[..., 2 * K:],
                          self.B, inverse)
        return torch.cat([u[:, self.ident], y], 1)[:, self.unperm], ld.sum(1)

    def inverse(self, x):
        return self._run(x, False)

    def forward(self, z):
        return self._run(z, True)[0]


class LULinear(nn.Module):
    """W = P L (U + diag exp(log_s)) P^T; z = x W^T + bias; logdet = sum log_s."""

    def __init__(self, D, seed):
        super().__init__()
        self.D = D
        self.lower = nn.Parameter(torch.zeros(D * (D - 1) // 2))
        self.upper = nn.Parameter(torch.zeros(D * (D - 1) // 2))
        self.log_s = nn.Parameter(torch.zeros(D))
        self.bias = nn.Parameter(torch.zeros(D))
        self.register_buffer("li", torch.tril_indices(D, D, -1))
        self.register_buffer("ui", torch.triu_indices(D, D, 1))
        p = np.random.default_rng(seed).permutation(D)
        self.register_buffer("p", torch.tensor(p))

    def _lu(self):
        D = self.D
        L = torch.eye(D).index_put((self.li[0], self.li[1]), self.lower)
        U = torch.diag(torch.exp(self.log_s)).index_put((self.ui[0], self.ui[1]), self.upper)
        return L, U

    def inverse(self, x):
        L, U = self._lu()
        W = (L @ U)[self.p][:, self.p]
        z = x @ W.t() + self.bias
        return z, self.log_s.sum().expand(x.shape[0])

    def forward(self, z):
        L, U = self._lu()
        a = torch.empty_like(z)
        a[:, self.p] = z - self.bias  # a = P^T u
        c = torch.linalg.solve_triangular(L, a.t(), upper=False, unitriangular=True)
        e = torch.linalg.solve_triangular(U, c, upper=True)
        return e.t()[:, self.p]


class Flow(nn.Module):
    def __init__(self, layers, D):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.D = D

    def log_prob(self, x):
        z, total = x, torch.zeros(x.shape[0])
        for layer in self.layers:
            z, ld = layer.inverse(z)
            if ld is not None:
                total = total + ld
        return total - 0.5 * (z * z).sum(1) - 0.5 * self.D * math.log(2 * math.pi)

    def sample(self, n, gen=None):
        x = torch.randn(n, self.D, generator=gen)
        for layer in reversed(self.layers):
            x = layer.forward(x)
        return x


# ---- workloads -------------------------------------------------------------------
def build(key):
    torch.manual_seed(1)
    if key == "W1":
        return Flow([AffineCoupling(2, k % 2 == 1, [128, 128]) for k in range(8)], 2)
    if key == "W2":
        layers = []
        for k in range(5):
            layers.append(MAF(784, [1024]))
            if k < 4:
                layers.append(Reverse())
        return Flow(layers, 784)
    if key == "W3":
        layers = []
        for k in range(5):
            layers.append(SplineCoupling(30, k % 2 == 1, 256, 2, 8, 3.0))
            if k < 4:
                layers.append(LULinear(30, 1 + k))
        return Flow(layers, 30)
    raise ValueError(key)


WL = {"W1": dict(D=2, train_batch=512), "W2": dict(D=784, train_batch=128),
      "W3": dict(D=30, train_batch=512)}


def dense_mac(flow):
    """sum of in*out over the dense layers (bench_core.c's count)."""
    mac = 0
    for m in flow.modules():
        if isinstance(m, nn.Linear):
            mac += m.in_features * m.out_features
        elif isinstance(m, LULinear):
            mac += m.D * m.D
    return mac


def gen_data(key, n, seed=1234):
    rng = np.random.default_rng(seed)
    if key == "W1":  # two moons, noise 0.05 (as bench_core's gen_moons)
        t = math.pi * rng.random(n)
        lower = rng.random(n) < 0.5
        a = np.where(lower, 1 - np.cos(t), np.cos(t))
        b = np.where(lower, 0.5 - np.sin(t), np.sin(t))
        x = np.stack([a, b], 1) + 0.05 * rng.standard_normal((n, 2))
    else:
        x = rng.standard_normal((n, WL[key]["D"]))
    return torch.tensor(x, dtype=torch.float32)


# ---- timing (bench_core.c's time_op) ----------------------------------------------
QUICK = os.environ.get("FLOWD_BENCH_QUICK", "0") not in ("", "0")
if QUICK:
    MIN_S, WARM_S, NREP, MAX_S = 0.05, 0.02, 3, 0.6
else:
    MIN_S, WARM_S, NREP, MAX_S = 0.3, 0.1, 5, 4.0
spread = 0.0


class Timing:
    """seconds per call: reps (each repeat, in the order run), med, min, max"""

    def __init__(self, reps):
        s = sorted(reps)
        n = len(s)
        self.reps = list(reps)
        self.med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        self.min, self.max = s[0], s[-1]

    def rate(self, work):
        """work / seconds: {"med", "min" (slowest repeat), "max" (fastest), "reps"}"""
        return {"med": work / self.med, "min": work / self.max, "max": work / self.min,
                "reps": [work / t for t in self.reps]}


def time_op(fn):
    """seconds per call of fn() over the repeats (a Timing)"""
    global spread
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        t = time.perf_counter() - t0
        if t >= WARM_S:
            break
    per = t / calls
    iters = 1 if per >= MIN_S else int(math.ceil(MIN_S / per))
    nrep = NREP
    while nrep > 1 and per * iters * nrep > MAX_S:
        nrep -= 1
    reps = []
    for _ in range(nrep):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        reps.append((time.perf_counter() - t0) / iters)
    tm = Timing(reps)
    spread = max(spread, (tm.max - tm.min) / tm.med)
    return tm


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run(key):
    D, B = WL[key]["D"], WL[key]["train_batch"]
    flow = build(key)
    mac = dense_mac(flow)
    nparams = sum(p.numel() for p in flow.parameters())
    pool = gen_data(key, 4096)
    res = {}
    rates = {}  # figure -> Timing.rate(), for "min", "max", "repeats"

    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    params = list(flow.parameters())
    state = {"next": 0}

    def train_step():
        if state["next"] + B > pool.shape[0]:
            state["next"] = 0
        x = pool[state["next"]:state["next"] + B]
        state["next"] += B
        opt.zero_grad()
        loss = -flow.log_prob(x).mean()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 10.0)
        if not torch.isfinite(norm):
            raise RuntimeError("non-finite gradient")
        opt.step()

    t = time_op(train_step)
    rates["train_samples_per_s"] = t.rate(B)
    rates["gflops"] = t.rate(3 * 2 * B * mac / 1e9)
    res["train_samples_per_s"] = rates["train_samples_per_s"]["med"]
    res["gflops"] = rates["gflops"]["med"]
    del opt

    lp, lp_rates = {}, {}
    with torch.inference_mode():
        for b in (1, 64, 256, 4096):
            x = pool[:b]

            def call():
                out = flow.log_prob(x)
                if not torch.isfinite(out).all():
                    raise RuntimeError("non-finite log_prob")

            t = time_op(call)
            lp_rates[str(b)] = t.rate(b)
            lp[str(b)] = lp_rates[str(b)]["med"]
            if b == 4096:
                res["gflops_log_prob_4096"] = 2 * b * mac / t.med / 1e9
    res["log_prob_rows_per_s"] = lp

    n = 4096
    if key == "W2":
        n = int(os.environ.get("FLOWD_BENCH_W2_SAMPLE_N", "0") or 0) or (4 if QUICK else 64)
    gen = torch.Generator().manual_seed(99)
    with torch.inference_mode():
        t = time_op(lambda: flow.sample(n, gen))
    rates["sample_rows_per_s"] = t.rate(n)
    res["sample_rows_per_s"] = rates["sample_rows_per_s"]["med"]
    res["sample_batch"] = n
    res["param_bytes"] = 4 * nparams
    res["peak_rss_bytes"] = peak_rss_bytes()
    res["max_repeat_spread"] = spread
    for out, part in (("min", "min"), ("max", "max"), ("repeats", "reps")):
        res[out] = {
            "train_samples_per_s": rates["train_samples_per_s"][part],
            "log_prob_rows_per_s": {b: r[part] for b, r in lp_rates.items()},
            "sample_rows_per_s": rates["sample_rows_per_s"][part],
            "gflops": rates["gflops"][part]}
    return {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
            "blas_libs": blas_libs(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "malloc_tuned": "MALLOC_MMAP_THRESHOLD_" in os.environ,
            "dense_flops_per_row_fwd": 2 * mac, key: {"torch": res}}


def blas_libs():
    """the BLAS shared objects this process mapped (which OpenBLAS build ran)"""
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1]
            if "blas" in os.path.basename(p):
                libs.add(p)
    return sorted(libs)


def serve():
    """all three models in one process, each scoring 256 rows"""
    flows = {k: build(k) for k in WL}
    with torch.inference_mode():
        for k, f in flows.items():
            f.log_prob(gen_data(k, 256, 5))
    return {"serve_peak_rss_bytes": peak_rss_bytes()}


def check():
    """round trips and log-dets against autograd Jacobians on perturbed flows"""
    torch.set_default_dtype(torch.float64)
    ok = True
    # W3's perturbation is small: large random resnet outputs make bins of
    # width ~min_bin_width, whose inverse is ill-conditioned
    for key, D, eps in (("W1", 2, 0.3), ("W3", 30, 0.01), ("Wmaf", 6, 0.3)):
        if key == "Wmaf":
            flow = Flow([MAF(6, [32]), Reverse(), MAF(6, [32])], 6)
        else:
            flow = build(key)
        flow.double()
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(eps * torch.randn_like(p))
        x = 1.5 * torch.randn(5, D, dtype=torch.float64)
        with torch.no_grad():
            z = x
            for layer in flow.layers:
                z, _ = layer.inverse(z)
            xr = z
            for layer in reversed(flow.layers):
                xr = layer.forward(xr)
        err = (xr - x).abs().max().item()
        ld = []
        for i in range(x.shape[0]):
            def fz(v):
                zz = v[None]
                for layer in flow.layers:
                    zz, _ = layer.inverse(zz)
                return zz[0]
            J = torch.autograd.functional.jacobian(fz, x[i])
            ld.append(torch.linalg.slogdet(J)[1])
        with torch.no_grad():
            lp = flow.log_prob(x)
            zz = x
            for layer in flow.layers:
                zz, _ = layer.inverse(zz)
            ref = torch.stack(ld) - 0.5 * (zz * zz).sum(1) - 0.5 * D * math.log(2 * math.pi)
        lerr = (lp - ref).abs().max().item()
        good = err < 1e-6 and lerr < 1e-6
        ok &= good
        print(f"{key}: round trip {err:.2e}, log_prob vs Jacobian {lerr:.2e} "
              f"{'ok' if good else 'FAIL'}")
    torch.set_default_dtype(torch.float32)
    for key in WL:
        print(key, "dense flops/row fwd", 2 * dense_mac(build(key)))
    return ok


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what in WL:
        print(json.dumps(run(what)))
    elif what == "serve":
        print(json.dumps(serve()))
    elif what == "check":
        sys.exit(0 if check() else 1)
    else:
        sys.exit(__doc__)
