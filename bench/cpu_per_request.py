"""CPU time per request of the pass-through and of Gatewayz, from /proc.

Wall-clock latency needs a quiet machine, but the CPU time a server process
spends per request changes much less when other processes share the
cores. This benchmark starts the same stack as `bench.proxy_overhead`,
sends requests at a fixed concurrency to each target, and divides the
growth of the server's user plus system time (`/proc/<pid>/stat`) by the
number of requests. The difference between Gatewayz and the pass-through
is the work Gatewayz adds to each call, which is what its added latency at
one client is made of. Linux only.

Usage: `python -m bench.cpu_per_request [--requests N] [--clients C]`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.load import LoadGenerator, LoadSpec
from bench.proxy_overhead import MODES, interrupt_on_sigterm, progress, request_body, start_stack
from bench.stack import DEFAULT_POSTGRES

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of process `pid`, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cpu_per_request", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--requests", type=int, default=20_000, help="requests per target and mode (default 20000)"
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--chunks", type=int, default=20, help="chunks per streamed response")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="Postgres server URL")
    parser.add_argument("--access-log", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests <= 0 or args.clients <= 0:
        parser.error("--requests and --clients must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    with ExitStack() as stack:
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gatewayz-cpu-")))
        _, targets, _ = start_stack(args, stack, log_dir)
        load = LoadGenerator(log_dir)
        measured = [t for t in targets if t.pid is not None]
        print(f"CPU time per request, {args.requests} requests at {args.clients} clients")
        print("| target | mode | CPU µs/request |")
        print("|---|---|---|")
        results: dict[tuple[str, str], float] = {}
        for mode in MODES:
            for target in measured:
                assert target.pid is not None
                spec = LoadSpec(target.url, request_body(mode), target.token, args.clients, 5.0)
                load.run(spec)  # warm-up
                time.sleep(0.5)
                before = cpu_seconds(target.pid)
                limits = {"duration": max(30.0, args.requests * 0.05)}
                spec = LoadSpec(
                    target.url, request_body(mode), target.token, args.clients,
                    max_requests=args.requests, **limits,
                )  # fmt: skip
                result = load.run(spec)
                # The recorder writes the last batch shortly after the last response.
                time.sleep(0.5)
                used = cpu_seconds(target.pid) - before
                per_request = used / max(result.sent, 1) * 1e6
                results[(target.name, mode)] = per_request
                print(f"| {target.name} | {mode} | {per_request:.0f} |", flush=True)
        for mode in MODES:
            base = results[("pass-through", mode)]
            for name in ("gatewayz", "gatewayz+limits"):
                added = results[(name, mode)] - base
                print(f"{name} {mode}: {added:+.0f} µs/request over the pass-through")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        progress("interrupted")
        sys.exit(130)
