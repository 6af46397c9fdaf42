#!/usr/bin/env python3
"""A real collective workload under MPI (mpi4py) that reports each
collective to its node's keel sensor, through the same push wire format as
`keel_push.py` (whose `Sender` it uses).

Each rank repeats a training-like step at a fixed cadence:

1. compute: a fixed amount of numpy work on the CPU, calibrated at start to
   take `--compute-ms` on an idle CPU (the same amount on every rank, the
   median of their calibrations): a rank that gets less CPU takes longer;
2. upload: `--upload-bytes` sent over TCP to `--sink` and acknowledged
   (a checkpoint shard or activations leaving the node: what a fault on
   the node's link slows);
3. `MPI.COMM_WORLD.Allreduce` of `--bytes`, timed: `arrive` when the rank
   entered it, `ts` when it left, one `collective` record per call.

Steps start on a shared schedule (every `--period-ms` from a common start),
so a rank slowed by a fault arrives late at the all-reduce and its peers
wait for it, as in real data-parallel training.

    mpirun ... /usr/bin/python3 keel_mpi.py --push udp://127.0.0.1:7600 \\
        --job 77 --node n01 --sink 10.0.0.1:7700 --seconds 60

`--sink HOST:PORT --serve` runs the upload sink instead: it reads each
upload (an 8-byte big-endian length, then that many bytes) and answers one
byte, one process per connection. Stops on SIGTERM or after `--seconds`
(its connections' processes when their rank hangs up).
"""

import argparse
import os
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keel_push  # noqa: E402


def read_exact(conn, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def serve(addr, seconds):
    host, port = addr
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(64)

    def client(conn):
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                head = read_exact(conn, 8)
                if head is None:
                    return
                (n,) = struct.unpack(">Q", head)
                if n > (1 << 30) or read_exact(conn, n) is None:
                    return
                conn.sendall(b"k")

    # A process per upload stream: threads would queue each rank's upload
    # behind the others' on the interpreter lock.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    srv.settimeout(0.5)
    until = time.time() + seconds
    while time.time() < until:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        if os.fork() == 0:
            srv.close()
            try:
                client(conn)
            finally:
                os._exit(0)
        conn.close()


def parse_hostport(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def work(args):
    from mpi4py import MPI
    import numpy as np

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    sender = keel_push.Sender(args.push, args.job, args.node, rank)
    up = None
    if args.sink and args.upload_bytes > 0:
        up = socket.create_connection(parse_hostport(args.sink), timeout=30)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = struct.pack(">Q", args.upload_bytes) + bytes(args.upload_bytes)
    n = max(1, args.bytes // 8)
    send, recv = np.ones(n), np.empty(n)
    a = np.random.default_rng(rank).random((64, 64))
    # Calibrate: how many iterations take --compute-ms of CPU here, from
    # the fastest of many single iterations (a busy machine makes the
    # others slower, not the work smaller).
    best = float("inf")
    for _ in range(200):
        t = time.perf_counter()
        a = np.tanh(a @ a)
        best = min(best, time.perf_counter() - t)
    mine = max(1, int(args.compute_ms / 1000.0 / max(best, 1e-7)))
    counts = sorted(comm.allgather(mine))
    iters = counts[len(counts) // 2]
    # A common start: rank 0's clock, shared (all ranks run on one host).
    start = comm.bcast(time.time() + 0.5 if rank == 0 else None, root=0)
    if rank == 0:
        # The harness counts its fault schedule from here.
        print("start=%.6f" % start, flush=True)
    period = args.period_ms / 1000.0
    end = start + args.seconds
    seq = 0
    record = [] if args.record else None
    while True:
        slot = start + seq * period
        if slot >= end:
            break
        delay = slot - time.time()
        if delay > 0:
            time.sleep(delay)
        woke = time.time()
        for _ in range(iters):
            a = np.tanh(a @ a)
        computed = time.time()
        if up is not None:
            up.sendall(payload)
            if read_exact(up, 1) is None:
                raise SystemExit("the upload sink went away")
        seq += 1
        arrive = time.time()
        comm.Allreduce(send, recv)
        left = time.time()
        sender.collective("allreduce", seq, args.bytes, arrive, left)
        if record is not None:
            record.append((seq, slot, woke, computed, arrive, left))
    comm.Barrier()
    if record is not None:
        with open(os.path.join(args.record, "rank-%d.tsv" % rank), "w") as f:
            f.write("seq\tslot\twoke\tcomputed\tarrive\tleft\n")
            for r in record:
                f.write("%d\t%.6f\t%.6f\t%.6f\t%.6f\t%.6f\n" % r)
    if rank == 0:
        print("steps=%d sent=%d dropped=%d" % (seq, sender.sent, sender.dropped), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--push", help="the node's sensor: udp://HOST:PORT or unix:///PATH")
    p.add_argument("--job", default=os.environ.get("KEEL_JOB", "0"))
    p.add_argument("--node", default=os.environ.get("KEEL_NODE", socket.gethostname()))
    p.add_argument("--sink", help="HOST:PORT of the upload sink")
    p.add_argument("--serve", action="store_true", help="run the upload sink at --sink")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--period-ms", type=float, default=150.0)
    p.add_argument("--compute-ms", type=float, default=4.0)
    p.add_argument("--upload-bytes", type=int, default=524288)
    p.add_argument("--bytes", type=int, default=65536, help="all-reduce size")
    p.add_argument("--record", help="a folder: each rank writes rank-N.tsv (seq; its slot, wake-up, end of compute, arrival at and exit from the all-reduce) at the end")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.serve:
        if not args.sink:
            p.error("--serve needs --sink HOST:PORT")
        serve(parse_hostport(args.sink), args.seconds)
        return
    if not args.push:
        p.error("--push is required")
    work(args)


if __name__ == "__main__":
    main()
