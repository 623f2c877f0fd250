"""Load test of ``omnifuse serve``: dynamic batching against an unbatched server, side by side.

    python benchmarks/serve_load.py runs/easyvqa/latest/checkpoints/best.ckpt [--requests 512] [--clients 1 8 64]

For each server setting (``--max-batch-size 64`` and ``1``) it starts ``omnifuse serve`` on loopback, then for each
client count C sends ``--requests`` easy-VQA test questions (image + text, as base64 JSON) from C concurrent clients
and measures throughput, p50 / p99 latency and the mean batch size the server reached (from its /metrics). Every
request is bounded (``--timeout``); the whole run stops sending after ``--max-seconds`` per cell. It also checks that
both servers gave the same answer to every question. A measured figure, never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.split()[-1])
    return 0.0


class Server:
    def __init__(self, model: str, max_batch_size: int, batch_timeout: float, threads: int | None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "omnifuse.app.launch", "serve", model, "--port", str(self.port)]
        command += ["--max-batch-size", str(max_batch_size), "--batch-timeout", str(batch_timeout)]
        if threads:
            command += ["--threads", str(threads)]
        self.log = open(f"/tmp/omnifuse-serve-{self.port}.log", "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError("server did not start")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def load_bodies(manifest: Path, n: int) -> list[tuple[str, bytes]]:
    bodies = []
    with manifest.open() as fh:
        for line in fh:
            record = json.loads(line)
            image = (manifest.parent / record["image"]).read_bytes()
            body = {
                "id": record["id"],
                "task": "vqa",
                "text": record["text"],
                "image": base64.b64encode(image).decode(),
            }
            bodies.append((record["id"], json.dumps(body).encode()))
            if len(bodies) == n:
                break
    return bodies


async def run_clients(url: str, bodies: list[tuple[str, bytes]], clients: int, timeout: float, max_seconds: float):
    """C workers take the next body from a shared queue until it is empty or time is up."""
    queue: asyncio.Queue = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    latencies: list[float] = []
    answers: dict[str, str] = {}
    failures = 0
    stop_at = time.monotonic() + max_seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout), headers={"Content-Type": "application/json"}
    ) as session:

        async def worker() -> None:
            nonlocal failures
            while time.monotonic() < stop_at:
                try:
                    rid, body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                start = time.perf_counter()
                try:
                    async with session.post(url + "/predict", data=body) as response:
                        row = await response.json()
                        if response.status != 200:
                            failures += 1
                            continue
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - start)
                answers[rid] = row["prediction"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return latencies, answers, failures, wall


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .ckpt or export folder")
    parser.add_argument("--manifest", default="datasets/easyvqa/vqa_test.jsonl")
    parser.add_argument("--requests", type=int, default=512, help="requests per cell")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1], help="server --max-batch-size values")
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the model worker")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one request may take")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="seconds of sending per cell")
    args = parser.parse_args(argv)

    bodies = load_bodies(Path(args.manifest), args.requests)
    results: dict[tuple[int, int], dict] = {}
    answers_by_mode: dict[int, dict[str, str]] = {}
    for max_batch in args.batch_sizes:
        server = Server(args.model, max_batch, args.batch_timeout, args.threads)
        try:
            asyncio.run(run_clients(server.url, bodies[:16], 4, args.timeout, 60))  # warm-up, not measured
            answers_by_mode[max_batch] = {}
            for clients in args.clients:
                count0 = _metric(server.url, "omnifuse_batch_size_count")
                sum0 = _metric(server.url, "omnifuse_batch_size_sum")
                latencies, answers, failures, wall = asyncio.run(
                    run_clients(server.url, bodies, clients, args.timeout, args.max_seconds)
                )
                batches = _metric(server.url, "omnifuse_batch_size_count") - count0
                served = _metric(server.url, "omnifuse_batch_size_sum") - sum0
                answers_by_mode[max_batch].update(answers)
                results[max_batch, clients] = {
                    "done": len(latencies),
                    "failures": failures,
                    "throughput": len(latencies) / wall if wall else 0.0,
                    "p50": 1000 * _percentile(latencies, 50),
                    "p99": 1000 * _percentile(latencies, 99),
                    "mean_batch": served / batches if batches else float("nan"),
                }
                print(f"  max_batch={max_batch:3d} C={clients:3d}: {results[max_batch, clients]}", flush=True)
        finally:
            server.stop()

    print(
        f"\nomnifuse serve load test: {args.model}, {len(bodies)} requests per cell, batch timeout {args.batch_timeout}s"
    )
    print(f"{'clients':>7} | " + " | ".join(f"{'batch<=' + str(b):^33}" for b in args.batch_sizes) + " | speed-up")
    print(
        f"{'':>7} | "
        + " | ".join(f"{'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'batch':>6}  " for _ in args.batch_sizes)
        + " |"
    )
    base = args.batch_sizes[-1]
    for clients in args.clients:
        cells = []
        for b in args.batch_sizes:
            r = results[b, clients]
            cells.append(f"{r['throughput']:7.1f} {r['p50']:7.1f} {r['p99']:7.1f} {r['mean_batch']:6.1f}  ")
        ratio = results[args.batch_sizes[0], clients]["throughput"] / max(results[base, clients]["throughput"], 1e-9)
        print(f"{clients:>7} | " + " | ".join(cells) + f" | {ratio:5.2f}x")
    failures = sum(r["failures"] for r in results.values())
    modes = list(answers_by_mode.values())
    common = set.intersection(*(set(a) for a in modes)) if modes else set()
    same = sum(all(m[i] == modes[0][i] for m in modes) for i in common)
    print(f"failed requests: {failures}; identical answers across settings: {same}/{len(common)}")


if __name__ == "__main__":
    main()
