#!/usr/bin/env python3
"""Report torch.distributed collective timings to a keel sensor.

Each collective a rank takes part in becomes one `collective` record of
keel's trace format (spec/trace-format.md), sent as a JSON line in one
datagram to the sensor's push endpoint, a Unix datagram socket
(`unix:///run/keel/push.sock`, the sensor's default) or UDP on loopback
(`udp://127.0.0.1:7600`):

    {"t":"collective","ts":...,"node":"n02","job":"4242","rank":5,
     "op":"allreduce","seq":1187,"bytes":16777216,"arrive":...,"dur_us":1312.0}

`arrive` is when the rank entered the collective, after its own GPU work
had finished (so a slow rank arrives late), and `ts` when the collective
completed on its GPU. A straggler is the rank that arrives last: the others
wait for it, so it has the shortest `dur_us`.

Use in a training or serving script, after torch.distributed is imported:

    import keel_push
    keel_push.instrument()          # KEEL_PUSH names the sensor

On the Unix socket the sensor learns which process sent each datagram and
takes collectives only for that process's own Slurm job: `job` must be the
job the rank runs in (the default, SLURM_JOB_ID, is). The process must be
allowed to write to the socket (its group, `keel` by default). UDP tells
the sensor nothing of the sender.

Standard library only; torch is needed only by `instrument`. Sending never
blocks and never raises into the caller: a missing sensor costs nothing
but the records. Without torch, `--selftest ADDRESS --count N` sends N
synthetic records, to check the path to a sensor.

Environment: KEEL_PUSH (required: unix:///PATH, udp://HOST:PORT or
HOST:PORT), KEEL_JOB (else SLURM_JOB_ID), KEEL_NODE (else the host name),
KEEL_RANK (else RANK, SLURM_PROCID, or the rank torch.distributed reports).
"""

import argparse
import functools
import inspect
import json
import os
import socket
import sys
import threading
import time

# torch.distributed function -> the op name the trace carries.
OPS = {
    "all_reduce": "allreduce",
    "all_gather": "allgather",
    "all_gather_into_tensor": "allgather",
    "reduce_scatter": "reducescatter",
    "reduce_scatter_tensor": "reducescatter",
    "broadcast": "broadcast",
    "barrier": "barrier",
}


def parse_addr(text):
    """`unix:///path` (or a bare absolute path) -> the path; `udp://host:port`,
    `host:port` or `[v6]:port` -> (host, port)."""
    if text.startswith("unix://") or text.startswith("/"):
        path = text[len("unix://"):] if text.startswith("unix://") else text
        if not path.startswith("/"):
            raise ValueError("push address %r: want unix:///ABSOLUTE/PATH" % (text,))
        return path
    rest = text[len("udp://"):] if text.startswith("udp://") else text
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("push address %r: want unix:///PATH or HOST:PORT" % (text,))
    return host.strip("[]"), int(port)


class Sender:
    """A non-blocking datagram sender of trace records for one rank."""

    def __init__(self, addr, job, node, rank=None):
        addr = parse_addr(addr) if isinstance(addr, str) else addr
        if isinstance(addr, str):
            self.addr = addr
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        else:
            host, port = addr
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            self.addr = sockaddr
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.job, self.node, self.rank = str(job), str(node), rank
        self.sent = 0
        self.dropped = 0

    def send(self, record):
        line = json.dumps(record, separators=(",", ":"))
        try:
            self.sock.sendto(line.encode(), self.addr)
            self.sent += 1
        except OSError:
            # A full socket buffer, an unreachable sensor or a socket this
            # process may not write to: the record is lost, the training
            # step is not.
            self.dropped += 1

    def collective(self, op, seq, nbytes, arrive, ts, group=None):
        record = {
            "t": "collective",
            "ts": ts,
            "node": self.node,
            "job": self.job,
            "rank": self.rank,
            "op": op,
            "seq": seq,
            "bytes": nbytes,
            "arrive": arrive,
            "dur_us": max(0.0, (ts - arrive) * 1e6),
        }
        if group is not None:
            record["pg"] = group
        self.send(record)


def _env_rank():
    for name in ("KEEL_RANK", "RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def _nbytes(value):
    """Bytes of a tensor or a list of tensors; 0 for anything else."""
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    numel = getattr(value, "numel", None)
    size = getattr(value, "element_size", None)
    if callable(numel) and callable(size):
        return int(numel()) * int(size())
    return 0


def instrument(addr=None, job=None, node=None, rank=None, groups=None, dist=None):
    """Wraps torch.distributed's collectives so that each one is reported.

    Synchronous calls only: an `async_op=True` call returns before the
    collective has run, so there is nothing to time yet; it passes through
    unreported. `seq` counts the collectives of each process group, the
    order in which every rank of that group must call them; the group is
    sent as `pg` (`world` for the default group). `groups` (or KEEL_GROUPS,
    comma-separated) limits the reports to those groups. Returns the Sender.
    """
    if dist is None:
        import torch.distributed as dist
    addr = addr or os.environ.get("KEEL_PUSH")
    if not addr:
        raise ValueError("keel_push: no sensor address (set KEEL_PUSH=unix:///run/keel/push.sock)")
    job = job or os.environ.get("KEEL_JOB") or os.environ.get("SLURM_JOB_ID") or "0"
    node = node or os.environ.get("KEEL_NODE") or socket.gethostname()
    sender = Sender(addr, job, node, rank if rank is not None else _env_rank())
    if groups is None and os.environ.get("KEEL_GROUPS"):
        groups = os.environ["KEEL_GROUPS"].split(",")
    groups = None if groups is None else {g.strip() for g in groups}

    sync = None
    try:
        import torch

        if torch.cuda.is_available():
            sync = torch.cuda.synchronize
    except ImportError:
        pass

    world = getattr(getattr(dist, "GroupMember", None), "WORLD", None)
    seqs = {}
    lock = threading.Lock()

    def group_key(group):
        if group is None or group is world:
            return "world"
        return str(getattr(group, "group_name", None) or id(group))

    def wrap(fn, op):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                bound = sig.bind_partial(*args, **kwargs).arguments
            except TypeError:
                return fn(*args, **kwargs)
            if bound.get("async_op"):
                return fn(*args, **kwargs)
            if sender.rank is None:
                sender.rank = dist.get_rank()
            if sync is not None:
                sync()
            arrive = time.time()
            result = fn(*args, **kwargs)
            if sync is not None:
                sync()
            ts = time.time()
            key = group_key(bound.get("group"))
            if groups is not None and key not in groups:
                return result
            with lock:
                seq = seqs.get(key, 0)
                seqs[key] = seq + 1
            # The largest buffer the call touches: the whole result of a
            # gather, the whole input of a reduce-scatter (as nccl-tests count).
            nbytes = max([_nbytes(v) for v in bound.values()] + [0])
            sender.collective(op, seq, nbytes, arrive, ts, key)
            return result

        wrapper._keel = True
        return wrapper

    for name, op in OPS.items():
        fn = getattr(dist, name, None)
        if fn is not None and not getattr(fn, "_keel", False):
            setattr(dist, name, wrap(fn, op))
    return sender


def selftest(addr, count, job, node, rank):
    sender = Sender(addr, job, node, rank)
    for seq in range(count):
        arrive = time.time()
        ts = arrive + 0.000250 + 0.000001 * seq
        sender.collective("allreduce", seq, 16 << 20, arrive, ts, "world")
    print("keel_push: sent %d, dropped %d" % (sender.sent, sender.dropped), file=sys.stderr)
    return 0 if sender.sent == count else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--selftest", metavar="ADDRESS", required=True,
                   help="send synthetic collective records to this sensor "
                        "(unix:///PATH or HOST:PORT)")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--job", default=os.environ.get("KEEL_JOB", "selftest"))
    p.add_argument("--node", default=os.environ.get("KEEL_NODE", socket.gethostname()))
    p.add_argument("--rank", type=int, default=_env_rank() or 0)
    a = p.parse_args(argv)
    try:
        return selftest(a.selftest, a.count, a.job, a.node, a.rank)
    except (ValueError, OSError) as e:
        print("keel_push: %s" % (e,), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
