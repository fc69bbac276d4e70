"""A plain PyTorch DDP reference for lavit's throughput benchmark.

The tiny LaVIT stage-1 tokenizer (configs/models/tiny-stage1.json: 32×32
images, 4×4 patches, width 64, 4 heads, 2 merger and 2 decoder blocks,
code dim 16) written the way a PyTorch user would write it, with the same
math as trainer/csrc/models.cpp in phase A (before vector quantisation):
frozen stand-in encoder, selector with per-sample Gumbel noise, merger,
decoder, cosine reconstruction loss, the keep-ratio penalty over the
global batch (its two statistics all-reduced, as lavit does), AdamW with
the selector's own learning rate, gradient clipping at 1. Trained with
DistributedDataParallel over Gloo (one process per rank, spawned here) on
samples generated in memory: the reference never waits for data.

It is a benchmark tool, not part of lavit. It prints one JSON object:
samples/s and rank 0's mean step split in milliseconds:

  data_ms       taking the step's samples (an in-memory slice)
  compute_ms    forward, backward and optimizer with DDP's reduction off
                (no_sync), measured in its own window of steps
  comm_ms       exposed communication: the step with DDP's reduction on,
                less compute_ms and data_ms (what overlap did not hide)
  step_ms       wall time per step with the reduction on

    /usr/bin/python3 deploy/bench/ddp_reference.py --world 2 --global-batch 8 --threads 1
    /usr/bin/python3 deploy/bench/ddp_reference.py --world 1 --trace ddp.json  # and a profile
"""
import argparse
import json
import math
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

IMAGE, PATCH, CHANNELS, WIDTH, HEADS, MLP_RATIO = 32, 4, 3, 64, 4, 4
MERGER_BLOCKS, DECODER_BLOCKS, CODE_DIM = 2, 2, 16
RHO, RATIO_WEIGHT, GUMBEL_TAU, LOCALITY_ALPHA, POS_SCALE = 1 / 3, 2.0, 1.0, 0.5, 0.1
LR, SELECTOR_LR, WEIGHT_DECAY, CLIP = 1e-3, 1e-2, 0.01, 1.0
POLICY_EPS = 1e-6
N = (IMAGE // PATCH) ** 2
PATCH_DIM = CHANNELS * PATCH * PATCH


def policy_attention(q, k, v, weight):
    """Softmax attention whose scores are weighted by a 0/1 policy (DynamicViT)."""
    s = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(q.size(-1)))
    if weight is None:
        return torch.softmax(s, -1) @ v
    s = s - s.max(-1, keepdim=True)[0].detach()
    e = s.exp() * weight
    attn = (e + POLICY_EPS / k.size(-2)) / (e.sum(-1, keepdim=True) + POLICY_EPS)
    return attn @ v


class MHA(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, xq, xkv, weight):
        b, nq, nk, dh = xq.size(0), xq.size(1), xkv.size(1), self.dim // self.heads

        def split(t, n):
            return t.view(b, n, self.heads, dh).transpose(1, 2)

        out = policy_attention(split(self.q(xq), nq), split(self.k(xkv), nk), split(self.v(xkv), nk), weight)
        return self.o(out.transpose(1, 2).reshape(b, nq, self.dim))


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Selector(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.inp = nn.Linear(dim, dim)
        self.h1, self.h2, self.out = nn.Linear(dim, dim // 2), nn.Linear(dim // 2, dim // 4), nn.Linear(dim // 4, 2)

    def forward(self, feats):
        h = F.gelu(self.inp(self.ln(feats)))
        half = h.size(-1) // 2
        local = h[..., :half]
        glob = h[..., half:].mean(1, keepdim=True).expand_as(local)
        x = F.gelu(self.h1(torch.cat([local, glob], -1)))
        x = F.gelu(self.h2(x))
        return torch.log_softmax(self.out(x), -1)


class CrossBlock(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn, self.cross_attn = MHA(dim, heads), MHA(dim, heads)
        self.mlp = MLP(dim, hidden)

    def forward(self, x, memory, self_w, cross_w):
        h = self.ln1(x)
        x = x + self.self_attn(h, h, self_w)
        x = x + self.cross_attn(self.ln2(x), memory, cross_w)
        return x + self.mlp(self.ln3(x))


class Tokenizer(nn.Module):
    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("enc_proj", torch.randn(PATCH_DIM, WIDTH, generator=g) / math.sqrt(PATCH_DIM))
        self.register_buffer("enc_pos", torch.randn(N, WIDTH, generator=g) * POS_SCALE)
        side = IMAGE // PATCH
        idx = torch.arange(N)
        row, col = (idx // side).float(), (idx % side).float()
        d2 = (row[:, None] - row[None]) ** 2 + (col[:, None] - col[None]) ** 2
        self.register_buffer("locality", torch.exp(-LOCALITY_ALPHA * d2))
        self.register_buffer("causal_strict", torch.ones(N, N).tril(-1))
        self.register_buffer("eye", torch.eye(N))
        hidden = WIDTH * MLP_RATIO
        self.selector = Selector(WIDTH)
        self.memory_ln = nn.LayerNorm(WIDTH)
        self.merger = nn.ModuleList(CrossBlock(WIDTH, HEADS, hidden) for _ in range(MERGER_BLOCKS))
        self.merger_ln = nn.LayerNorm(WIDTH)
        self.task1, self.task2 = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, CODE_DIM)
        self.code_in = nn.Linear(CODE_DIM, WIDTH)
        self.rank_emb = nn.Parameter(torch.randn(N, WIDTH) * 0.02)
        self.queries = nn.Parameter(torch.randn(N, WIDTH) * 0.02)
        self.decoder = nn.ModuleList(CrossBlock(WIDTH, HEADS, hidden) for _ in range(DECODER_BLOCKS))
        self.decoder_ln = nn.LayerNorm(WIDTH)
        self.out1, self.out2 = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)

    def encode(self, images):
        b, side = images.size(0), IMAGE // PATCH
        x = images.view(b, CHANNELS, side, PATCH, side, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(b, N, PATCH_DIM)
        return F.layer_norm(F.gelu(x @ self.enc_proj + self.enc_pos), (WIDTH,))

    def forward(self, images, keys):
        """Frozen features, the straight-through keep [B,N], its 0/1 value, the reconstruction."""
        feats, keep, keep_hard = self.select(images, keys)
        return feats, keep, keep_hard, self.merge_decode(feats, keep, keep_hard)

    def select(self, images, keys):
        with torch.no_grad():
            feats = self.encode(images)
        logp = self.selector(feats)
        noise = []
        for key in keys:
            g = torch.Generator().manual_seed(key)
            u = torch.rand(N, 2, generator=g).clamp(1e-10, 1 - 1e-7)
            noise.append(-torch.log(-torch.log(u)))
        y = torch.softmax((logp + torch.stack(noise)) / GUMBEL_TAU, -1)
        hard = torch.zeros_like(y).scatter_(-1, y.argmax(-1, keepdim=True), 1.0)
        st = hard - y.detach() + y
        return feats, st[..., 0], hard[..., 0]

    def merge_decode(self, feats, keep, keep_hard):
        memory = self.memory_ln(feats)
        self_w = (self.causal_strict[None] * keep[:, None] + self.eye[None])[:, None]
        cross_w = (1.0 - keep)[:, None, None]
        x = feats
        for blk in self.merger:
            x = blk(x, memory, self_w, cross_w)
        z = F.normalize(self.task2(torch.tanh(self.task1(self.merger_ln(x)))), dim=-1)
        b = z.size(0)
        rank = (keep_hard.cumsum(1) - 1).clamp_min(0).long()
        codes = self.code_in(z) + self.rank_emb.index_select(0, rank.view(-1)).view(b, -1, WIDTH)
        cross_w = keep[:, None, None] * self.locality[None, None]
        q = self.queries[None].expand(b, -1, -1)
        for blk in self.decoder:
            q = blk(q, codes, None, cross_w)
        return self.out2(torch.tanh(self.out1(self.decoder_ln(q))))


def param_groups(model):
    groups = {}
    for name, p in model.named_parameters():
        selector = name.startswith("module.selector.") or name.startswith("selector.")
        key = (selector, p.dim() >= 2)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": SELECTOR_LR if sel else LR, "weight_decay": WEIGHT_DECAY if decay else 0.0}
            for (sel, decay), ps in groups.items()]


def run(rank, args, port, out):
    if args.pin:
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[rank % len(cores)]})
    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    torch.manual_seed(21)
    model = Tokenizer(seed=21)
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb)
    opt = torch.optim.AdamW(param_groups(ddp), betas=(0.9, 0.999), eps=1e-8)
    gb, w = args.global_batch, args.world
    lo, hi = rank * gb // w, (rank + 1) * gb // w
    data = torch.Generator().manual_seed(7)
    pool = torch.rand(64 * gb, CHANNELS, IMAGE, IMAGE, generator=data)

    def step(i):
        t0 = time.perf_counter()
        first = (i * gb) % pool.size(0)
        images = pool[first + lo:first + hi]
        keys = [(i * 1_000_003 + first + j) & 0x7FFFFFFFFFFFFFFF for j in range(lo, hi)]
        t1 = time.perf_counter()
        feats, keep, keep_hard, xhat = ddp(images, keys)
        # The keep ratio is a global-batch statistic, as in lavit: its two
        # sums are all-reduced (lavit does it between selection and merger).
        stats = torch.stack([keep_hard.sum(), torch.tensor(float(keep_hard.numel()))])
        dist.all_reduce(stats)
        kept, count = stats.tolist()
        rec = (1 - F.cosine_similarity(xhat, feats, dim=-1)).mean(1)
        coef = -2 * RATIO_WEIGHT * (RHO - kept / count) * gb / count
        loss = rec.sum() + coef * keep.sum()
        # DDP averages over ranks; lavit sums and divides by the global batch.
        (loss * w / gb).backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0

    def window(steps, sync, offset):
        data_s = 0.0
        dist.barrier()
        t0 = time.perf_counter()
        for i in range(steps):
            if sync:
                data_s += step(offset + i)
            else:
                with ddp.no_sync():
                    data_s += step(offset + i)
        dist.barrier()
        return (time.perf_counter() - t0) / steps, data_s / steps

    window(args.warmup, True, 0)
    if args.trace:
        # Rank 0's operators over args.trace_steps steps, as a Chrome trace
        # (lavit's BenchmarkOpProfile reads it beside its own).
        if rank == 0:
            with torch.autograd.profiler.profile(use_kineto=False) as prof:
                window(args.trace_steps, True, args.warmup)
            prof.export_chrome_trace(args.trace)
        else:
            window(args.trace_steps, True, args.warmup)
    nosync_s, _ = window(args.steps, False, args.warmup + 1000)
    sync_s, data_s = window(args.steps, True, args.warmup + 2000)
    if rank == 0:
        out.put({"world": w, "global_batch": gb, "threads": args.threads, "bucket_mb": args.bucket_mb,
                 "samples_per_s": gb / sync_s, "step_ms": sync_s * 1e3, "data_ms": data_s * 1e3,
                 "compute_ms": (nosync_s - data_s) * 1e3, "comm_ms": max(0.0, sync_s - nosync_s) * 1e3,
                 "torch": torch.__version__})
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    ap.add_argument("--steps", type=int, default=100, help="steps in each timed window")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="DDP's bucket_cap_mb")
    ap.add_argument("--pin", action="store_true", help="pin rank r to core r (mod the cores)")
    ap.add_argument("--trace", help="write rank 0's operators over --trace-steps steps to this Chrome trace")
    ap.add_argument("--trace-steps", type=int, default=10)
    args = ap.parse_args()
    if args.world < 1 or args.global_batch < args.world:
        sys.exit("want --world ≥ 1 and --global-batch ≥ --world")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=run, args=(r, args, port, out)) for r in range(args.world)]
    for p in procs:
        p.start()
    result = out.get()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            sys.exit(f"a rank exited with {p.exitcode}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
