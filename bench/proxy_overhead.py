"""Measure what Gatewayz adds to a chat completion, against two baselines.

Three servers run as separate uvicorn processes with one worker each: the
fake upstream (bench/upstream.py), a bare pass-through proxy on the same
stack as Gatewayz (bench/passthrough.py) and Gatewayz itself, with a fresh
Postgres database that is dropped at the end. When a LiteLLM executable is
found (bench/litellm_proxy.py), LiteLLM's proxy on the same upstream is a
fourth server. The same request is sent to each of them directly,
non-streaming ("json") and streaming ("stream"):

- latency: median and p95 at 1 client over `--requests` requests,
- throughput: requests/s at 16 and 64 concurrent clients for `--duration` s.

`--rounds N` repeats every measurement and reports the median. Afterwards
it checks that Gatewayz wrote exactly one usage_events row per request it
was sent. Usage:
`python -m bench.proxy_overhead [--quick] [--rounds N] [--litellm PATH]`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import orjson

from bench.litellm_proxy import VENV_ENV, LiteLLMProxy, locate_litellm, start_litellm
from bench.load import LoadGenerator, LoadResult, LoadSpec
from bench.stack import DEFAULT_POSTGRES, BenchDatabase, Server
from gateway_core.launcher import PROXY_SERVER_OPTIONS

TARGETS = ("direct", "pass-through", "gatewayz", "gatewayz+limits")
# Measured after TARGETS when a LiteLLM executable is found.
LITELLM_TARGET = "litellm"
MODEL = "bench/any"
MODES = ("json", "stream")
CONCURRENCY = (16, 64)
CHAT_PATH = "/v1/chat/completions"
# Pause between runs, so requests cut off at the end of one finish before
# the next one starts.
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    token: str | None
    # Process id of the server behind `url`; None for the upstream itself.
    pid: int | None = None


@dataclass
class Results:
    # One result per round for each (target, mode) and (target, mode, clients).
    latency: dict[tuple[str, str], list[LoadResult]] = field(
        default_factory=lambda: defaultdict(list)
    )
    throughput: dict[tuple[str, str, int], list[LoadResult]] = field(
        default_factory=lambda: defaultdict(list)
    )
    # Every run against Gatewayz, warm-up included, for the usage row check.
    gatewayz_runs: list[LoadResult] = field(default_factory=list)
    # One line per run that got non-200 responses or socket errors.
    failures: list[str] = field(default_factory=list)

    def median_ms(self, target: str, mode: str) -> float:
        return statistics.median(run.median_ms for run in self.latency[(target, mode)])

    def p95_ms(self, target: str, mode: str) -> float:
        return statistics.median(run.p95_ms for run in self.latency[(target, mode)])

    def requests_per_second(self, target: str, mode: str, clients: int) -> float:
        runs = self.throughput[(target, mode, clients)]
        return statistics.median(run.requests_per_second for run in runs)


@dataclass(frozen=True)
class UsageCheck:
    sent: int
    answered_ok: int
    cut_off: int
    rows_by_status: dict[int, int]

    @property
    def rows(self) -> int:
        return sum(self.rows_by_status.values())

    @property
    def passed(self) -> bool:
        # A request cut off at the end of a run is still recorded: with status
        # 200 when Gatewayz finished it, 499 when a stream lost its client, and
        # 400 when the client left before Gatewayz read the body.
        rows_ok = self.rows_by_status.get(200, 0)
        ok_rows_match = self.answered_ok <= rows_ok <= self.answered_ok + self.cut_off
        return self.rows == self.sent and ok_rows_match


def request_body(mode: str) -> bytes:
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 32,
    }
    if mode == "stream":
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.proxy_overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per throughput point (default 10)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="requests per latency point at 1 client (default 2000)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 s per throughput point and 200 requests per latency point",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every measurement this many times and report the median (default 1)",
    )
    parser.add_argument(
        "--chunks",
        type=int,
        default=20,
        help="content chunks per streamed response from the fake upstream (default 20)",
    )
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help="Postgres server URL on which a temporary database is created "
        f"(default {DEFAULT_POSTGRES})",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="keep uvicorn's access log on in the upstream, pass-through and Gatewayz "
        "servers, as `make run` does (LiteLLM's stays off)",
    )
    litellm = parser.add_mutually_exclusive_group()
    litellm.add_argument(
        "--litellm",
        metavar="PATH",
        help="LiteLLM's `litellm` executable, measured as one more target (default: "
        f"$LITELLM_VENV/bin/litellm when {VENV_ENV} is set, else `litellm` on the PATH)",
    )
    litellm.add_argument(
        "--no-litellm", action="store_true", help="do not measure LiteLLM even when it is found"
    )
    args = parser.parse_args(argv)

    if args.quick:
        args.duration, args.requests = 2.0, 200
    if args.duration <= 0 or args.requests <= 0 or args.rounds <= 0:
        parser.error("--duration, --requests and --rounds must be positive")
    if args.chunks < 0:
        parser.error(f"--chunks must be 0 or more, got {args.chunks}")

    # args.litellm becomes the executable to measure, or None with the reason.
    args.litellm_skipped = None
    if args.no_litellm:
        args.litellm, args.litellm_skipped = None, "--no-litellm was given"
    else:
        try:
            args.litellm = locate_litellm(args.litellm)
        except ValueError as exc:
            parser.error(str(exc))
        if args.litellm is None:
            args.litellm_skipped = (
                f"no `litellm` executable on the PATH and {VENV_ENV} is not set; "
                "pass --litellm PATH"
            )
    return args


def start_stack(
    args: argparse.Namespace, stack: ExitStack, log_dir: Path, litellm: Path | None = None
) -> tuple[BenchDatabase, list[Target], LiteLLMProxy | None]:
    """Start the database and the servers, and register their shutdown on `stack`.

    LiteLLM's proxy is started only when `litellm`, its executable, is given.
    """
    database = BenchDatabase(args.postgres)
    stack.callback(database.drop)

    upstream = Server(
        "upstream",
        "bench.upstream:create_app",
        {"BENCH_STREAM_CHUNKS": str(args.chunks)},
        log_dir,
        access_log=args.access_log,
    )
    stack.callback(upstream.stop)
    secret = secrets.token_urlsafe(48)
    token, limited_token = database.provision(secret, upstream.base_url + "/v1")

    passthrough = Server(
        "pass-through",
        "bench.passthrough:create_app",
        {"BENCH_UPSTREAM_URL": upstream.base_url + CHAT_PATH},
        log_dir,
        access_log=args.access_log,
    )
    stack.callback(passthrough.stop)

    gatewayz = Server(
        "gatewayz",
        "proxy.app:create_app",
        {"DATABASE_URL": database.url, "GATEWAYZ_SECRET": secret},
        log_dir,
        access_log=args.access_log,
        options=PROXY_SERVER_OPTIONS,
    )
    stack.callback(gatewayz.stop)

    litellm_proxy = None
    if litellm is not None:
        litellm_proxy = start_litellm(litellm, MODEL, upstream.base_url + "/v1", log_dir)
        stack.callback(litellm_proxy.server.stop)

    upstream.wait_ready("/health")
    passthrough.wait_ready("/health")
    gatewayz.wait_ready("/health/live")
    targets = [
        Target("direct", upstream.base_url + CHAT_PATH, None),
        Target("pass-through", passthrough.base_url + CHAT_PATH, None, passthrough.process.pid),
        Target("gatewayz", gatewayz.base_url + CHAT_PATH, token, gatewayz.process.pid),
        # The same server and route, for a key with budgets, credits and limits.
        Target(
            "gatewayz+limits", gatewayz.base_url + CHAT_PATH, limited_token, gatewayz.process.pid
        ),
    ]
    if litellm_proxy is not None:
        progress("waiting for LiteLLM's proxy to start")
        litellm_proxy.wait_ready()
        server = litellm_proxy.server
        url = server.base_url + CHAT_PATH
        targets.append(Target(LITELLM_TARGET, url, litellm_proxy.master_key, server.process.pid))
    return database, targets, litellm_proxy


def measure(args: argparse.Namespace, targets: list[Target], load: LoadGenerator) -> Results:
    results = Results()

    def run(target: Target, mode: str, connections: int, **limits: float) -> LoadResult:
        spec = LoadSpec(target.url, request_body(mode), target.token, connections, **limits)
        result = load.run(spec)
        if target.name.startswith("gatewayz"):
            results.gatewayz_runs.append(result)
        if result.failed or result.socket_errors:
            failure = (
                f"{target.name} {mode} at {connections} client(s): {result.failed} non-200 "
                f"responses, {result.socket_errors} socket errors"
            )
            results.failures.append(failure)
            progress(f"  error: {failure}")
        time.sleep(SETTLE_SECONDS)
        return result

    progress("warming up (fills connection pools and the key cache)")
    for mode in MODES:
        for target in targets:
            run(target, mode, 16, duration=min(2.0, args.duration))
    for round_number in range(1, args.rounds + 1):
        prefix = f"round {round_number}/{args.rounds}: " if args.rounds > 1 else ""
        for mode in MODES:
            for target in targets:
                progress(
                    f"{prefix}latency: {target.name} {mode}, 1 client, {args.requests} requests"
                )
                # Bounded by count and, as a backstop, by 50 ms per request.
                bound = max(30.0, args.requests * 0.05)
                result = run(target, mode, 1, duration=bound, max_requests=args.requests)
                results.latency[(target.name, mode)].append(result)
        for mode in MODES:
            for connections in CONCURRENCY:
                for target in targets:
                    progress(f"{prefix}throughput: {target.name} {mode}, {connections} clients")
                    result = run(target, mode, connections, duration=args.duration)
                    results.throughput[(target.name, mode, connections)].append(result)
    return results


def check_usage(database: BenchDatabase, runs: list[LoadResult], wait: float = 15.0) -> UsageCheck:
    """Count Gatewayz's usage rows once its recorder has written what it queued."""
    sent = sum(run.sent for run in runs)
    deadline = time.monotonic() + wait
    rows = database.usage_by_status()
    while sum(rows.values()) < sent and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = database.usage_by_status()
    return UsageCheck(
        sent=sent,
        answered_ok=sum(run.ok for run in runs),
        cut_off=sum(run.sent - run.completed for run in runs),
        rows_by_status=rows,
    )


def machine_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


def format_report(
    args: argparse.Namespace,
    results: Results,
    load: LoadGenerator,
    litellm: LiteLLMProxy | None = None,
) -> str:
    today = datetime.date.today().isoformat()
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    names = TARGETS if litellm is None else (*TARGETS, LITELLM_TARGET)
    if litellm is None:
        litellm_line = f"LiteLLM: not measured, because {args.litellm_skipped}"
    else:
        litellm_line = f"litellm: {litellm.description}"
    lines = [
        "",
        f"Proxy overhead benchmark, {today}",
        f"machine: {machine_description()}",
        f"load generator: {load.description}",
        f"upstream: {args.chunks} content chunks per stream; one uvicorn worker per server",
        litellm_line,
        "",
        f"Latency at 1 client, ms ({args.requests} requests per row{rounds})",
        f"{'target':<17}{'mode':<8}{'median':>9}{'p95':>9}",
    ]
    for mode in MODES:
        for name in names:
            median, p95 = results.median_ms(name, mode), results.p95_ms(name, mode)
            row = f"{name:<17}{mode:<8}{median:>9.2f}{p95:>9.2f}"
            # A slow target reaches the run's time bound before the request count.
            completed = min(run.completed for run in results.latency[(name, mode)])
            if completed < args.requests:
                row += f"  (time bound reached after {completed} requests)"
            lines.append(row)

    lines += ["", f"Throughput, requests/s ({args.duration:g} s per point{rounds})"]
    header = "".join(f"{f'{count} clients':>13}" for count in CONCURRENCY)
    lines.append(f"{'target':<17}{'mode':<8}{header}")
    for mode in MODES:
        for name in names:
            cells = "".join(
                f"{results.requests_per_second(name, mode, count):>13.0f}" for count in CONCURRENCY
            )
            lines.append(f"{name:<17}{mode:<8}{cells}")

    lines += ["", "Ratios"]
    for mode in MODES:
        direct = results.median_ms("direct", mode)
        passthrough = results.median_ms("pass-through", mode)
        gatewayz = results.median_ms("gatewayz", mode)
        lines.append(
            f"{mode}: median added latency over direct: Gatewayz {gatewayz - direct:+.2f} ms, "
            f"pass-through {passthrough - direct:+.2f} ms "
            f"(Gatewayz over pass-through {gatewayz - passthrough:+.2f} ms)"
        )
    for mode in MODES:
        shares = []
        for count in CONCURRENCY:
            gatewayz = results.requests_per_second("gatewayz", mode, count)
            passthrough = results.requests_per_second("pass-through", mode, count)
            share = 100 * gatewayz / passthrough if passthrough else 0.0
            shares.append(f"{share:.0f}% at {count} clients")
        lines.append(f"{mode}: Gatewayz throughput as % of pass-through: {', '.join(shares)}")
    for mode in MODES:
        shares = []
        for count in CONCURRENCY:
            on = results.requests_per_second("gatewayz+limits", mode, count)
            off = results.requests_per_second("gatewayz", mode, count)
            shares.append(f"{100 * on / off if off else 0.0:.0f}% at {count} clients")
        lines.append(
            f"{mode}: throughput with budgets, credits and rate limits on, as % of off: "
            + ", ".join(shares)
        )
    if litellm is not None:
        lines += litellm_ratios(results)
    return "\n".join(lines)


def litellm_ratios(results: Results) -> list[str]:
    """Compare Gatewayz, with and without limits, to LiteLLM's proxy."""
    lines = []
    for mode in MODES:
        direct = results.median_ms("direct", mode)
        litellm = results.median_ms(LITELLM_TARGET, mode) - direct
        gatewayz = results.median_ms("gatewayz", mode) - direct
        limited = results.median_ms("gatewayz+limits", mode) - direct
        lines.append(
            f"{mode}: median added latency over direct: LiteLLM {litellm:+.2f} ms, "
            f"Gatewayz {gatewayz:+.2f} ms, Gatewayz with limits {limited:+.2f} ms"
        )
    for mode in MODES:
        for name, label in (("gatewayz", "Gatewayz"), ("gatewayz+limits", "Gatewayz with limits")):
            multiples = []
            for count in CONCURRENCY:
                litellm_rate = results.requests_per_second(LITELLM_TARGET, mode, count)
                rate = results.requests_per_second(name, mode, count)
                multiple = f"{rate / litellm_rate:.1f}x" if litellm_rate else "n/a"
                multiples.append(f"{multiple} at {count} clients")
            lines.append(
                f"{mode}: {label} throughput as a multiple of LiteLLM's: {', '.join(multiples)}"
            )
    return lines


def format_usage_check(check: UsageCheck) -> str:
    statuses = ", ".join(
        f"{count} with status {status}" for status, count in sorted(check.rows_by_status.items())
    )
    verdict = "OK" if check.passed else "MISMATCH"
    return (
        f"Usage rows: {verdict}: {check.rows} rows in usage_events ({statuses or 'none'}) for "
        f"{check.sent} requests sent to Gatewayz, of which {check.answered_ok} were answered "
        f"with 200 and {check.cut_off} were cut off by the end of a run"
    )


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gatewayz-bench-")))
        load = LoadGenerator(workdir)
        progress(f"load generator: {load.description}")
        database, targets, litellm = start_stack(args, stack, workdir, args.litellm)
        results = measure(args, targets, load)
        check = check_usage(database, results.gatewayz_runs)
        print(format_report(args, results, load, litellm))
        print(format_usage_check(check))
        if results.failures:
            print("Failed runs (their numbers are not valid):", *results.failures, sep="\n  ")
        return 0 if check.passed and not results.failures else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started by the benchmark was stopped", file=sys.stderr)
        sys.exit(130)
