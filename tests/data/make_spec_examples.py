#!/usr/bin/env python3
"""Writes spec_examples.jsonl: the example records of spec/trace-format.md,
written out so that the spec's own example finding must follow from them.

Job 4242 (the spec's job record, verbatim) runs TP=8 over n01 and n02. From
1763800030.0 (the spec's example label onset) rank 5 on n02 (GPU 1) arrives
2.1 ms late at every all-reduce while its GPU's PCIe RX runs at 9 GB/s, so the
spec's example finding (tp_straggler, cause pcie, job 4242, rank 5, n02) is
the expected output. n02's clock runs 30 ms ahead of n01's. The spec's
example metric, collective and request lines appear verbatim. Plain numbers
only, no randomness: the file is the same on every run."""

import json

out = []
out.append('{"t":"job","ts":1763800000.0,"job":"4242","state":"RUNNING","tenant":"team-a",'
           '"nodes":["n01","n02"],"ranks":{"n01":[0,1,2,3],"n02":[4,5,6,7]},'
           '"gpus":{"0":0,"1":1,"2":2,"3":3,"4":0,"5":1,"6":2,"7":3},'
           '"nics":{"0":"mlx5_0","1":"mlx5_1","2":"mlx5_2","3":"mlx5_3","4":"mlx5_0","5":"mlx5_1","6":"mlx5_2","7":"mlx5_3"},'
           '"tp":8,"pp":1,"replica":"r1"}')
out.append('{"t":"request","ts":1763800001.5,"node":"n01","job":"4242","id":"req-91","phase":"arrive","prompt_tokens":812}')
out.append('{"t":"metric","ts":1763800001.0,"node":"n02","name":"DCGM_FI_DEV_GPU_UTIL","labels":{"gpu":"1"},"value":97.0}')

OFFSET = {"n01": 0.0, "n02": 0.030}
STEP = 0.05          # one all-reduce every 50 ms: 2.1 ms late is a 4% slowdown
ONSET = 1763800030.0
LATE = 0.0021        # rank 5 arrives 2.1 ms after its peers
BASE_US = 300.0      # time inside the collective when nobody is late

lines = []
t = 1763800020.0
seq = 1000
while t < 1763800036.0:
    late = t >= ONSET
    leave = t + (LATE if late else 0.0) + BASE_US / 1e6
    for rank in range(8):
        node = "n01" if rank < 4 else "n02"
        arrive = t + (LATE if (late and rank == 5) else 0.0) + rank * 0.00001
        dur_us = (leave - arrive) * 1e6
        lines.append((leave + OFFSET[node], json.dumps({
            "t": "collective", "ts": round(leave + OFFSET[node], 6), "node": node, "job": "4242",
            "rank": rank, "op": "allreduce", "seq": seq, "bytes": 16777216,
            "arrive": round(arrive + OFFSET[node], 6), "dur_us": round(dur_us, 1)}, separators=(",", ":"))))
    seq += 1
    t += STEP

s = 1763800016.0
while s < 1763800036.0:
    for node in ("n01", "n02"):
        for gpu in range(4):
            rx = 9.0e9 if (node == "n02" and gpu == 1 and s >= ONSET) else 1.5e7
            for name, value in (("DCGM_FI_DEV_GPU_UTIL", 97.0), ("DCGM_FI_PROF_PCIE_RX_BYTES", rx),
                                ("DCGM_FI_PROF_PCIE_TX_BYTES", 6.0e6), ("DCGM_FI_DEV_SM_CLOCK", 1440.0)):
                lines.append((s + OFFSET[node], json.dumps({
                    "t": "metric", "ts": round(s + OFFSET[node], 3), "node": node, "name": name,
                    "labels": {"gpu": str(gpu)}, "value": value}, separators=(",", ":"))))
        lines.append((s + OFFSET[node], json.dumps({
            "t": "metric", "ts": round(s + OFFSET[node], 3), "node": node,
            "name": "node_pressure_cpu_waiting_seconds_total", "labels": {},
            "value": round(1000.0 + 0.002 * (s - 1763800000.0), 4)}, separators=(",", ":"))))
    s += 1.0

lines.append((1763800001.2034, '{"t":"collective","ts":1763800001.2034,"node":"n02","job":"4242","rank":5,'
              '"op":"allreduce","seq":1187,"bytes":16777216,"arrive":1763800001.2021,"dur_us":1312.0}'))
lines.sort(key=lambda x: x[0])
out.extend(l for _, l in lines)

with open("spec_examples.jsonl", "w") as f:
    f.write("\n".join(out) + "\n")
with open("spec_examples.labels.jsonl", "w") as f:
    f.write('{"kind":"tp_straggler","cause":"pcie","job":"4242","node":"n02","rank":5,"onset":1763800030.0,"end":1763800090.0}\n')
