"""RSS per idle lease connection (plain, TLS, compression, TLS + compression) and full TLS
handshakes per second, against the real `leasehold serve` (release build), on loopback.

    .venv/bin/python Benchmarks/tls_compression.py memory [--connections 10000]
    .venv/bin/python Benchmarks/tls_compression.py handshakes [--seconds 10]

`memory` starts a fresh server for each variant, opens N `/v1/lease` connections that each hold
one resource, waits until every one is granted and then a little while idle, and reads the
server's RSS from /proc: (RSS with N held leases - RSS before) / N. The client is Python's
`websockets` (asyncio), which offers permessage-deflate unless told not to.

`handshakes` runs `openssl s_time -new` (a full handshake per connection, no session reuse)
against a TLS listener, in as many processes as there are cores, and prints connections/s.

Figures depend on the machine: compare variants within one run, never against a fixed number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BINARY = Path(os.environ.get("LEASEHOLD_BIN", REPO / ".build" / "release" / "leasehold"))
# Handshakes in flight at once; their transient memory is part of the RSS read afterwards.
CONCURRENCY = 200


def make_certificate(directory: Path) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return str(cert), str(key)


def start_server(directory: Path, count: int, tls: bool, compression: bool,
                 prefix: list[str] | None = None) -> tuple[subprocess.Popen, int]:
    inventory = directory / "inventory.yaml"
    inventory.write_text("resources:\n" + "".join(f"  - name: bench-{i:05}\n    type: bench\n" for i in range(count)))
    cert, key = make_certificate(directory)
    listen = ["--listen-tls", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key] if tls else ["--listen", "127.0.0.1:0"]
    process = subprocess.Popen(
        [*(prefix or []), str(BINARY), "serve", *listen, "--inventory", str(inventory), "--log-level", "warning", "--loops", "1",
         "--max-connections-per-address", str(count + 100), "--compression", "on" if compression else "off"],
        stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r":(\d+)", line)
    assert match, line
    return process, int(match.group(1))


def server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def hold_many(port: int, count: int, tls: bool, compression: bool, cert: str | None) -> list:
    import ssl

    from websockets.asyncio.client import connect

    context = None
    if tls:
        context = ssl.create_default_context(cafile=cert)
    scheme = "wss" if tls else "ws"
    sockets = []
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with semaphore:
            ws = await connect(f"{scheme}://127.0.0.1:{port}/v1/lease", ssl=context, open_timeout=120,
                               compression="deflate" if compression else None, ping_interval=None,
                               max_queue=4)
            await ws.send(json.dumps({"op": "acquire", "want": [{"name": f"bench-{i:05}"}], "holder": f"b{i}"}))
            granted = json.loads(await ws.recv())
            assert granted["event"] == "granted", granted
            if compression:
                assert ws.response.headers.get("Sec-WebSocket-Extensions"), "compression was not negotiated"
            sockets.append(ws)

    await asyncio.gather(*(one(i) for i in range(count)))
    return sockets


def memory(connections: int, variants: list[str]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"| variant | RSS before | RSS with {connections} idle leases | per connection |")
    print("| --- | --- | --- | --- |")
    for tls, compression in [(False, False), (True, False), (False, True), (True, True)]:
        name = {(False, False): "plain", (True, False): "TLS", (False, True): "compression",
                (True, True): "TLS + compression"}[(tls, compression)]
        if variants and name not in variants:
            continue
        with tempfile.TemporaryDirectory() as temporary:
            directory = Path(temporary)
            process, port = start_server(directory, connections, tls, compression)
            try:
                time.sleep(0.5)
                before = rss(process.pid)

                async def run() -> int:
                    sockets = await hold_many(port, connections, tls, compression, str(directory / "cert.pem"))
                    await asyncio.sleep(2)  # idle: nothing in flight
                    after = rss(process.pid)
                    await asyncio.gather(*(ws.close() for ws in sockets))
                    return after

                after = asyncio.run(run())
                per = (after - before) / connections
                print(f"| {name} | {before / 2**20:.1f} MiB | {after / 2**20:.1f} MiB | {per:,.0f} bytes ({per / 1024:.1f} KiB) |",
                      flush=True)
            finally:
                process.terminate()
                process.wait(timeout=30)


async def watch_run(port: int, watchers: int, changes: int, compressed: bool, pid: int) -> tuple[float, int, int]:
    """Opens `watchers` raw /v1/watch streams (frames counted, payloads not inflated: the clients
    must cost little next to the server), makes `changes` lease changes 0.3 s apart, and returns
    the server CPU seconds spent from the first change until every watcher is quiet, the
    snapshots delivered and the bytes they took on the wire."""
    import base64

    extension = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if compressed else ""
    counts = [0] * watchers
    wire = [0] * watchers
    ready = asyncio.Event()
    opened = 0

    async def watcher(index: int) -> None:
        nonlocal opened
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /v1/watch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"{extension}\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert (b"permessage-deflate" in head) == compressed
        opened += 1
        if opened == watchers:
            ready.set()
        try:
            while True:
                first, second = await reader.readexactly(2)
                length = second & 0x7F
                if length == 126:
                    length = int.from_bytes(await reader.readexactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(await reader.readexactly(8), "big")
                remaining = length
                while remaining:
                    chunk = await reader.read(min(remaining, 1 << 20))
                    if not chunk:
                        return
                    remaining -= len(chunk)
                if first & 0x0F in (1, 2):
                    counts[index] += 1
                    wire[index] += length
                elif first & 0x0F == 8:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return

    from websockets.asyncio.client import connect

    tasks = [asyncio.create_task(watcher(i)) for i in range(watchers)]
    await asyncio.wait_for(ready.wait(), 120)
    await asyncio.sleep(2)  # the first snapshots delivered
    base_counts, base_wire = sum(counts), sum(wire)
    cpu_before = server_cpu_seconds(pid)
    for _ in range(changes):
        async with connect(f"ws://127.0.0.1:{port}/v1/lease", compression=None) as ws:
            await ws.send(json.dumps({"op": "acquire", "want": [{"name": "bench-00000"}]}))
            await ws.recv()
        await asyncio.sleep(0.3)
    # Quiet: no snapshot for a second.
    last = -1
    while last != sum(counts):
        last = sum(counts)
        await asyncio.sleep(1)
    cpu = server_cpu_seconds(pid) - cpu_before
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return cpu, sum(counts) - base_counts, sum(wire) - base_wire


def watch(resources: int, watchers: int, changes: int) -> None:
    print(f"| watch, {resources} resources, {watchers} watchers, {changes} lease changes | server CPU | snapshots delivered | bytes on the wire | CPU per snapshot |")
    print("| --- | --- | --- | --- | --- |")
    for compressed in (False, True):
        with tempfile.TemporaryDirectory() as temporary:
            process, port = start_server(Path(temporary), resources, False, True)
            try:
                cpu, delivered, wire = asyncio.run(watch_run(port, watchers, changes, compressed, process.pid))
                print(f"| {'compressed' if compressed else 'plain'} | {cpu:.2f} s | {delivered} | {wire / 2**20:,.1f} MiB | "
                      f"{cpu / delivered * 1000 if delivered else 0:.2f} ms |", flush=True)
            finally:
                process.terminate()
                process.wait(timeout=30)


def handshakes(seconds: int, clients: int, pin: bool) -> None:
    """--pin: the server on core 0, the clients on the other cores (taskset), so the figure is
    the server's rate, not what is left of two cores after the clients' own handshake work."""
    cores = os.cpu_count() or 1
    pin = pin and cores >= 2
    server_prefix = ["taskset", "-c", "0"] if pin else []
    client_prefix = ["taskset", "-c", f"1-{cores - 1}"] if pin else []
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        process, port = start_server(directory, 10, True, True, server_prefix)
        try:
            cpu_before = server_cpu_seconds(process.pid)
            runs = [subprocess.Popen([*client_prefix, "openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
                                      "-time", str(seconds)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                    for _ in range(clients)]
            total = 0.0
            for run in runs:
                out, _ = run.communicate(timeout=seconds * 4 + 30)
                match = re.search(r"([\d.]+) connections/user sec", out)
                counted = re.search(r"(\d+) connections in ([\d.]+)s", out)
                if counted:
                    total += int(counted.group(1)) / seconds
                elif match:
                    total += float(match.group(1))
            cpu = server_cpu_seconds(process.pid) - cpu_before
            done = total * seconds
            where = "server on core 0, clients on the others" if pin else "clients on the same cores"
            print(f"full TLS handshakes: {total:,.0f}/s ({clients} openssl s_time clients, {where}, {seconds} s, "
                  f"server --loops 1); server CPU {cpu:.1f} s: {done / cpu if cpu else 0:,.0f} handshakes per server CPU-second")
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["memory", "handshakes", "watch"])
    parser.add_argument("--resources", type=int, default=20_000)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=200, help="connections opened at once")
    parser.add_argument("--clients", type=int, default=os.cpu_count() or 1, help="handshakes: openssl s_time processes")
    parser.add_argument("--pin", action="store_true", help="handshakes: server on core 0, clients on the others")
    parser.add_argument("--only", action="append", default=[], help="a variant: plain, TLS, compression, 'TLS + compression'")
    arguments = parser.parse_args()
    global CONCURRENCY
    CONCURRENCY = arguments.concurrency
    if not BINARY.is_file():
        sys.exit(f"{BINARY} not found: swift build -c release --product leasehold (or set LEASEHOLD_BIN)")
    if arguments.what == "memory":
        memory(arguments.connections, arguments.only)
    elif arguments.what == "watch":
        watch(arguments.resources, arguments.watchers, arguments.changes)
    else:
        handshakes(arguments.seconds, arguments.clients, arguments.pin)


if __name__ == "__main__":
    main()
