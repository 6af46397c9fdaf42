#!/usr/bin/env python3
"""keel's chaos run on one GPU host: real faults in a real NCCL job, scored
against what keel's controllers committed (docs/chaos.md, "On GPUs").

Starts, as real processes with mutual TLS (`keel cert`): three `keel
controller` replicas (Raft), a `keel correlator` host, a `keel executor`
(log only) and one `keel sensor` for the node with three sources: `push`
(UDP on loopback, fed by the ranks through contrib/keel_push.py), `linux`
(/proc/pressure/cpu, TCP and link counters) and `nvml` (the GPUs). It
registers the job (`keel job register`), starts a two-rank
torch.distributed NCCL job (contrib/keel_torch_job.py, one process per GPU),
then injects, one at a time with healthy gaps:

- `gpu`:  30% more matrix products each step on one rank;
- `host`: the rank pinned (sched_setaffinity, all its threads) to one core with three
          busy processes pinned there too; the rank's own affinity given
          back at the end;
- `pcie`: a 128 MiB pageable host buffer copied to the rank's GPU each step.

A label (spec/trace-format.md) is written when each fault starts (with its
planned end) and rewritten when it ends. After the job ends (`keel job
end`), a process of no job holds 96% of GPU 0's memory without computing
(`gpu_squatter`). Then every committed finding is read (`keel findings`),
each at the moment it was committed, and scored with `keel eval --findings`
and per label (first matching finding, onset -> committed).

    python3 contrib/keel_gpu_chaos.py --keel ./keel --dir /tmp/run
    python3 contrib/keel_gpu_chaos.py --keel target/release/keel --dir /tmp/dry --dry

`--dry` needs no GPU and no torch: one process plays both ranks (delays
instead of GPU work), no NVML source, no squatter; it checks the plumbing
(certificates, roles, job registration, push, labels, findings, scoring).
Everything started is stopped on exit (SIGTERM, then SIGKILL); hogs are
bounded by `timeout` as well.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = "gpu-1"
PUSH_PORT = 7600
LATE_SLACK_S = 10.0  # keel_detect::score::LATE_SLACK_S

# NVLink multicast stays off on shared GPU hosts.
SAFE_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def now():
    return time.time()


def log(msg):
    print("gpu-chaos: %s" % msg, file=sys.stderr, flush=True)


def cpus(text):
    """`2-5,8` -> {2, 3, 4, 5, 8}."""
    out = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    # Only cores this machine lets us use; none left means no pinning.
    return (out & os.sched_getaffinity(0)) or os.sched_getaffinity(0)


def pin_all_threads(pid, cores):
    """sched_setaffinity on every thread of `pid` (as `taskset -a -p`)."""
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:
            pass


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Run:
    def __init__(self, a):
        self.a = a
        self.dir = os.path.abspath(a.dir)
        os.makedirs(self.dir, exist_ok=True)
        self.keel = os.path.abspath(a.keel)
        self.procs = []  # (name, Popen)
        self.ctl_ports = [free_port() for _ in range(3)]
        self.control = os.path.join(self.dir, "control.json")
        self.labels = []
        self.events = []
        self.write_control({})

    # ---- processes -------------------------------------------------------
    def run_keel(self, args, check=True):
        p = subprocess.run([self.keel] + args, capture_output=True, text=True,
                           env=dict(os.environ, RUST_LOG="warn"))
        if check and p.returncode != 0:
            raise RuntimeError("keel %s: %s" % (" ".join(args), p.stderr.strip()))
        return p

    def issue(self, role, name):
        out = os.path.join(self.dir, "%s-%s" % (role, name))
        self.run_keel(["cert", "issue", "--role", role, "--name", name,
                       "--ca", os.path.join(self.dir, "ca"), "--out", out])
        return out

    def spawn(self, name, argv, env=None, stdout=None):
        logf = open(os.path.join(self.dir, name + ".log"), "w")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                             stdout=stdout if stdout is not None else subprocess.DEVNULL,
                             stderr=logf, env=env or os.environ.copy(),
                             start_new_session=True)
        self.procs.append((name, p))
        return p

    def spawn_pinned(self, name, argv, cores, env=None, stdout=None):
        def pin():
            os.sched_setaffinity(0, cores)
        logf = open(os.path.join(self.dir, name + ".log"), "w")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=logf,
                             env=env, start_new_session=True, preexec_fn=pin)
        self.procs.append((name, p))
        return p

    def role(self, name, role, cfg):
        path = os.path.join(self.dir, name + ".toml")
        with open(path, "w") as f:
            f.write(cfg)
        env = dict(os.environ, RUST_LOG="info")
        argv = [self.keel, role, "--config", path]
        if self.a.keel_cpus:
            return self.spawn_pinned(name, argv, cpus(self.a.keel_cpus), env=env,
                                     stdout=subprocess.DEVNULL)
        return self.spawn(name, argv, env=env)

    def controllers_toml(self):
        return "".join('[[controllers]]\naddr = "127.0.0.1:%d"\nname = "ctl-%d"\n' % (p, i + 1)
                       for i, p in enumerate(self.ctl_ports))

    def at(self, i):
        return ["--controller", "127.0.0.1:%d" % self.ctl_ports[i], "--name", "ctl-%d" % (i + 1),
                "--credentials", os.path.join(self.dir, "operator-op")]

    def ask(self, args, limit=30.0):
        until = now() + limit
        last = None
        while True:
            for i in range(3):
                p = self.run_keel(args + self.at(i), check=False)
                if p.returncode == 0:
                    return p.stdout
                last = p.stderr.strip()
            if now() > until:
                raise RuntimeError("keel %s: %s" % (" ".join(args), last))
            time.sleep(0.3)

    def start_keel(self):
        self.run_keel(["cert", "init", "--out", os.path.join(self.dir, "ca")])
        self.issue("operator", "op")
        for i in range(3):
            creds = self.issue("controller", "ctl-%d" % (i + 1))
            cfg = 'id = %d\nlisten = "127.0.0.1:%d"\ndata_dir = "%s"\ncredentials = "%s"\n' % (
                i + 1, self.ctl_ports[i], os.path.join(self.dir, "data-%d" % (i + 1)), creds)
            for j in range(3):
                if j != i:
                    cfg += '[[peers]]\nid = %d\naddr = "127.0.0.1:%d"\nname = "ctl-%d"\n' % (
                        j + 1, self.ctl_ports[j], j + 1)
            self.role("ctl-%d" % (i + 1), "controller", cfg)
        creds = self.issue("correlator", "corr-a")
        self.role("corr-a", "correlator", 'listen = "127.0.0.1:%d"\ncredentials = "%s"\n%s' % (
            free_port(), creds, self.controllers_toml()))
        creds = self.issue("executor", "exec-1")
        self.role("exec-1", "executor", 'credentials = "%s"\nstate_dir = "%s"\n%s\n[log]\n' % (
            creds, os.path.join(self.dir, "executor-state"), self.controllers_toml()))
        creds = self.issue("sensor", self.a.node)
        cfg = 'node = "%s"\ncredentials = "%s"\n%s\n' % (self.a.node, creds, self.controllers_toml())
        cfg += '[[source]]\ntype = "push"\nlisten = "udp://127.0.0.1:%d"\n\n' % PUSH_PORT
        cfg += '[[source]]\ntype = "linux"\ninterval_ms = %d\n\n' % self.a.interval_ms
        if not self.a.dry:
            cfg += '[[source]]\ntype = "nvml"\ninterval_ms = %d\n' % self.a.interval_ms
        self.role("sensor-" + self.a.node, "sensor", cfg)
        self.ask(["job", "register", "--job", JOB, "--ranks", "%s=0,1" % self.a.node,
                  "--gpus", "0=0,1=1", "--node-gpus", "%s=0,1" % self.a.node], limit=60)
        self.event("job %s registered (ranks 0,1 on %s, GPUs 0,1)" % (JOB, self.a.node))

    def check_alive(self):
        for name, p in self.procs:
            if name.startswith(("ctl-", "corr-", "exec-", "sensor-")) and p.poll() is not None:
                raise RuntimeError("%s exited: %s (see %s.log)" % (name, p.returncode, name))

    def stop_all(self):
        for name, p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        until = now() + 5
        for name, p in self.procs:
            while p.poll() is None and now() < until:
                time.sleep(0.05)
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()

    # ---- workload and faults ----------------------------------------------
    def event(self, what):
        t = now()
        self.events.append({"ts": t, "what": what})
        log(what)

    def write_control(self, c):
        tmp = self.control + ".tmp"
        with open(tmp, "w") as f:
            json.dump(c, f)
        os.replace(tmp, self.control)

    def save_labels(self):
        with open(os.path.join(self.dir, "labels.jsonl"), "w") as f:
            for l in self.labels:
                f.write(json.dumps(l) + "\n")

    def smi(self, why):
        """One line per GPU of `nvidia-smi --query-gpu` into nvidia-smi-episodes.csv."""
        if not shutil.which("nvidia-smi"):
            return
        q = ("timestamp,index,utilization.gpu,memory.used,memory.total,clocks.sm,"
             "power.draw,temperature.gpu,pcie.link.gen.current,pcie.link.width.current")
        p = subprocess.run(["nvidia-smi", "--query-gpu=" + q, "--format=csv,noheader"],
                           capture_output=True, text=True)
        with open(os.path.join(self.dir, "nvidia-smi-episodes.csv"), "a") as f:
            if f.tell() == 0:
                f.write("why," + q + "\n")
            for line in (p.stdout or p.stderr).strip().splitlines():
                f.write("%s,%s\n" % (why, line))

    def start_job(self):
        if shutil.which("nvidia-smi") and not self.a.dry:
            # PCIe rx/tx MB/s, utilisation, power, clocks once a second for the whole run.
            with open(os.path.join(self.dir, "dmon.txt"), "w") as out:
                self.spawn("dmon", ["nvidia-smi", "dmon", "-s", "puct", "-d", "1", "-o", "T"],
                           stdout=out)
        rec = os.path.join(self.dir, "ranks")
        os.makedirs(rec, exist_ok=True)
        script = os.path.join(HERE, "keel_torch_job.py")
        common = ["--push", "udp://127.0.0.1:%d" % PUSH_PORT, "--job", JOB, "--node", self.a.node,
                  "--control", self.control, "--record", rec] + self.a.job_args.split()
        env = dict(os.environ, **SAFE_ENV, PYTHONUNBUFFERED="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(free_port()), WORLD_SIZE="2")
        self.ranks = []
        if self.a.dry:
            p = self.spawn("rank-0", [self.a.python, script, "--dry"] + common, env=env,
                           stdout=subprocess.PIPE)
            self.ranks = [p, p]
        else:
            for r in range(2):
                p = self.spawn_pinned("rank-%d" % r, [self.a.python, script, "--rank", str(r)] + common,
                                      cpus(self.a.rank_cpus[r]),
                                      env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                                      stdout=subprocess.PIPE)
                self.ranks.append(p)
        out = self.ranks[0].stdout
        until = now() + 180
        while now() < until:
            line = out.readline()
            if not line:
                raise RuntimeError("rank 0 ended before starting (see rank-0.log)")
            line = line.decode().strip()
            if line.startswith("start="):
                self.event("job started (both ranks past NCCL init and warm-up)")
                return float(line[6:])
        raise RuntimeError("the job never started")

    def wait(self, until):
        while now() < until:
            self.check_alive()
            for r, p in enumerate(self.ranks):
                if p.poll() is not None:
                    raise RuntimeError("rank %d exited: %s" % (r, p.returncode))
            time.sleep(0.05)

    def inject(self, cause, rank, dur):
        hogs = []
        if cause in ("gpu", "pcie"):
            self.write_control({"fault": cause, "rank": rank})
            how = {"gpu": "30%% more bf16 matrix products each step on rank %d (GPU %d)",
                   "pcie": "a 128 MiB pageable host buffer copied to GPU %d each step (rank %d)"}[cause]
            how = how % ((rank, rank) if cause == "gpu" else (rank, rank))
        else:
            core = min(cpus(self.a.rank_cpus[rank]))
            pid = self.ranks[rank].pid
            pin_all_threads(pid, {core})
            for i in range(self.a.hogs):
                hogs.append(self.spawn_pinned(
                    "hog-%d" % i, ["timeout", str(int(dur + 30)), self.a.python, "-c",
                                   "while True: pass"], {core}))
            seen = sorted({str(sorted(os.sched_getaffinity(int(t))))
                           for t in os.listdir("/proc/%d/task" % pid)}
                          | {"hog:" + str(sorted(os.sched_getaffinity(h.pid))) for h in hogs})
            how = "rank %d (%d threads) pinned to core %s with %d busy processes pinned there (affinities now: %s)" % (
                rank, len(os.listdir("/proc/%d/task" % pid)), core, self.a.hogs, ", ".join(seen))
            if self.a.dry:
                # One process plays both ranks: it adds the delay itself.
                self.write_control({"fault": cause, "rank": rank})
        onset = now()
        label = {"kind": "tp_straggler", "cause": cause, "job": JOB, "node": self.a.node,
                 "rank": rank, "onset": onset, "end": onset + dur}
        self.labels.append(label)
        self.save_labels()
        self.event("fault on: %s: %s" % (cause, how))
        return label, hogs

    def revert(self, label, hogs):
        cause, rank = label["cause"], label["rank"]
        if cause in ("gpu", "pcie") or self.a.dry:
            self.write_control({})
        if cause == "host":
            for h in hogs:
                try:
                    os.killpg(h.pid, signal.SIGKILL)
                except OSError:
                    pass
                h.wait()
            pin_all_threads(self.ranks[rank].pid, cpus(self.a.rank_cpus[rank]))
        label["end"] = now()
        self.save_labels()
        self.event("fault off: %s on rank %d" % (cause, rank))

    def squat(self):
        script = os.path.join(HERE, "keel_torch_job.py")
        p = self.spawn("squatter", [self.a.python, script, "--squat", "0", "--fraction", "0.96",
                                    "--seconds", str(self.a.squat_s + 30)],
                       env=dict(os.environ, **SAFE_ENV, PYTHONUNBUFFERED="1"),
                       stdout=subprocess.PIPE)
        line = p.stdout.readline().decode().strip()
        if not line.startswith("held="):
            raise RuntimeError("the squatter did not start (see squatter.log): %r" % line)
        onset = now()
        label = {"kind": "gpu_squatter", "cause": "engine", "node": self.a.node, "gpu": 0,
                 "onset": onset, "end": onset + self.a.squat_s}
        self.labels.append(label)
        self.save_labels()
        self.event("squatter: a process of no job holds 96%% of GPU 0's memory, idle (%s)" % line)
        self.wait_plain(onset + self.a.squat_s / 2)
        self.smi("squatter")
        with open(os.path.join(self.dir, "nvidia-smi-squatter.txt"), "w") as f:
            subprocess.run(["nvidia-smi"], stdout=f, stderr=subprocess.STDOUT)
        self.wait_plain(onset + self.a.squat_s)
        os.killpg(p.pid, signal.SIGTERM)
        p.wait()
        label["end"] = now()
        self.save_labels()
        self.event("squatter ended")

    def wait_plain(self, until):
        while now() < until:
            self.check_alive()
            time.sleep(0.05)

    # ---- the run ----------------------------------------------------------
    def go(self):
        self.start_keel()
        start = self.start_job()
        self.wait(start + self.a.healthy_s / 2)
        self.smi("healthy")
        t = start + self.a.healthy_s
        for cause, rank in self.a.faults:
            self.wait(t)
            label, hogs = self.inject(cause, rank, self.a.fault_s)
            try:
                self.wait(t + self.a.fault_s / 2)
                self.smi("%s-rank%d" % (cause, rank))
                self.wait(t + self.a.fault_s)
            finally:
                self.revert(label, hogs)
            t = now() + self.a.gap_s
        self.wait(t)
        self.write_control({"stop": True})
        self.ask(["job", "end", "--job", JOB, "--state", "COMPLETED"])
        self.event("job told ended (keel job end --state COMPLETED)")
        for r, p in enumerate(self.ranks):
            try:
                out, _ = p.communicate(timeout=60)
                if out:
                    with open(os.path.join(self.dir, "rank-%d.out" % r), "ab") as f:
                        f.write(out)
            except subprocess.TimeoutExpired:
                self.event("rank %d did not exit within 60 s" % r)
        self.event("job's processes exited")
        if not self.a.dry and self.a.squat_s > 0:
            time.sleep(1.0)
            self.squat()
        self.wait_plain(now() + self.a.settle_s)
        return self.collect()

    def collect(self):
        entries = json.loads(self.ask(["findings", "--json"]))
        findings = []
        for e in entries:
            f = dict(e["finding"])
            if e.get("opened"):
                f["ts"] = e["opened"]
            findings.append(f)
        with open(os.path.join(self.dir, "findings.jsonl"), "w") as fh:
            for f in findings:
                fh.write(json.dumps(f) + "\n")
        with open(os.path.join(self.dir, "findings-raw.json"), "w") as fh:
            json.dump(entries, fh, indent=1)
        # `--trace` is required beside `--findings` but not read.
        fj = os.path.join(self.dir, "findings.jsonl")
        ev = self.run_keel(["eval", "--trace", fj, "--findings", fj,
                            "--labels", os.path.join(self.dir, "labels.jsonl"), "--json"],
                           check=False)
        table = self.run_keel(["eval", "--trace", fj, "--findings", fj,
                               "--labels", os.path.join(self.dir, "labels.jsonl")], check=False)
        rows = []
        for l in self.labels:
            def match(f):
                if f.get("kind") != l["kind"] or f.get("node") != l["node"]:
                    return False
                if l["kind"] == "gpu_squatter":
                    if f.get("gpu") != l["gpu"]:
                        return False
                elif f.get("job") != l["job"] or f.get("rank") != l["rank"]:
                    return False
                return l["onset"] <= f["ts"] <= l["end"] + LATE_SLACK_S
            hits = sorted((f for f in findings if match(f)), key=lambda f: f["ts"])
            first = hits[0] if hits else None
            rows.append({
                "label": l,
                "found": first is not None,
                "cause": first and first.get("cause"),
                "latency_s": first and round(first["ts"] - l["onset"], 3),
                "evidence": first and first.get("evidence"),
            })
        summary = {
            "job": JOB,
            "node": self.a.node,
            "dry": self.a.dry,
            "events": self.events,
            "episodes": rows,
            "findings": len(findings),
            "eval": json.loads(ev.stdout) if ev.returncode == 0 and ev.stdout.strip() else ev.stderr,
            "eval_table": table.stdout if table.returncode == 0 else table.stderr,
        }
        with open(os.path.join(self.dir, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)
        print(summary["eval_table"])
        for r in rows:
            l = r["label"]
            who = ("rank %s" % l.get("rank")) if l["kind"] == "tp_straggler" else ("gpu %s" % l.get("gpu"))
            print("%-13s %-6s %-7s found=%-5s cause=%-8s onset->committed=%s" % (
                l["kind"], l["cause"], who, r["found"], r["cause"], r["latency_s"]))
        return summary


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keel", required=True, help="the keel binary (built with --features nvml)")
    p.add_argument("--dir", required=True, help="where configs, logs, labels, findings go")
    p.add_argument("--python", default=sys.executable, help="the python with torch")
    p.add_argument("--node", default="gpu-node")
    p.add_argument("--dry", action="store_true")
    p.add_argument("--healthy-s", type=float, default=15.0)
    p.add_argument("--fault-s", type=float, default=15.0)
    p.add_argument("--gap-s", type=float, default=10.0)
    p.add_argument("--squat-s", type=float, default=20.0)
    p.add_argument("--settle-s", type=float, default=4.0)
    p.add_argument("--interval-ms", type=int, default=250, help="linux and nvml sources")
    p.add_argument("--faults", default="gpu:1,host:0,pcie:1",
                   help="CAUSE:RANK,... in order")
    p.add_argument("--rank-cpus", default="2-5,10-13", help="each rank's cores, ';'-separated")
    p.add_argument("--hogs", type=int, default=3, help="busy processes of a host fault")
    p.add_argument("--job-args", default="", help="more arguments for keel_torch_job.py")
    p.add_argument("--keel-cpus", default=None, help="cores for keel's processes, e.g. 16-31")
    a = p.parse_args()
    a.faults = [(c, int(r)) for c, r in (x.split(":") for x in a.faults.split(",") if x)]
    a.rank_cpus = a.rank_cpus.split(";") if ";" in a.rank_cpus else a.rank_cpus.split(",")
    run = Run(a)

    def on_signal(sig, _):
        raise KeyboardInterrupt("signal %d" % sig)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        run.go()
        return 0
    except (RuntimeError, KeyboardInterrupt) as e:
        log("failed: %s" % e)
        try:
            run.collect()
        except Exception as e2:  # noqa: BLE001
            log("no findings read: %s" % e2)
        return 1
    finally:
        run.write_control({"stop": True})
        run.stop_all()


if __name__ == "__main__":
    sys.exit(main())
