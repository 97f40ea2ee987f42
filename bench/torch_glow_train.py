#!/usr/bin/python3
"""torch_glow_train.py: train the W4 Glow (bench/torch_glow.py) on
Fashion-MNIST for a wall-clock budget: the PyTorch side of W4's quality
comparison (flowd trained for the same time).

Data: Debian's dataset-fashion-mnist, /usr/share/datasets/fashion-mnist/
{train,t10k}-images-idx3-ubyte.gz (--data overrides the folder), read as IDX
with gzip + numpy.  Each training batch is dequantized afresh, x + u with
u ~ U[0,1); the flow's own preprocessing maps it to x/256 - 0.5.  Training:
Adam(lr 1e-3), batch 64, mean NLL, data-dependent act-norm init on the first
batch, the training set reshuffled every epoch.

Threads: OpenBLAS gets 1 thread (the convolutions run in oneDNN on torch's
intra-op threads, OpenBLAS only sees 8x8 products).  Before training the
script times a few training steps on a throw-away copy of the model with
each intra-op thread count from --threads (default: every count from the
CPU count down to 1) and trains with the fastest; that calibration is not
counted in the budget.

The budget (--seconds) counts training time only: the test evaluations
stop the clock ("elapsed_s" is training time, "wall_s" everything since the
start of training).  Every --every seconds of training, and once at the
start, a JSON line:
  {"elapsed_s", "wall_s", "epoch" (completed epochs, fractional), "step",
   "train_bpd" (mean training loss in bits/dim since the previous line),
   "test_bpd_subset" (the first --subset test images, default 2000, with
   dequantization noise drawn once from a fixed seed)}
and at the end
  {"final": true, "elapsed_s", "wall_s", "steps", "epoch", "samples_per_s"
   (training images per training second), "threads", "test_bpd_subset",
   "test_bpd" (the full test set, 10,000 images, fixed noise), "png"}.
Bits/dim = NLL / (784 ln 2) in pixel units (the density of x + u on
[0,256)^784), as flowd reports.  --png PATH writes a grid of 64 samples at
temperature 0.7 (8 x 8, clipped to 0..255; written with zlib, no PIL).

Usage:
  /usr/bin/python3 bench/torch_glow_train.py --seconds 600 [--every 30]
      [--png build/bench/torch_glow_samples.png] [--threads 2,1] [--seed 1]
"""
import argparse
import copy
import gzip
import json
import math
import os
import struct
import sys
import time
import zlib

# before torch starts: BLAS on one thread (unused by the convolutions), and
# torch_ref's intra-op default raised to every CPU (calibrated below)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TORCH_THREADS", str(os.cpu_count() or 1))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no bench/__pycache__ in the tree
import torch_glow as G  # noqa: E402  (imports torch_ref: allocator, threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"


def read_idx_images(path):
    """IDX3 (gzipped or not) -> uint8 array (n, rows*cols)"""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        buf = f.read()
    magic, n, r, c = struct.unpack(">IIII", buf[:16])
    if magic != 0x803:
        raise ValueError(f"{path}: not an IDX3 image file (magic {magic:#x})")
    a = np.frombuffer(buf, dtype=np.uint8, count=n * r * c, offset=16)
    return a.reshape(n, r * c).copy()


def write_png_gray(path, img):
    """img: uint8 (H, W) -> 8-bit grayscale PNG"""
    h, w = img.shape

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))  # filter 0 per row
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png)


def sample_grid(flow, n=64, temperature=0.7, seed=0, pad=2):
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        x = flow.sample(n, temperature, gen)
    x = torch.nan_to_num(x, nan=0.0).clamp(0, 255).floor().to(torch.uint8).numpy()
    k = int(math.ceil(math.sqrt(n)))
    size = k * (28 + pad) + pad
    grid = np.zeros((size, size), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, k)
        y0, x0 = pad + r * (28 + pad), pad + c * (28 + pad)
        grid[y0:y0 + 28, x0:x0 + 28] = x[i].reshape(28, 28)
    return grid


def evaluate(flow, x, batch=500):
    """mean bits/dim of the dequantized rows x (float32 (n, 784))"""
    tot = 0.0
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch):
            tot += flow.log_prob(x[i:i + batch]).double().sum().item()
    return G.bits_per_dim(tot / x.shape[0], 784)


def fixed_dequant(images, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images.astype(np.float32))
    return x + torch.rand(x.shape, generator=g)


def calibrate(flow, opt, xb, counts, steps=4):
    """seconds per training step on a copy of (flow, opt) per intra-op count"""
    out = {}
    for n in counts:
        torch.set_num_threads(n)
        f = copy.deepcopy(flow)
        o = G.make_adam(f)
        o.load_state_dict(opt.state_dict())
        ts = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            o.zero_grad(set_to_none=True)
            (-f.log_prob(xb).mean()).backward()
            o.step()
            ts.append(time.perf_counter() - t0)
        out[n] = sorted(ts[1:])[len(ts[1:]) // 2]  # median after one warm-up step
    return out


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, required=True, help="training time budget")
    ap.add_argument("--every", type=float, default=30.0, help="seconds between reports")
    ap.add_argument("--subset", type=int, default=2000, help="test images in the periodic test")
    ap.add_argument("--batch", type=int, default=G.TRAIN_B)
    ap.add_argument("--lr", type=float, default=G.LR)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", default="", help="intra-op counts to try, e.g. 2,1")
    ap.add_argument("--data", default=DATA, help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--png", default="", help="write 64 samples at T=0.7 here")
    a = ap.parse_args()

    train = read_idx_images(os.path.join(a.data, "train-images-idx3-ubyte.gz"))
    test = read_idx_images(os.path.join(a.data, "t10k-images-idx3-ubyte.gz"))
    test_full = fixed_dequant(test, 12345)
    test_sub = test_full[:a.subset]

    flow = G.build(seed=a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    train_t = torch.from_numpy(train)
    n = train_t.shape[0]
    nb = n // a.batch  # full batches per epoch

    def batch_at(perm, i):
        idx = perm[i * a.batch:(i + 1) * a.batch]
        x = train_t[idx].to(torch.float32)
        return x + torch.rand(x.shape, generator=gen)

    perm = torch.randperm(n, generator=gen)
    flow.data_init(batch_at(perm, 0))
    opt = G.make_adam(flow, a.lr)

    counts = ([int(c) for c in a.threads.split(",") if c] if a.threads
              else list(range(int(os.environ["TORCH_THREADS"]), 0, -1)))
    if len(counts) > 1:
        cal = calibrate(flow, opt, batch_at(perm, 1), counts)
        threads = min(cal, key=cal.get)
        print(f"torch_glow_train: s/step by intra-op threads {cal}; using {threads}",
              file=sys.stderr, flush=True)
    else:
        threads = counts[0]
    torch.set_num_threads(threads)

    train_s, wall0 = 0.0, time.perf_counter()
    step, epoch, i = 0, 0, 0
    loss_sum, loss_n = 0.0, 0

    def report(final=False):
        nonlocal loss_sum, loss_n
        o = {"elapsed_s": round(train_s, 3), "wall_s": round(time.perf_counter() - wall0, 3),
             "epoch": round(epoch + i / nb, 4), "step": step,
             "train_bpd": G.bits_per_dim(-loss_sum / loss_n, 784) if loss_n else None,
             "test_bpd_subset": evaluate(flow, test_sub)}
        loss_sum, loss_n = 0.0, 0
        return o

    emit(report())
    next_report = a.every
    while train_s < a.seconds:
        if i >= nb:
            epoch, i = epoch + 1, 0
            perm = torch.randperm(n, generator=gen)
        t0 = time.perf_counter()
        x = batch_at(perm, i)
        opt.zero_grad(set_to_none=True)
        loss = -flow.log_prob(x).mean()
        loss.backward()
        lv = loss.item()
        if not math.isfinite(lv):
            emit({"error": "non-finite loss", "step": step, "elapsed_s": round(train_s, 3)})
            sys.exit(1)
        opt.step()
        train_s += time.perf_counter() - t0
        step, i = step + 1, i + 1
        loss_sum, loss_n = loss_sum + lv, loss_n + 1  # mean NLL in nats per image
        if train_s >= next_report and train_s < a.seconds:
            emit(report())
            next_report += a.every

    fin = report()
    fin.update({"final": True, "steps": step, "samples_per_s": step * a.batch / train_s,
                "threads": threads, "batch": a.batch, "lr": a.lr})
    fin["test_bpd"] = evaluate(flow, test_full)
    if a.png:
        write_png_gray(a.png, sample_grid(flow, 64, 0.7, a.seed))
        fin["png"] = a.png
    fin["wall_s"] = round(time.perf_counter() - wall0, 3)
    emit(fin)


if __name__ == "__main__":
    main()
