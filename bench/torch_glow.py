#!/usr/bin/python3
"""torch_glow.py: the PyTorch peer of bench_core.c's W4, an image Glow.

W4 is flowd's image Glow on 1x28x28 images (rows flat C-H-W), float32,
written here in plain PyTorch 1.13 (F.conv2d; no flow library):

  preprocessing  y = x/256 - 0.5 on dequantized pixels x + u (x in 0..255,
                 u ~ U[0,1)); log-det -784 ln 256
  level 0        squeeze 1x28x28 -> 4x14x14 (out channel c*4 + di*2 + dj holds
                 x[c][2i+di][2j+dj]); K = 8 steps; split: keep channels 0-1 (z1),
                 channels 2-3 (z2) leave with density N(mu, exp(logs)^2),
                 [mu, logs] = conv3x3(z1) + bias, zero-initialised
  level 1        squeeze 2x14x14 -> 8x7x7; K = 8 steps; base N(0, I)
  step           channel actnorm z = (x - b) exp(-logs) (data-dependent init:
                 b = mean, logs = log(std + 1e-6) per channel on the first
                 batch); invertible 1x1 conv W = P L (U + diag(sign exp(log_s)))
                 (Glow's LU form, initialised from a random rotation), log-det
                 H W sum log_s; affine coupling: x_a = first floor(C/2) channels,
                 h = conv3x3(C_a -> 64) relu conv1x1(64 -> 64) relu
                 conv3x3(64 -> 2 C_b) (biases; last conv zero), t = h[:C_b],
                 s = sigmoid(h[C_b:] + 2), z_b = (x_b + t) s, log-det sum log s
  training       Adam(lr 1e-3), batch 64, loss mean NLL (no clipping)

Convolutions are 'same' zero-padded, stride 1.  Non-zero conv weights take
PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), biases zero (as
core/conv.h).  Bits/dim = NLL / (784 ln 2), pixel units (the preprocessing
log-det included).

Figures (timed as torch_ref.py times W1-W3; its timing loop, thread and
allocator settings are imported from it): training samples/s at batch 64
(zero_grad, -log_prob.mean(), backward, Adam step), log_prob rows/s at 256
rows (inference_mode), sampling rows/s for 256 samples at T = 1, peak RSS,
conv GFLOP/s: 2 x the convolution multiply-adds per row (every conv: the
coupling nets, the split prior, the 1x1 invconvs; 'same' padding counted as
multiplied), x3 for training.  The data are 4096 uniformly dequantized
random images (integer pixels 0..255 + U[0,1)).

Usage (Debian's python3-torch):
  /usr/bin/python3 bench/torch_glow.py W4      # JSON on stdout (as torch_ref.py W1)
  /usr/bin/python3 bench/torch_glow.py check   # self-test (float64)
  /usr/bin/python3 bench/torch_glow.py flops   # conv multiply-adds and parameters
FLOWD_BENCH_QUICK=1, TORCH_THREADS, OPENBLAS_NUM_THREADS, FLOWD_BENCH_TORCH_MALLOC
as for torch_ref.py.  The convolutions run in oneDNN (torch.backends.mkldnn),
on torch's intra-op threads; OpenBLAS only sees the 8x8 LU products.
FLOWD_BENCH_TORCH_CL=1 runs the convolutions in channels_last layout (not the
default: slower here, see bench/README.md).
"""
import json
import math
import os
import sys

# torch_ref sets the thread counts, OMP_WAIT_POLICY and glibc's allocator
# (re-executing this script once) before torch is imported
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no bench/__pycache__ in the tree
import torch_ref as ref  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LN2PI = math.log(2 * math.pi)
CHANNELS_LAST = os.environ.get("FLOWD_BENCH_TORCH_CL", "0") not in ("", "0")


# ---- layers: inverse(h, lat) is the density direction x -> z and returns
# (h, log-det: a number, a 0-d tensor or one per row); forward(h, lat) the
# sampling direction.  A split appends its latent to lat (inverse) or pops it
# (forward).  Tensors are (B, C, H, W).
class Preprocess(nn.Module):
    """y = x / 256 - 0.5 (fixed)"""

    def __init__(self, shape):
        super().__init__()
        self.ld = -shape[0] * shape[1] * shape[2] * math.log(256.0)

    def inverse(self, x, lat):
        return x * (1.0 / 256) - 0.5, self.ld

    def forward(self, y, lat):
        return (y + 0.5) * 256.0


def squeeze(x):
    B, C, H, W = x.shape
    return (x.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4)
            .reshape(B, C * 4, H // 2, W // 2))


def unsqueeze(x):
    B, C, H, W = x.shape
    return (x.reshape(B, C // 4, 2, 2, H, W).permute(0, 1, 4, 2, 5, 3)
            .reshape(B, C // 4, H * 2, W * 2))


class Squeeze(nn.Module):
    def inverse(self, x, lat):
        return squeeze(x), 0.0

    def forward(self, z, lat):
        return unsqueeze(z)


class ActNorm(nn.Module):
    """per channel z = (x - b) exp(-logs); log-det -H W sum logs"""

    def __init__(self, C, HW):
        super().__init__()
        self.HW = HW
        self.logs = nn.Parameter(torch.zeros(1, C, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, C, 1, 1))
        self.register_buffer("initialized", torch.tensor(0))
        self.init_pending = False

    def inverse(self, x, lat):
        if self.init_pending and not self.initialized:
            with torch.no_grad():
                m = x.mean((0, 2, 3), keepdim=True)
                sd = ((x - m) ** 2).mean((0, 2, 3), keepdim=True).sqrt()
                self.bias.copy_(m)
                self.logs.copy_(torch.log(sd + 1e-6))
                self.initialized.fill_(1)
        return (x - self.bias) * torch.exp(-self.logs), -self.HW * self.logs.sum()

    def forward(self, z, lat):
        return z * torch.exp(self.logs) + self.bias


class InvConv(nn.Module):
    """1x1 conv, W = P L (U + diag(sign exp(log_s))); log-det H W sum log_s"""

    def __init__(self, C, HW, seed):
        super().__init__()
        self.C, self.HW = C, HW
        g = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(torch.randn(C, C, generator=g, dtype=torch.float64))[0]
        P, L, U = torch.linalg.lu(q)
        d = torch.diagonal(U)
        li, ui = torch.tril_indices(C, C, -1), torch.triu_indices(C, C, 1)
        dt = torch.get_default_dtype()
        self.register_buffer("P", P.to(dt))
        self.register_buffer("sign", torch.sign(d).to(dt))
        self.register_buffer("li", li)
        self.register_buffer("ui", ui)
        self.lower = nn.Parameter(L[li[0], li[1]].to(dt))
        self.upper = nn.Parameter(U[ui[0], ui[1]].to(dt))
        self.log_s = nn.Parameter(torch.log(d.abs()).to(dt))

    def weight(self):
        C = self.C
        L = torch.eye(C, dtype=self.lower.dtype).index_put((self.li[0], self.li[1]), self.lower)
        U = torch.diag(self.sign * torch.exp(self.log_s)).index_put(
            (self.ui[0], self.ui[1]), self.upper)
        return self.P @ (L @ U)

    def inverse(self, x, lat):
        w = self.weight()
        return F.conv2d(x, w.view(self.C, self.C, 1, 1)), self.HW * self.log_s.sum()

    def forward(self, z, lat):
        w = torch.linalg.inv(self.weight())
        return F.conv2d(z, w.view(self.C, self.C, 1, 1))


def zero_conv(conv):
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)


def default_conv(conv):
    """PyTorch's default weights (U(-1/sqrt(fan_in), 1/sqrt(fan_in))), zero bias"""
    nn.init.zeros_(conv.bias)


class Coupling(nn.Module):
    """Glow's affine coupling, scale sigmoid(h + 2)"""

    def __init__(self, C, HW, hidden):
        super().__init__()
        self.ca, self.cb = C // 2, C - C // 2
        self.c1 = nn.Conv2d(self.ca, hidden, 3, padding=1)
        self.c2 = nn.Conv2d(hidden, hidden, 1)
        self.c3 = nn.Conv2d(hidden, 2 * self.cb, 3, padding=1)
        default_conv(self.c1)
        default_conv(self.c2)
        zero_conv(self.c3)

    def _ts(self, xa):
        # in-place ReLUs: a conv's backward needs its input, not its output
        h = self.c3(F.relu(self.c2(F.relu(self.c1(xa), inplace=True)), inplace=True))
        return h[:, :self.cb], h[:, self.cb:] + 2.0

    def inverse(self, x, lat):
        xa, xb = x[:, :self.ca], x[:, self.ca:]
        t, hs = self._ts(xa)
        zb = (xb + t) * torch.sigmoid(hs)
        return torch.cat([xa, zb], 1), F.logsigmoid(hs).sum((1, 2, 3))

    def forward(self, z, lat):
        xa, zb = z[:, :self.ca], z[:, self.ca:]
        t, hs = self._ts(xa)
        return torch.cat([xa, zb / torch.sigmoid(hs) - t], 1)


class Split(nn.Module):
    """keep the first C/2 channels z1; z2 leaves standardized,
    eps = (z2 - mu) exp(-logs), [mu, logs] = conv3x3(z1) (zero-initialised):
    log-det -sum logs, eps joins the base N(0, I)"""

    def __init__(self, C):
        super().__init__()
        self.c1 = C // 2
        self.c2 = C - self.c1
        self.prior = nn.Conv2d(self.c1, 2 * self.c2, 3, padding=1)
        zero_conv(self.prior)

    def inverse(self, x, lat):
        z1, z2 = x[:, :self.c1], x[:, self.c1:]
        h = self.prior(z1)
        logs = h[:, self.c2:]
        lat.append((z2 - h[:, :self.c2]) * torch.exp(-logs))
        return z1, -logs.sum((1, 2, 3))

    def forward(self, z1, lat):
        h = self.prior(z1)
        z2 = h[:, :self.c2] + torch.exp(h[:, self.c2:]) * lat.pop()
        return torch.cat([z1, z2], 1)


class Glow(nn.Module):
    def __init__(self, shape=(1, 28, 28), levels=2, K=8, hidden=64):
        super().__init__()
        self.shape = tuple(shape)
        C, H, W = shape
        layers = [Preprocess(shape)]
        self.lat_shapes = []  # latents in the order encode appends them
        seed = 1
        for lv in range(levels):
            layers.append(Squeeze())
            C, H, W = C * 4, H // 2, W // 2
            for _ in range(K):
                layers += [ActNorm(C, H * W), InvConv(C, H * W, seed), Coupling(C, H * W, hidden)]
                seed += 1
            if lv < levels - 1:
                layers.append(Split(C))
                self.lat_shapes.append((C - C // 2, H, W))
                C //= 2
        self.lat_shapes.append((C, H, W))
        self.layers = nn.ModuleList(layers)
        self.D = shape[0] * shape[1] * shape[2]

    def encode(self, x):
        """x (B, D) or (B, C, H, W) -> (latents, log|det d latents / dx| (B))"""
        h = x.reshape(x.shape[0], *self.shape)
        if CHANNELS_LAST:
            h = h.contiguous(memory_format=torch.channels_last)
        lat, ld = [], torch.zeros(x.shape[0], dtype=x.dtype)
        for layer in self.layers:
            h, l = layer.inverse(h, lat)
            ld = ld + l
        lat.append(h)
        return lat, ld

    def decode(self, lat):
        lat = list(lat)
        h = lat.pop()
        for layer in reversed(self.layers):
            h = layer.forward(h, lat)
        return h.reshape(h.shape[0], self.D)

    def log_prob(self, x):
        lat, ld = self.encode(x)
        for e in lat:
            ld = ld - 0.5 * (e * e).sum((1, 2, 3))
        return ld - 0.5 * self.D * LN2PI

    def sample(self, n, temperature=1.0, gen=None):
        lat = [temperature * torch.randn(n, *s, generator=gen) for s in self.lat_shapes]
        if CHANNELS_LAST:
            lat = [e.contiguous(memory_format=torch.channels_last) for e in lat]
        return self.decode(lat)

    @torch.no_grad()
    def data_init(self, x):
        """data-dependent act-norm initialisation on the batch x"""
        for m in self.modules():
            if isinstance(m, ActNorm):
                m.init_pending = True
        self.encode(x)
        for m in self.modules():
            if isinstance(m, ActNorm):
                m.init_pending = False


def build(shape=(1, 28, 28), levels=2, K=8, hidden=64, seed=1):
    torch.manual_seed(seed)
    return Glow(shape, levels, K, hidden)


def bits_per_dim(log_prob, D):
    """mean NLL in bits per dimension (pixel units)"""
    return -log_prob / (D * math.log(2))


# ---- counts -------------------------------------------------------------------------
def conv_macs(flow):
    """convolution multiply-adds per row, by kind: {"coupling", "split_prior",
    "invconv", "total"}; cout * cin * k * k * H * W per conv ('same' padding)"""
    out = {"coupling": 0, "split_prior": 0, "invconv": 0}
    C, H, W = flow.shape
    for layer in flow.layers:
        if isinstance(layer, Squeeze):
            C, H, W = C * 4, H // 2, W // 2
        elif isinstance(layer, InvConv):
            out["invconv"] += C * C * H * W
        elif isinstance(layer, Coupling):
            for c in (layer.c1, layer.c2, layer.c3):
                out["coupling"] += c.weight.numel() * H * W
        elif isinstance(layer, Split):
            out["split_prior"] += layer.prior.weight.numel() * H * W
            C //= 2
    out["total"] = sum(out.values())
    return out


def w4_formula():
    """W4's conv multiply-adds and parameters per the issue's architecture,
    written out by hand (the check compares them with the modules)"""
    mac = par = 0
    for C, P in ((4, 14 * 14), (8, 7 * 7)):
        ca, cb = C // 2, C - C // 2
        net = [(ca, 64, 3), (64, 64, 1), (64, 2 * cb, 3)]
        step_mac = C * C * P + sum(i * o * k * k * P for i, o, k in net)
        step_par = 2 * C + C * C + sum(i * o * k * k + o for i, o, k in net)
        mac += 8 * step_mac
        par += 8 * step_par
    mac += 2 * 4 * 9 * 196  # split prior conv3x3 2 -> 4 at 14x14
    par += 2 * 4 * 9 + 4
    return mac, par


# ---- data ---------------------------------------------------------------------------
def gen_images(n, seed=1234, D=784):
    """uniformly dequantized random images: integer pixels 0..255 + U[0, 1)"""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, D)).astype(np.float32) + rng.random((n, D), dtype=np.float32)
    return torch.from_numpy(x)


# ---- bench --------------------------------------------------------------------------
TRAIN_B, LP_B, SAMPLE_N, LR = 64, 256, 256, 1e-3


def make_adam(flow, lr=LR):
    """Adam over the flow's parameters; foreach: one multi-tensor update for
    the ~180 parameter tensors instead of a Python loop (1.13 picks it only
    on CUDA)"""
    return torch.optim.Adam(flow.parameters(), lr=lr, foreach=True)


def run():
    flow = build()
    macs = conv_macs(flow)
    mac = macs["total"]
    nparams = sum(p.numel() for p in flow.parameters())
    pool = gen_images(4096)
    flow.data_init(pool[:TRAIN_B])
    res, rates = {}, {}

    opt = make_adam(flow)
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

    t = ref.time_op(train_step)
    rates["train_samples_per_s"] = t.rate(TRAIN_B)
    rates["gflops"] = t.rate(3 * 2 * TRAIN_B * mac / 1e9)
    res["train_samples_per_s"] = rates["train_samples_per_s"]["med"]
    res["gflops"] = rates["gflops"]["med"]
    del opt

    lp_rates = {}
    with torch.inference_mode():
        x = pool[:LP_B]

        def call():
            out = flow.log_prob(x)
            if not torch.isfinite(out).all():
                raise RuntimeError("non-finite log_prob")

        t = ref.time_op(call)
        lp_rates[str(LP_B)] = t.rate(LP_B)
        res["gflops_log_prob_256"] = 2 * LP_B * mac / t.med / 1e9
    res["log_prob_rows_per_s"] = {b: r["med"] for b, r in lp_rates.items()}

    gen = torch.Generator().manual_seed(99)
    with torch.inference_mode():
        t = ref.time_op(lambda: flow.sample(SAMPLE_N, 1.0, gen))
    rates["sample_rows_per_s"] = t.rate(SAMPLE_N)
    res["sample_rows_per_s"] = rates["sample_rows_per_s"]["med"]
    res["sample_batch"] = SAMPLE_N
    res["param_bytes"] = 4 * nparams
    res["peak_rss_bytes"] = ref.peak_rss_bytes()
    res["max_repeat_spread"] = ref.spread
    for out, part in (("min", "min"), ("max", "max"), ("repeats", "reps")):
        res[out] = {
            "train_samples_per_s": rates["train_samples_per_s"][part],
            "log_prob_rows_per_s": {b: r[part] for b, r in lp_rates.items()},
            "sample_rows_per_s": rates["sample_rows_per_s"][part],
            "gflops": rates["gflops"][part]}
    return {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
            "blas_libs": ref.blas_libs(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "malloc_tuned": "MALLOC_MMAP_THRESHOLD_" in os.environ,
            "mkldnn": torch.backends.mkldnn.is_available(), "channels_last": CHANNELS_LAST,
            "dense_flops_per_row_fwd": 2 * mac, "conv_macs_per_row": macs,
            "W4": {"torch": res}}


# ---- self-test ------------------------------------------------------------------------
def perturb(flow, eps, gen):
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(eps * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def check():
    ok = True

    def report(name, err, tol):
        nonlocal ok
        good = err < tol
        ok &= good
        print(f"{name}: {err:.2e} {'ok' if good else 'FAIL'} (tolerance {tol:g})")

    # squeeze: out channel c*4 + di*2 + dj holds x[c][2i+di][2j+dj]
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    s = squeeze(x)
    bad = sum(int(s[0, c * 4 + di * 2 + dj, i, j] != x[0, c, 2 * i + di, 2 * j + dj])
              for c in range(2) for di in range(2) for dj in range(2)
              for i in range(2) for j in range(3))
    report("squeeze layout (mismatches)", bad, 0.5)
    report("unsqueeze(squeeze(x)) - x", (unsqueeze(s) - x).abs().max().item(), 1e-12)

    flow = build()
    macs, nparams = conv_macs(flow), sum(p.numel() for p in flow.parameters())
    fm, fp = w4_formula()
    report("W4 conv MACs/row vs the formula", abs(macs["total"] - fm), 0.5)
    report("W4 parameters vs the formula", abs(nparams - fp), 0.5)

    torch.set_default_dtype(torch.float64)
    gen = torch.Generator().manual_seed(5)
    # fresh flow, float64: identity couplings and prior, so log_prob of a
    # fresh flow is the Gaussian of the rotated, squeezed, preprocessed image
    flow = build().double()
    x = gen_images(8, seed=7).double()
    flow.data_init(x)
    # actnorm init: every actnorm's output has zero mean, unit std per channel
    h, lat = x.reshape(8, 1, 28, 28), []
    worst = 0.0
    for layer in flow.layers:
        if isinstance(layer, ActNorm):
            z, _ = layer.inverse(h, lat)
            m = z.mean((0, 2, 3))
            sd = ((z - m[None, :, None, None]) ** 2).mean((0, 2, 3)).sqrt()
            worst = max(worst, m.abs().max().item(), (sd - 1).abs().max().item())
        h, _ = layer.inverse(h, lat)
    report("act-norm data init: |mean|, |std - 1| after each", worst, 1e-5)

    # whole W4 flow, perturbed (couplings, priors, act-norms): round trip
    perturb(flow, 0.05, gen)
    with torch.no_grad():
        lat, ld = flow.encode(x)
        xr = flow.decode(lat)
    report("W4 round trip decode(encode(x)) - x (pixels)", (xr - x).abs().max().item(), 1e-8)
    with torch.no_grad():
        xs = flow.sample(4, 0.7, torch.Generator().manual_seed(3))
        lat2, _ = flow.encode(xs)
        xs2 = flow.decode(lat2)
    report("W4 sample -> encode -> decode", (xs2 - xs).abs().max().item(), 1e-8)

    # tiny version: 1x4x4, K = 1, 4 hidden channels (squeeze 4x2x2, step,
    # split, squeeze 8x1x1, step); log_prob against the dense Jacobian of
    # x -> all latents
    for trial in range(3):
        tiny = build((1, 4, 4), 2, 1, 4, seed=11 + trial).double()
        xt = gen_images(6, seed=20 + trial, D=16).double()
        tiny.data_init(xt)
        perturb(tiny, 0.3, gen)

        def enc_flat(v):
            lat, _ = tiny.encode(v[None])
            return torch.cat([e.reshape(-1) for e in lat])

        ref_lp = []
        for i in range(xt.shape[0]):
            J = torch.autograd.functional.jacobian(enc_flat, xt[i])
            zf = enc_flat(xt[i])
            ref_lp.append(torch.linalg.slogdet(J)[1] - 0.5 * (zf * zf).sum() - 8 * LN2PI)
        with torch.no_grad():
            lp = tiny.log_prob(xt)
            err = (lp - torch.stack(ref_lp)).abs().max().item()
            rt = (tiny.decode(tiny.encode(xt)[0]) - xt).abs().max().item()
        report(f"tiny 1x4x4 K=1 (seed {11 + trial}): log_prob vs dense Jacobian", err, 1e-8)
        report(f"tiny 1x4x4 K=1 (seed {11 + trial}): round trip", rt, 1e-10)
    torch.set_default_dtype(torch.float32)

    # float32 round trip of the perturbed full flow, as benchmarked
    flow = build()
    x = gen_images(16, seed=9)
    flow.data_init(x)
    perturb(flow, 0.05, gen)
    with torch.no_grad():
        xr = flow.decode(flow.encode(x)[0])
    report("W4 float32 round trip (pixels)", (xr - x).abs().max().item(), 1e-2)
    return ok


def flops():
    flow = build()
    m = conv_macs(flow)
    n = sum(p.numel() for p in flow.parameters())
    print(f"W4 conv multiply-adds per row: {m['total']:,} (couplings {m['coupling']:,}, "
          f"split prior {m['split_prior']:,}, 1x1 invconvs {m['invconv']:,})")
    print(f"  forward {2 * m['total'] / 1e6:.2f} MFLOP/row; training 3x: "
          f"{6 * m['total'] / 1e6:.2f} MFLOP/row, {6 * m['total'] * TRAIN_B / 1e9:.2f} GFLOP "
          f"per batch of {TRAIN_B}")
    print(f"W4 parameters: {n:,} ({4 * n / 1e6:.2f} MB)")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "W4":
        print(json.dumps(run()))
    elif what == "check":
        sys.exit(0 if check() else 1)
    elif what == "flops":
        flops()
    else:
        sys.exit(__doc__)
