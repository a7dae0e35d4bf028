"""Measure Gatewayz's throughput with 1, 2, ... uvicorn workers.

For each worker count up to `--max-workers` (default: the CPU count, at
least 2), Gatewayz is started with that many workers on a fresh Postgres
database, behind the fast fake upstream (bench/upstream.py, one worker).
wrk then sends non-streaming and streaming chat completions for
`--duration` seconds at `--connections` clients, with the key that has no
budgets or limits and with the key that has budgets, credits and rate
limits. The report prints requests/s, the ratio to one worker, and the
CPU time that Gatewayz's processes (the uvicorn parent and its workers)
spent per request. When that CPU time stays flat as workers are added, the
workers do not slow each other down, so throughput is bounded by the free
cores. The last column is the requests/s that one fully busy core would
serve at that cost.
Usage: `python -m bench.worker_scaling [--duration S] [--max-workers N]`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psutil

from bench.load import LoadGenerator, LoadSpec
from bench.proxy_overhead import (
    CHAT_PATH,
    MODES,
    SETTLE_SECONDS,
    interrupt_on_sigterm,
    machine_description,
    progress,
    request_body,
)
from bench.stack import DEFAULT_POSTGRES, BenchDatabase, Server
from gateway_core.launcher import PROXY_SERVER_OPTIONS

KEYS = ("no limits", "limits on")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.worker_scaling", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per measurement (default 10)"
    )
    parser.add_argument(
        "--connections", type=int, default=64, help="concurrent wrk connections (default 64)"
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        default=max(2, os.cpu_count() or 1),
        help="largest worker count measured (default: the CPU count, at least 2)",
    )
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help=f"Postgres server URL for the temporary databases (default {DEFAULT_POSTGRES})",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.connections <= 0 or args.max_workers <= 0:
        parser.error("--duration, --connections and --max-workers must be positive")
    return args


def tree_cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of a process and its live children."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure_workers(
    args: argparse.Namespace, load: LoadGenerator, workdir: Path, upstream: Server, workers: int
) -> dict[tuple[str, str], tuple[float, float]]:
    """Start Gatewayz with `workers` workers and return (requests/s, CPU µs/request) per point."""
    with ExitStack() as stack:
        database = BenchDatabase(args.postgres)
        stack.callback(database.drop)
        secret = secrets.token_urlsafe(48)
        tokens = database.provision(secret, upstream.base_url + "/v1")
        gatewayz = Server(
            f"gatewayz-{workers}",
            "proxy.app:create_app",
            {"DATABASE_URL": database.url, "GATEWAYZ_SECRET": secret},
            workdir,
            options=PROXY_SERVER_OPTIONS,
            workers=workers,
        )
        stack.callback(gatewayz.stop)
        gatewayz.wait_ready("/health/live")
        url = gatewayz.base_url + CHAT_PATH
        progress(f"{workers} worker(s): warming up")
        for mode in MODES:
            for token in tokens:
                load.run(LoadSpec(url, request_body(mode), token, args.connections, 2.0))
        rates = {}
        for mode in MODES:
            for name, token in zip(KEYS, tokens, strict=True):
                progress(f"{workers} worker(s): {mode}, {name}")
                spec = LoadSpec(url, request_body(mode), token, args.connections, args.duration)
                cpu_before = tree_cpu_seconds(gatewayz.process.pid)
                result = load.run(spec)
                cpu_used = tree_cpu_seconds(gatewayz.process.pid) - cpu_before
                if result.failed or result.socket_errors:
                    progress(
                        f"  error: {result.failed} non-200 responses, "
                        f"{result.socket_errors} socket errors"
                    )
                cpu_per_request = cpu_used / result.sent * 1e6 if result.sent else 0.0
                rates[(mode, name)] = (result.requests_per_second, cpu_per_request)
                time.sleep(SETTLE_SECONDS)
        return rates


def format_report(
    args: argparse.Namespace,
    load: LoadGenerator,
    rates: dict[int, dict[tuple[str, str], tuple[float, float]]],
) -> str:
    lines = [
        "",
        "Worker scaling: Gatewayz throughput by uvicorn worker count",
        f"machine: {machine_description()}",
        f"load generator: {load.description}, {args.connections} connections, "
        f"{args.duration:g} s per point; upstream: one worker, {args.chunks} chunks per stream",
        "",
        f"{'workers':>8}{'mode':>8}{'key':>12}{'req/s':>9}{'ratio to 1':>12}"
        f"{'CPU µs/req':>12}{'req/s per core':>16}",
    ]
    for workers, by_point in rates.items():
        for mode in MODES:
            for name in KEYS:
                rate, cpu = by_point[(mode, name)]
                one_worker = rates[1][(mode, name)][0]
                ratio = rate / one_worker if one_worker else 0.0
                per_core = 1e6 / cpu if cpu else 0.0
                lines.append(
                    f"{workers:>8}{mode:>8}{name:>12}{rate:>9.0f}{ratio:>12.2f}"
                    f"{cpu:>12.0f}{per_core:>16.0f}"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gatewayz-scale-")))
        load = LoadGenerator(workdir)
        progress(f"load generator: {load.description}")
        upstream = Server(
            "upstream",
            "bench.upstream:create_app",
            {"BENCH_STREAM_CHUNKS": str(args.chunks)},
            workdir,
        )
        stack.callback(upstream.stop)
        upstream.wait_ready("/health")
        rates = {
            workers: measure_workers(args, load, workdir, upstream, workers)
            for workers in range(1, args.max_workers + 1)
        }
        print(format_report(args, load, rates))
        return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started by the benchmark was stopped", file=sys.stderr)
        sys.exit(130)
