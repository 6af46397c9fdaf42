#!/usr/bin/env python3
"""A two-rank tensor-parallel-like NCCL job for keel's GPU chaos run, and
the squatter that follows it (contrib/keel_gpu_chaos.py drives both).

Rank mode (one process per GPU, torch.distributed with NCCL): each step is
a host-side loop (`--host-ms`, 8 ms of Python on an idle core: a serving
engine's scheduling and sampling), `--matmuls` (12) bf16 8192x8192 matrix
products on the rank's GPU, then an all-reduce of 16 MiB, timed and
reported to the node's keel sensor through `keel_push.instrument()`. Steps
start on a common schedule (`--period-ms`, 40; 0 runs them back to back,
as the h200x2-tp2 trace's job did), which keeps the GPUs under their power
cap: back to back, two H200s at 700 W run at clocks a few % apart, and the
slower one is a real (if small) straggler. Between steps the
rank reads a small control file (`--control`, JSON) that the driver writes
to inject a fault into one rank:

    {"fault": "gpu", "rank": 1}   30% more matrix products each step
    {"fault": "pcie", "rank": 0}  a 128 MiB pageable host buffer copied to
                                  the GPU each step (before its matmuls)
    {"stop": true}                every rank leaves after this step

(`host` faults are made from outside: the driver pins the rank to one core
and starts busy processes on it.)

`--squat GPU --fraction F --seconds S`: allocates F of the GPU's memory,
prints `held=<unix time>`, and then sleeps without launching any work.

`--dry`: no torch, no GPU; one process plays both ranks (sleeps for the
GPU work, a fault adds its delay) and reports through the same Sender, to
test a driver's plumbing on a machine without GPUs.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import keel_push  # noqa: E402


def read_control(path, last):
    """(mtime, parsed) of the control file, re-read only when it changed."""
    try:
        m = os.stat(path).st_mtime_ns
    except OSError:
        return last
    if last is not None and last[0] == m:
        return last
    try:
        with open(path) as f:
            return (m, json.load(f))
    except (OSError, ValueError):
        return last


def host_loop(ms):
    """Busy Python for about `ms` ms of an idle core (a serving loop's
    scheduling and sampling): slower when the core is shared."""
    n = int(ms * HOST_ITERS_PER_MS)
    x = 0
    for i in range(n):
        x += i * i
    return x


HOST_ITERS_PER_MS = 20000


def calibrate():
    global HOST_ITERS_PER_MS
    t = time.perf_counter()
    n = 200000
    x = 0
    for i in range(n):
        x += i * i
    dt = time.perf_counter() - t
    HOST_ITERS_PER_MS = max(1000, int(n / (dt * 1000)))


def run_rank(a):
    import torch
    import torch.distributed as dist

    rank = a.rank
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    dist.init_process_group("nccl", rank=rank, world_size=a.world, device_id=dev)
    sender = keel_push.instrument(addr=a.push, job=a.job, node=a.node, rank=rank, dist=dist)
    calibrate()
    n = 8192
    A = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    B = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    C = torch.empty(n, n, device=dev, dtype=torch.bfloat16)
    grad = torch.ones(8 << 20, device=dev, dtype=torch.bfloat16)  # 16 MiB
    pcie_host = torch.empty(128 << 20, dtype=torch.uint8)  # pageable
    pcie_host.fill_(1)
    pcie_dev = torch.empty(128 << 20, dtype=torch.uint8, device=dev)
    extra = max(1, int(round(a.matmuls * 0.3)))
    rows = []
    ctl = None
    step = 0
    started = None
    # Warm-up: NCCL's first all-reduces and cuBLAS's first products.
    for _ in range(5):
        for _ in range(a.matmuls):
            torch.matmul(A, B, out=C)
        dist.all_reduce(grad)
    # A common schedule: rank 0's clock, half a second ahead.
    t = torch.tensor([time.time() + 0.5 if rank == 0 else 0.0], device=dev, dtype=torch.float64)
    dist.all_reduce(t)
    started = float(t[0])
    time.sleep(max(0.0, started - time.time()))
    if rank == 0:
        print("start=%.6f" % started, flush=True)
    while True:
        ctl = read_control(a.control, ctl)
        c = ctl[1] if ctl else {}
        mine = c.get("rank") == rank
        fault = c.get("fault") if mine else None
        if a.period_ms > 0:
            # Step k starts at its slot; a rank behind its slots (a fault)
            # does not sleep until it has caught up.
            time.sleep(max(0.0, started + step * a.period_ms / 1000.0 - time.time()))
        t0 = time.time()
        host_loop(a.host_ms)
        if fault == "pcie":
            pcie_dev.copy_(pcie_host)
        k = a.matmuls + (extra if fault == "gpu" else 0)
        for _ in range(k):
            torch.matmul(A, B, out=C)
        # The stop rides in the all-reduce's first element, so that every
        # rank leaves after the same step (a rank that left alone would
        # leave its peer waiting in NCCL).
        grad.fill_(1.0 if c.get("stop") else 0.0)
        torch.cuda.synchronize()
        arrive = time.time()
        dist.all_reduce(grad)  # reported: arrive after the GPU work, ts after
        t1 = time.time()
        rows.append("%d\t%.6f\t%.6f\t%.6f\t%s\n" % (step, t0, arrive, t1, fault or "-"))
        step += 1
        if float(grad[0]) > 0.0:
            break
    if a.record:
        with open(os.path.join(a.record, "rank-%d.tsv" % rank), "w") as f:
            f.write("step\tstart\tarrive\tend\tfault\n")
            f.writelines(rows)
    print("rank %d: %d steps in %.1f s, %d records sent, %d dropped" % (
        rank, step, time.time() - started, sender.sent, sender.dropped), flush=True)
    dist.destroy_process_group()


def run_dry(a):
    """Both ranks in one process, no GPU: the plumbing only."""
    calibrate()
    senders = [keel_push.Sender(a.push, a.job, a.node, r) for r in range(a.world)]
    ctl = None
    seq = 0
    print("start=%.6f" % time.time(), flush=True)
    while True:
        ctl = read_control(a.control, ctl)
        c = ctl[1] if ctl else {}
        if c.get("stop"):
            break
        t0 = time.time()
        host_loop(a.host_ms)
        arrive = []
        for r in range(a.world):
            extra = 0.0
            if c.get("rank") == r:
                extra = {"gpu": 0.009, "pcie": 0.012, "host": 0.008}.get(c.get("fault"), 0.0)
            arrive.append(t0 + 0.028 + extra)
        end = max(arrive) + 0.0003
        time.sleep(max(0.0, end - time.time()))
        for r in range(a.world):
            senders[r].collective("allreduce", seq, 16 << 20, arrive[r], end, "world")
        seq += 1
    print("dry: %d steps" % seq, flush=True)


def run_squat(a):
    import torch

    dev = torch.device("cuda", a.squat)
    free, total = torch.cuda.mem_get_info(dev)
    want = int(total * a.fraction) - (total - free)
    held = torch.empty(max(0, want), dtype=torch.uint8, device=dev)
    torch.cuda.synchronize(dev)
    print("held=%.6f bytes=%d total=%d" % (time.time(), held.numel(), total), flush=True)
    time.sleep(a.seconds)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", type=int, default=int(os.environ.get("RANK", "0")))
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--push", default="udp://127.0.0.1:7600")
    p.add_argument("--job", default="gpu-1")
    p.add_argument("--node", default="gpu-node")
    p.add_argument("--control", default="/tmp/keel-gpu-control.json")
    p.add_argument("--matmuls", type=int, default=12)
    p.add_argument("--host-ms", type=float, default=8.0)
    p.add_argument("--period-ms", type=float, default=40.0,
                   help="step k starts at start + k * period (0: back to back)")
    p.add_argument("--record", default=None)
    p.add_argument("--dry", action="store_true")
    p.add_argument("--squat", type=int, default=None)
    p.add_argument("--fraction", type=float, default=0.96)
    p.add_argument("--seconds", type=float, default=30.0)
    a = p.parse_args()
    if a.squat is not None:
        run_squat(a)
    elif a.dry:
        run_dry(a)
    else:
        run_rank(a)


if __name__ == "__main__":
    main()
