"""Profile Gatewayz (or the bare pass-through) under load with pyinstrument.

Starts the fake upstream and the target server under pyinstrument's
statistical profiler, sends non-streaming and then streaming load at
`--clients` concurrent clients for `--duration` s each, and stops the
server so that pyinstrument saves its session. The report written to
`--output` has three parts: the frames with the most self time, the
target's own functions (proxy/ and gateway_core/ for Gatewayz) with the
most time including their callees, and pyinstrument's call tree. The first
two parts are also printed.

pyinstrument is not in requirements.txt; install it with
`.venv/bin/pip install pyinstrument`. Usage: `python -m bench.profile_proxy`.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import tempfile
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from bench.load import LoadGenerator, LoadResult, LoadSpec
from bench.proxy_overhead import CHAT_PATH, MODES, interrupt_on_sigterm, progress, request_body
from bench.stack import DEFAULT_POSTGRES, BenchDatabase, Server
from gateway_core.launcher import PROXY_SERVER_OPTIONS

if TYPE_CHECKING:
    from pyinstrument.frame import Frame

TOP = 15
DEFAULT_OUTPUT = Path("artifacts") / "proxy-profile.txt"
# Code of each target whose time including callees is listed.
OWN_CODE = {"gatewayz": ("proxy/", "gateway_core/"), "pass-through": ("bench/",)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile_proxy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--target",
        choices=sorted(OWN_CODE),
        default="gatewayz",
        help="server to profile (default gatewayz); pass-through profiles the baseline",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of load per mode (default 10)"
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="call Gatewayz with the key that has budgets, credits and rate limits",
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument(
        "--chunks",
        type=int,
        default=20,
        help="content chunks per streamed response from the fake upstream (default 20)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.001,
        help="seconds between pyinstrument's stack samples (default 0.001)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"file for the profile report (default {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help=f"Postgres server URL for the temporary database (default {DEFAULT_POSTGRES})",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.clients <= 0 or args.interval <= 0 or args.chunks < 0:
        parser.error("--duration, --clients and --interval must be positive, --chunks 0 or more")
    return args


def frame_key(frame: Frame) -> tuple[str, str]:
    location = f"{frame.file_path_short or '?'}:{frame.line_no or 0}"
    return frame.function, location


def self_times(root: Frame) -> dict[tuple[str, str], float]:
    """Sum each function's own time (without callees) over the whole tree."""
    totals: dict[tuple[str, str], float] = defaultdict(float)
    stack = [root]
    while stack:
        frame = stack.pop()
        stack.extend(frame.children)
        if not frame.is_synthetic:
            totals[frame_key(frame)] += frame.total_self_time
    return totals


def inclusive_times(root: Frame) -> dict[tuple[str, str], float]:
    """Sum each function's time including callees, counting recursion once."""
    totals: dict[tuple[str, str], float] = defaultdict(float)
    stack: list[tuple[Frame, frozenset[tuple[str, str]]]] = [(root, frozenset())]
    while stack:
        frame, on_path = stack.pop()
        if frame.is_synthetic:
            continue
        key = frame_key(frame)
        if key not in on_path:
            totals[key] += frame.time
        stack.extend((child, on_path | {key}) for child in frame.children)
    return totals


def format_top(title: str, totals: dict[tuple[str, str], float], total_time: float) -> str:
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)[:TOP]
    lines = [title, f"{'share':>7}{'seconds':>9}  function (location)"]
    for (function, location), seconds in ranked:
        share = 100 * seconds / total_time if total_time else 0.0
        lines.append(f"{share:>6.1f}%{seconds:>9.2f}  {function} ({location})")
    return "\n".join(lines)


def build_report(target: str, session_path: Path, runs: dict[str, LoadResult]) -> tuple[str, str]:
    """Return (summary to print, full report with the call tree)."""
    from pyinstrument.renderers import ConsoleRenderer
    from pyinstrument.session import Session

    session = Session.load(str(session_path))
    root = session.root_frame()
    if root is None:
        raise RuntimeError(f"pyinstrument recorded no samples in {session_path}")
    packages = OWN_CODE[target]
    own = {
        key: seconds
        for key, seconds in inclusive_times(root).items()
        if key[1].startswith(packages)
    }
    load = ", ".join(
        f"{mode} {run.requests_per_second:.0f} requests/s" for mode, run in runs.items()
    )
    own_title = f"Top {TOP} functions in {', '.join(packages)} by time including callees"
    summary = "\n\n".join(
        [
            f"{target} under pyinstrument: {root.time:.1f} s sampled; load under profiling: {load}",
            format_top(f"Top {TOP} frames by self time", self_times(root), root.time),
            format_top(own_title, own, root.time),
        ]
    )
    tree = ConsoleRenderer(unicode=False, color=False, time="percent_of_total").render(session)
    return summary, summary + "\n\nCall tree (library internals hidden)\n" + tree


def start_profiled(
    args: argparse.Namespace, stack: ExitStack, workdir: Path, session_path: Path
) -> tuple[Server, str | None]:
    """Start the upstream and the profiled server; return it and the API key it needs."""
    upstream = Server(
        "upstream",
        "bench.upstream:create_app",
        {"BENCH_STREAM_CHUNKS": str(args.chunks)},
        workdir,
    )
    stack.callback(upstream.stop)
    upstream.wait_ready("/health")
    profiler = ["-m", "pyinstrument", "--interval", str(args.interval)]
    profiler += ["--renderer", "pyisession", "--outfile", str(session_path), "-m"]

    if args.target == "pass-through":
        env = {"BENCH_UPSTREAM_URL": upstream.base_url + CHAT_PATH}
        server = Server(
            "pass-through", "bench.passthrough:create_app", env, workdir, wrapper=profiler
        )
        stack.callback(server.stop)
        server.wait_ready("/health")
        return server, None

    database = BenchDatabase(args.postgres)
    stack.callback(database.drop)
    secret = secrets.token_urlsafe(48)
    token, limited_token = database.provision(secret, upstream.base_url + "/v1")
    if args.limits:
        token = limited_token
    env = {"DATABASE_URL": database.url, "GATEWAYZ_SECRET": secret}
    server = Server(
        "gatewayz",
        "proxy.app:create_app",
        env,
        workdir,
        wrapper=profiler,
        options=PROXY_SERVER_OPTIONS,
    )
    stack.callback(server.stop)
    server.wait_ready("/health/live")
    return server, token


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        print(
            "pyinstrument is not installed; run `.venv/bin/pip install pyinstrument`",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gatewayz-prof-")))
        session_path = workdir / "profile.pyisession"
        server, token = start_profiled(args, stack, workdir, session_path)
        load = LoadGenerator(workdir)
        progress(f"load generator: {load.description}")

        runs: dict[str, LoadResult] = {}
        for mode in MODES:
            progress(
                f"profiling {args.target}: {mode}, {args.clients} clients, {args.duration:g} s"
            )
            url = server.base_url + CHAT_PATH
            spec = LoadSpec(url, request_body(mode), token, args.clients, args.duration)
            runs[mode] = load.run(spec)
            if runs[mode].failed or runs[mode].socket_errors:
                progress(
                    f"  error: {runs[mode].failed} non-200 responses and "
                    f"{runs[mode].socket_errors} socket errors; the profile shows error handling"
                )

        server.stop()
        if not session_path.exists():
            raise RuntimeError(
                f"pyinstrument wrote no session; the {server.name} log ends with:\n"
                f"{server.log_tail()}"
            )
        summary, report = build_report(args.target, session_path, runs)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
        print(summary)
        print(f"\nfull report: {args.output}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started by the profiler was stopped", file=sys.stderr)
        sys.exit(130)
