#!/usr/bin/env python3
"""Writes a realistic audit journal of about SIZE bytes (default 1 GiB) ending now, rotated the
way the server rotates it (FILE, FILE.1, ... of at most --max-bytes each), and the inventory it
talks about. For measuring GET /v1/history and /v1/usage on a big journal:

    Benchmarks/history/make-journal.py /tmp/hist/audit.jsonl --inventory /tmp/hist/inventory.yaml
    Benchmarks/history/measure.sh /tmp/hist
"""
import argparse, datetime, os, random

parser = argparse.ArgumentParser()
parser.add_argument("path")
parser.add_argument("--inventory", required=True)
parser.add_argument("--size", type=int, default=1 << 30)
parser.add_argument("--max-bytes", type=int, default=256 << 20)
parser.add_argument("--days", type=float, default=60)
parser.add_argument("--seed", type=int, default=7)
args = parser.parse_args()
rng = random.Random(args.seed)

types = [("array", 400), ("switch", 800), ("host", 800)]
resources = [(f"{t}-{i:04d}", t) for t, n in types for i in range(1, n + 1)]
with open(args.inventory, "w") as out:
    out.write("resources:\n")
    for name, t in resources:
        out.write(f"  - name: {name}\n    type: {t}\n")

def stamp(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"

# Roughly 247 bytes a line: the number of lines sets the time step.
lines_expected = args.size // 247
now_ms = int(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1000)
t = now_ms - int(args.days * 86400 * 1000)
step = args.days * 86400 * 1000 / lines_expected
held = {}   # resource -> (lease, holder, granted ms)
epochs = {}
lease_counter = 1_000_000
files = []  # chunks, oldest first
written = 0
current = bytearray()
chunks = []

def emit(line):
    global written, current
    data = line.encode() + b"\n"
    if len(current) + len(data) > args.max_bytes:
        chunks.append(bytes(current))
        current = bytearray()
    current += data
    written += len(data)

emit(f'{{"time":"{stamp(t)}","event":"started","version":"0.9.0","state":true}}')
while written < args.size:
    t += int(rng.expovariate(1 / step)) + 1
    name, typ = resources[rng.randrange(len(resources))] if rng.random() < 0.8 else resources[rng.randrange(40)]
    if name in held:
        lease, holder, since = held.pop(name)
        heldsec = (t - since) / 1000
        r = rng.random()
        res = f'[{{"name":"{name}","type":"{typ}"}}]'
        if r < 0.9:
            reason = "release" if r < 0.8 else "disconnect"
            emit(f'{{"time":"{stamp(t)}","event":"released","lease":"{lease}","holder":"{holder}","peer":"10.1.{rng.randrange(256)}.{rng.randrange(256)}:{rng.randrange(1024, 65535)}","resources":{res},"reason":"{reason}","held_seconds":{heldsec}}}')
        elif r < 0.97:
            emit(f'{{"time":"{stamp(t)}","event":"revoked","lease":"{lease}","holder":"{holder}","peer":"10.1.2.3:4567","resources":{res},"reason":"freed by an admin","by":"10.9.9.9:5000","held_seconds":{heldsec}}}')
        else:
            emit(f'{{"time":"{stamp(t)}","event":"expired","lease":"{lease}","holder":"{holder}","peer":"10.1.2.3:4567","resources":{res},"held_seconds":{heldsec}}}')
    else:
        lease_counter += 1
        lease = "L" + format(lease_counter, "x")
        job = rng.randrange(100000)
        holder = rng.choice(["ci/nightly", "ci/premerge", "dev/alice", "dev/bob", "ci/perf"]) + f"-{job}"
        epochs[name] = epochs.get(name, 0) + 1
        waited = round(rng.expovariate(1 / 30), 3) if rng.random() < 0.3 else 0
        held[name] = (lease, holder, t)
        emit(f'{{"time":"{stamp(t)}","event":"granted","lease":"{lease}","holder":"{holder}","peer":"10.1.{rng.randrange(256)}.{rng.randrange(256)}:{rng.randrange(1024, 65535)}","resources":[{{"name":"{name}","type":"{typ}","epoch":{epochs[name]}}}],"meta":{{"job":"https://ci.example/job/{job}","commit":"{rng.getrandbits(40):010x}"}},"waited_seconds":{waited}}}')
chunks.append(bytes(current))
os.makedirs(os.path.dirname(os.path.abspath(args.path)), exist_ok=True)
for index, chunk in enumerate(reversed(chunks)):
    name = args.path if index == 0 else f"{args.path}.{index}"
    with open(name, "wb") as out:
        out.write(chunk)
print(f"{written} bytes in {len(chunks)} files, {len(resources)} resources, {stamp(now_ms - int(args.days * 86400000))} .. {stamp(t)}")
