"""A bounded load test of `mnist serve` on this machine: N requests from C concurrent clients, then stop.

Starts the real `mnist serve` on a free port of 127.0.0.1 (nowhere else), sends --requests POST /predict
requests from --clients threads (each with one keep-alive connection; the bodies are 280x280 PNG
drawings, what the page sends), checks every answer (status 200, one row with a prediction), stops the
server with Ctrl-C (SIGINT) and checks it exits 0. Prints a Markdown table: failures (an error status,
a wrong or missing answer, a connection error), p50/p99 latency and requests per second.

    python bench/serve_load.py --run outputs/train/latest --requests 2000 --clients 32
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import List
from urllib.parse import urlparse

from PIL import Image, ImageDraw

MNIST = str(Path(sys.executable).with_name("mnist"))
TIME_LIMIT_S = 600  # the whole test stops by itself after this, whatever is left


def drawings() -> List[bytes]:
    """A few PNG drawings as the page sends them: white strokes on a black 280x280 canvas."""
    shapes = [
        [(140, 50), (140, 230)],  # a 1
        [(140 + 60 * math.sin(a * math.pi / 15), 140 - 85 * math.cos(a * math.pi / 15)) for a in range(31)],  # a 0
        [(80, 60), (200, 60), (110, 230)],  # a 7
        [(80, 90), (140, 50), (200, 90), (80, 230), (210, 230)],  # a 2
    ]
    bodies = []
    for points in shapes:
        image = Image.new("L", (280, 280))
        ImageDraw.Draw(image).line(points, fill=255, width=20, joint="curve")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    return bodies


@dataclass
class Load:
    """The shared state of the clients: what is left to send, and what came back."""

    url: str
    total: int
    bodies: List[bytes]
    deadline: float
    next_index: int = 0
    latencies: List[float] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> int:
        """The next request's number, or -1 when all were sent or time is up."""
        with self.lock:
            if self.next_index >= self.total or time.monotonic() > self.deadline:
                return -1
            self.next_index += 1
            return self.next_index - 1


def client(load: Load) -> None:
    """Send requests until none are left, over one keep-alive connection (a new one after an error)."""
    address = urlparse(load.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    while (index := load.take()) >= 0:
        body = load.bodies[index % len(load.bodies)]
        start = time.perf_counter()
        try:
            connection.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
            answer = connection.getresponse()
            data = answer.read()
            seconds = time.perf_counter() - start
            rows = json.loads(data)["predictions"] if answer.status == 200 else []
            ok = answer.status == 200 and len(rows) == 1 and rows[0]["predicted"] is not None
        except (OSError, http.client.HTTPException, ValueError, KeyError) as error:
            ok, seconds, data = False, time.perf_counter() - start, repr(error).encode()
            connection.close()
            connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        with load.lock:
            load.latencies.append(seconds)
            if not ok:
                load.failures.append(data[:200].decode(errors="replace"))
    connection.close()


def start_server(run: str, extra: List[str]) -> tuple:
    """(the `mnist serve` process, its URL) on a free port of 127.0.0.1."""
    command = [MNIST, "serve", f"run={run}", "host=127.0.0.1", "port=0", *extra]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+)/ ", line)
    if not found:
        server.kill()
        sys.exit(f"mnist serve did not start: {line}{server.stderr.read()}")
    return server, found.group(1)


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    return f"{os.cpu_count()}-core {model}" if model else f"{os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="latest", help="what mnist serve's run= gets")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--serve-args", nargs="*", default=[], help="more KEY=VALUE for mnist serve (e.g. max_batch=1)")
    args = parser.parse_args()

    server, url = start_server(args.run, args.serve_args)
    with urllib.request.urlopen(url + "/model", timeout=30) as answer:
        facts = json.loads(answer.read())
    model = f"{facts['model']} ({facts['dataset']})"
    load = Load(url, args.requests, drawings(), deadline=time.monotonic() + TIME_LIMIT_S)
    threads = [threading.Thread(target=client, args=(load,)) for _ in range(args.clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    server.send_signal(signal.SIGINT)
    out, err = server.communicate(timeout=60)
    lost = args.requests - len(load.latencies)  # never sent: the time limit ran out
    failed = len(load.failures) + lost
    command = " ".join(["mnist serve", f"run={args.run}", *args.serve_args])
    p50, p99 = (1000 * percentile(load.latencies, q) for q in (0.5, 0.99))
    print("| machine | model | command | requests | clients | failures | p50 ms | p99 ms | requests/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {machine()} | {model} | `{command}` | {args.requests} | {args.clients} | {failed} | {p50:.1f} | {p99:.1f} | "
        f"{len(load.latencies) / seconds:.0f} |"
    )
    print(f"server: exit {server.returncode}; {out.strip().splitlines()[-1] if out.strip() else ''}")
    if load.failures:
        print(f"first failure: {load.failures[0]}")
    if err.strip():
        print(f"server stderr: {err.strip()[-2000:]}")
    return 0 if failed == 0 and server.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
