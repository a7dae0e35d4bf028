"""Soak Gatewayz with many requests and report how its resident memory grows.

The fake upstream (bench/upstream.py) and Gatewayz run as uvicorn processes
with one worker each, on a fresh Postgres database dropped at the end.
Every request uses the key whose key, team and organization have budgets,
a credit balance and rate limits, with Gatewayz's JSON access log on, so
every per-request path runs. wrk sends the requests in segments that
alternate non-streaming and streaming chat completions.

The first `--warmup` requests fill caches, pools and allocator arenas.
The resident set size (RSS) of the Gatewayz process is sampled after the
warm-up and after every segment. The report prints the RSS after warm-up
and at the end, and the growth in percent. Afterwards it checks that every
request sent has exactly one usage row.
Usage: `python -m bench.memory_soak [--requests N]`.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psutil

from bench.load import LoadGenerator, LoadResult, LoadSpec
from bench.proxy_overhead import (
    CHAT_PATH,
    MODES,
    check_usage,
    format_usage_check,
    interrupt_on_sigterm,
    machine_description,
    progress,
    request_body,
)
from bench.stack import DEFAULT_POSTGRES, BenchDatabase, Server
from gateway_core.launcher import PROXY_SERVER_OPTIONS

# Growth of RSS after warm-up, in percent, at or above which the soak fails.
MAX_GROWTH_PERCENT = 10.0
MIB = 1024 * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory_soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=1_000_000,
        help="requests after the warm-up (default 1,000,000)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=50_000,
        help="requests before the first sample (default 50,000)",
    )
    parser.add_argument(
        "--segment",
        type=int,
        default=50_000,
        help="requests per wrk run; RSS is sampled after each (default 50,000)",
    )
    parser.add_argument(
        "--connections", type=int, default=16, help="concurrent wrk connections (default 16)"
    )
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help=f"Postgres server URL for the temporary database (default {DEFAULT_POSTGRES})",
    )
    args = parser.parse_args(argv)
    if min(args.requests, args.warmup, args.segment, args.connections) <= 0:
        parser.error("--requests, --warmup, --segment and --connections must be positive")
    return args


def start_stack(
    args: argparse.Namespace, stack: ExitStack, workdir: Path
) -> tuple[BenchDatabase, Server, str]:
    """Start the database, the upstream and Gatewayz; return them and the limited key."""
    database = BenchDatabase(args.postgres)
    stack.callback(database.drop)
    upstream = Server(
        "upstream", "bench.upstream:create_app", {"BENCH_STREAM_CHUNKS": str(args.chunks)}, workdir
    )
    stack.callback(upstream.stop)
    secret = secrets.token_urlsafe(48)
    _, limited_token = database.provision(secret, upstream.base_url + "/v1")
    env = {
        "DATABASE_URL": database.url,
        "GATEWAYZ_SECRET": secret,
        "GATEWAYZ_ACCESS_LOG": "json",
    }
    gatewayz = Server(
        "gatewayz", "proxy.app:create_app", env, workdir, options=PROXY_SERVER_OPTIONS
    )
    stack.callback(gatewayz.stop)
    upstream.wait_ready("/health")
    gatewayz.wait_ready("/health/live")
    return database, gatewayz, limited_token


class Soak:
    """Sends requests in wrk runs that alternate the modes, and samples RSS after each."""

    def __init__(self, load: LoadGenerator, url: str, token: str, args: argparse.Namespace) -> None:
        self.load = load
        self.url = url
        self.token = token
        self.args = args
        self.runs: list[LoadResult] = []
        self.failures: list[str] = []

    def send(self, total: int, process: psutil.Process, samples: list[tuple[int, int]]) -> None:
        """Send `total` requests; append (requests so far, RSS in bytes) after each run."""
        sent = 0
        while sent < total:
            count = min(self.args.segment, total - sent)
            mode = MODES[len(self.runs) % len(MODES)]
            # Bounded by count and, as a backstop, by 20 ms per request.
            duration = max(60.0, count * 0.02)
            body = request_body(mode)
            spec = LoadSpec(self.url, body, self.token, self.args.connections, duration, count)
            result = self.load.run(spec)
            self.runs.append(result)
            if result.failed or result.socket_errors:
                self.failures.append(
                    f"{mode} run {len(self.runs)}: {result.failed} non-200 responses, "
                    f"{result.socket_errors} socket errors"
                )
            if result.completed == 0:
                raise RuntimeError(f"a {mode} run completed no requests; stopping the soak")
            sent += result.completed
            samples.append((sent, process.memory_info().rss))
            progress(
                f"  {sent:>9,} requests, {result.requests_per_second:6.0f} req/s ({mode}), "
                f"RSS {samples[-1][1] / MIB:.1f} MiB"
            )


def format_report(
    args: argparse.Namespace,
    load: LoadGenerator,
    start_rss: int,
    samples: list[tuple[int, int]],
    elapsed: float,
) -> str:
    end_rss = samples[-1][1]
    peak_rss = max(rss for _, rss in samples)
    growth = 100 * (end_rss - start_rss) / start_rss
    verdict = "OK" if growth < MAX_GROWTH_PERCENT else "FAIL"
    sent = samples[-1][0]
    lines = [
        "",
        "Memory soak: one Gatewayz worker, budgets, credits, rate limits and access log on",
        f"machine: {machine_description()}",
        f"load generator: {load.description}, {args.connections} connections",
        f"requests: {args.warmup:,} warm-up, then {sent:,} in runs of {args.segment:,} "
        f"alternating json and stream ({args.chunks} chunks), {elapsed:.0f} s, "
        f"{sent / elapsed:.0f} req/s",
        "",
        f"{'requests after warm-up':>24}{'RSS MiB':>10}",
        f"{0:>24,}{start_rss / MIB:>10.1f}",
    ]
    step = max(1, len(samples) // 10)
    table_rows = samples[step - 1 :: step]
    if table_rows[-1] != samples[-1]:
        table_rows.append(samples[-1])
    lines += [f"{count:>24,}{rss / MIB:>10.1f}" for count, rss in table_rows]
    lines += [
        "",
        f"RSS after warm-up: {start_rss / MIB:.1f} MiB; at the end: {end_rss / MIB:.1f} MiB; "
        f"peak: {peak_rss / MIB:.1f} MiB",
        f"growth: {growth:+.2f}% ({verdict}: the limit is {MAX_GROWTH_PERCENT:g}%)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gatewayz-soak-")))
        load = LoadGenerator(workdir)
        progress(f"load generator: {load.description}")
        database, gatewayz, token = start_stack(args, stack, workdir)
        process = psutil.Process(gatewayz.process.pid)
        soak = Soak(load, gatewayz.base_url + CHAT_PATH, token, args)
        progress(f"warm-up: {args.warmup:,} requests")
        soak.send(args.warmup, process, [])
        start_rss = process.memory_info().rss
        progress(f"soak: {args.requests:,} requests")
        started = time.monotonic()
        samples: list[tuple[int, int]] = []
        interrupted = False
        try:
            soak.send(args.requests, process, samples)
        except KeyboardInterrupt:
            # Report the runs that finished; the servers stay up until the stack closes.
            if not samples:
                raise
            interrupted = True
        elapsed = time.monotonic() - started
        print(format_report(args, load, start_rss, samples, elapsed))
        if interrupted:
            # The cut wrk run is not counted, so its usage rows cannot be matched.
            print(f"Interrupted after {samples[-1][0]:,} requests; usage rows not checked")
        else:
            check = check_usage(database, soak.runs, wait=60.0)
            print(format_usage_check(check))
        if soak.failures:
            print("Runs with errors:", *soak.failures, sep="\n  ")
        growth = (samples[-1][1] - start_rss) / start_rss * 100
        passed = interrupted or check.passed
        return 0 if growth < MAX_GROWTH_PERCENT and passed and not soak.failures else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started by the soak was stopped", file=sys.stderr)
        sys.exit(130)
