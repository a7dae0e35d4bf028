"""Load generation: wrk with a Lua script, or an aiohttp client when wrk is absent.

Both send the same POST body over `connections` keep-alive connections,
each connection one request at a time, until `max_requests` responses have
arrived or `duration` seconds have passed. Latency is measured per request
from sending to the last byte of the response.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# The script reads its arguments (body file, bearer token or "-", request
# limit or 0) in init() and counts requests per thread. A thread that reaches
# the limit stops and prints `BENCH_LIMIT_REACHED`, because wrk's main thread
# otherwise sleeps for the whole --duration. done() prints one line
# `BENCH_RESULT {json}`; latencies are in microseconds.
WRK_SCRIPT = r"""local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local body = file:read("*a")
  file:close()
  local headers = {["Content-Type"] = "application/json"}
  if args[2] ~= "-" then
    headers["Authorization"] = "Bearer " .. args[2]
  end
  limit = tonumber(args[3])
  sent = 0
  ok = 0
  failed = 0
  prepared = wrk.format("POST", nil, headers, body)
end

function request()
  sent = sent + 1
  return prepared
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  else
    failed = failed + 1
  end
  if limit > 0 and ok + failed >= limit then
    wrk.thread:stop()
    io.write("BENCH_LIMIT_REACHED\n")
    io.stdout:flush()
  end
end

function done(summary, latency, requests)
  -- Before the run, wrk calls request() once in the first thread to check
  -- the script, and sends nothing for that call.
  local sent_total, ok_total, failed_total = -1, 0, 0
  for _, thread in ipairs(threads) do
    sent_total = sent_total + thread:get("sent")
    ok_total = ok_total + thread:get("ok")
    failed_total = failed_total + thread:get("failed")
  end
  local errors = summary.errors
  local socket_errors = errors.connect + errors.read + errors.write + errors.timeout
  io.write(string.format(
    'BENCH_RESULT {"sent": %d, "ok": %d, "failed": %d, ' ..
    '"socket_errors": %d, "duration_us": %d, "median_us": %d, "p95_us": %d}\n',
    sent_total, ok_total, failed_total, socket_errors,
    summary.duration, latency:percentile(50), latency:percentile(95)))
end
"""

# Per-request timeout in seconds. A slower response counts as a socket error.
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class LoadSpec:
    url: str
    body: bytes
    # API key sent as `Authorization: Bearer`, or None to send no header.
    token: str | None
    connections: int
    # Upper bound in seconds. With max_requests set, the run usually ends sooner.
    duration: float
    max_requests: int | None = None


@dataclass(frozen=True)
class LoadResult:
    # Requests written to the server, including any cut off by the end of the run.
    sent: int
    # Responses received with status 200, and with any other status.
    ok: int
    failed: int
    socket_errors: int
    duration: float
    median_ms: float
    p95_ms: float

    @property
    def completed(self) -> int:
        return self.ok + self.failed

    @property
    def requests_per_second(self) -> float:
        return self.completed / self.duration if self.duration > 0 else 0.0


class LoadGenerator:
    """Runs load with wrk when it is installed, with aiohttp otherwise."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._wrk = shutil.which("wrk")
        self._script = workdir / "post.lua"
        self._script.write_text(WRK_SCRIPT)

    @property
    def description(self) -> str:
        if self._wrk is None:
            return "Python aiohttp client in the benchmark process (wrk not found)"
        version = subprocess.run(
            [self._wrk, "--version"], capture_output=True, text=True, check=False
        ).stdout.split(" [")[0]
        return f"{version}, one thread, Lua script for the POST body"

    def run(self, spec: LoadSpec) -> LoadResult:
        if self._wrk is None:
            return asyncio.run(run_aiohttp(spec))
        return self._run_wrk(spec)

    def _run_wrk(self, spec: LoadSpec) -> LoadResult:
        assert self._wrk is not None
        body_path = self._workdir / "body.json"
        body_path.write_bytes(spec.body)
        command = [self._wrk, "--threads", "1", "--connections", str(spec.connections)]
        command += ["--duration", f"{math.ceil(spec.duration)}s"]
        command += ["--timeout", f"{REQUEST_TIMEOUT:.0f}s", "--script", str(self._script)]
        command += [spec.url, "--", str(body_path), spec.token or "-", str(spec.max_requests or 0)]
        output = run_wrk_process(command, timeout=spec.duration + 60)
        return parse_wrk_output(output)


def run_wrk_process(command: list[str], timeout: float) -> str:
    """Run wrk, stop it with SIGINT once the script reports its limit, and return its output.

    wrk stops by itself after --duration, and on SIGINT it stops early and
    still prints its results. `timeout` is a backstop in seconds.
    """
    # One pipe for both streams, so that communicate() reads on from the
    # same buffer as the loop.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("BENCH_LIMIT_REACHED"):
                process.send_signal(signal.SIGINT)
                break
        rest, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return "".join(lines) + rest


def parse_wrk_output(output: str) -> LoadResult:
    for line in output.splitlines():
        if line.startswith("BENCH_RESULT "):
            values = json.loads(line.removeprefix("BENCH_RESULT "))
            return LoadResult(
                sent=values["sent"],
                ok=values["ok"],
                failed=values["failed"],
                socket_errors=values["socket_errors"],
                duration=values["duration_us"] / 1e6,
                median_ms=values["median_us"] / 1000,
                p95_ms=values["p95_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no BENCH_RESULT line; its output was:\n{output}")


async def run_aiohttp(spec: LoadSpec) -> LoadResult:
    """Run the load with aiohttp. Requests in flight at the deadline finish first."""
    import aiohttp

    headers = {"content-type": "application/json"}
    if spec.token:
        headers["authorization"] = f"Bearer {spec.token}"
    latencies: list[float] = []
    counts = {"sent": 0, "ok": 0, "failed": 0, "socket_errors": 0}
    limit = spec.max_requests or math.inf
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=spec.connections)
    started = time.perf_counter()
    deadline = started + spec.duration

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline and counts["sent"] < limit:
            counts["sent"] += 1
            request_started = time.perf_counter()
            try:
                async with session.post(spec.url, data=spec.body, headers=headers) as response:
                    await response.read()
            except (aiohttp.ClientError, TimeoutError):
                counts["socket_errors"] += 1
                continue
            latencies.append(time.perf_counter() - request_started)
            counts["ok" if response.status == 200 else "failed"] += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(spec.connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return LoadResult(
        sent=counts["sent"],
        ok=counts["ok"],
        failed=counts["failed"],
        socket_errors=counts["socket_errors"],
        duration=elapsed,
        median_ms=percentile(latencies, 50) * 1000,
        p95_ms=percentile(latencies, 95) * 1000,
    )


def percentile(sorted_values: list[float], rank: float) -> float:
    """Return the nearest-rank percentile of an ascending list, or 0.0 if it is empty."""
    if not sorted_values:
        return 0.0
    index = max(0, math.ceil(rank / 100 * len(sorted_values)) - 1)
    return sorted_values[index]
