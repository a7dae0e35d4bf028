"""Worker threads that send comparison cells through the proxy and report events.

Each cell, one prompt on one model, is a streamed chat completion sent with
the openai SDK. At most `concurrency` worker threads send cells. The
calling thread receives their events (`CellDelta`, `CellDone`, `Waiting`)
and passes them to `on_event`, so a Streamlit page can draw them without
touching Streamlit from a worker. Any exception in the calling thread, such
as the one Streamlit raises to stop a script, stops the run: no new cell
starts and streams in flight are closed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

import httpx
import openai

from gateway_core.compare_report import run_checks
from gateway_core.compare_store import CellResult, RunSpec, RunStore, UsageFigures
from gateway_core.errors import InvalidRequestError

logger = logging.getLogger("gatewayz.compare")

MAX_CONCURRENCY = 16
# Seconds to wait for the proxy's usage row after a call ends.
USAGE_ROW_TIMEOUT = 5.0
# Seconds between `Waiting` events while no worker reports anything.
WAIT_EVENT_INTERVAL = 0.2
REQUEST_TIMEOUT = 120.0
# Seconds a stopped run waits for its workers to end before it returns.
ABORT_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class CellDelta:
    """The answer so far of a cell that is still streaming."""

    position: int
    model: str
    text: str


@dataclass(frozen=True)
class CellDone:
    cell: CellResult
    finished: int
    total: int


@dataclass(frozen=True)
class Waiting:
    """No worker reported anything during the last `WAIT_EVENT_INTERVAL` seconds."""

    finished: int
    total: int


CompareEvent = CellDelta | CellDone | Waiting
EventHandler = Callable[[CompareEvent], None]


class ComparisonCancelled(Exception):
    """The caller's cancel event stopped a run before all its cells finished."""

    def __init__(self, run_id: int | None, finished: int, total: int) -> None:
        super().__init__(f"comparison run {run_id} cancelled after {finished} of {total} cells")
        self.run_id = run_id
        self.finished = finished
        self.total = total


class _CellAborted(Exception):
    """A worker stopped reading a stream because the run was stopped."""


@dataclass(frozen=True)
class _WorkerFailed:
    error: BaseException


def proxy_client(key: str, base_url: str, timeout: float = REQUEST_TIMEOUT) -> openai.OpenAI:
    # The SDK's own retries would hide failures that a comparison should show.
    return openai.OpenAI(
        base_url=base_url.rstrip("/") + "/v1", api_key=key, max_retries=0, timeout=timeout
    )


def run_cells(
    spec: RunSpec,
    pending: list[tuple[int, str]],
    key: str,
    base_url: str,
    concurrency: int,
    run_store: RunStore | None,
    run_id: int | None,
    on_event: EventHandler | None,
    cancel: threading.Event | None,
) -> list[CellResult]:
    """Send the pending (prompt position, model) cells and return them in finishing order."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidRequestError(
            f"concurrency must be 1 to {MAX_CONCURRENCY}, got {concurrency}", param="concurrency"
        )
    stop = threading.Event()
    client = proxy_client(key, base_url)
    runner = _CellRunner(spec, client, run_store, run_id, stop)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="compare")
    futures = [pool.submit(runner.run, position, model) for position, model in pending]
    finished: list[CellResult] = []
    try:
        ended = 0
        while ended < len(pending):
            if cancel is not None and cancel.is_set():
                raise ComparisonCancelled(run_id, len(finished), len(pending))
            event = runner.next_event()
            if isinstance(event, _WorkerFailed):
                raise event.error
            if event is None:
                ended += 1
                continue
            if isinstance(event, Waiting):
                event = Waiting(len(finished), len(pending))
            elif isinstance(event, CellDone):
                finished.append(event.cell)
                event = CellDone(event.cell, len(finished), len(pending))
            if on_event is not None:
                on_event(event)
    finally:
        # Reached early on cancel, a worker failure or a stopped Streamlit
        # script: no new cell starts and no worker stores another cell.
        stop.set()
        for future in futures:
            future.cancel()
        client.close()
        # Closing the client does not wake a worker blocked reading a silent
        # upstream, so such a worker is left to end at its read timeout.
        wait(futures, timeout=ABORT_WAIT_SECONDS)
        pool.shutdown(wait=False)
    return finished


class _CellRunner:
    """Sends single cells from worker threads and queues their events for the calling thread.

    A streaming cell keeps only its newest text, and the queue contains at most
    one CellDelta per cell, so a slow event handler does not make it grow.
    """

    def __init__(
        self,
        spec: RunSpec,
        client: openai.OpenAI,
        run_store: RunStore | None,
        run_id: int | None,
        stop: threading.Event,
    ) -> None:
        self.spec = spec
        self.client = client
        self.run_store = run_store
        self.run_id = run_id
        self.stop = stop
        self._events: queue.Queue[CompareEvent | _WorkerFailed | None] = queue.Queue()
        self._lock = threading.Lock()
        self._texts: dict[tuple[int, str], str] = {}

    def next_event(self) -> CompareEvent | _WorkerFailed | None:
        """Wait for the next event; None means that one cell's worker has ended."""
        try:
            event = self._events.get(timeout=WAIT_EVENT_INTERVAL)
        except queue.Empty:
            return Waiting(0, 0)
        if isinstance(event, CellDelta):
            with self._lock:
                text = self._texts.pop((event.position, event.model))
            return CellDelta(event.position, event.model, text)
        return event

    def _report_text(self, position: int, model: str, text: str) -> None:
        with self._lock:
            queued = (position, model) in self._texts
            self._texts[(position, model)] = text
        if not queued:
            self._events.put(CellDelta(position, model, ""))

    def run(self, position: int, model: str) -> None:
        """Send one cell, store it, and end by queuing None."""
        try:
            if self.stop.is_set():
                return
            try:
                cell = stream_cell(
                    self.client,
                    self.spec,
                    position,
                    model,
                    on_text=lambda text: self._report_text(position, model, text),
                    stop=self.stop,
                )
            except _CellAborted:
                return
            cell = self._finish(cell)
            if cell is not None:
                self._events.put(CellDone(cell, 0, 0))
        except BaseException as error:
            logger.exception(
                "comparison run %s: cell %d on %s failed", self.run_id, position, model
            )
            self._events.put(_WorkerFailed(error))
        finally:
            self._events.put(None)

    def _finish(self, cell: CellResult) -> CellResult | None:
        """Add usage figures and check outcomes and store the cell, unless the run has stopped."""
        if self.run_store is not None and cell.request_id is not None:
            figures = self.run_store.usage_figures(cell.request_id, USAGE_ROW_TIMEOUT)
            if figures is None:
                logger.warning(
                    "comparison run %s: no usage row for request %s after %.0f s; "
                    "its cost is read again when the run is loaded",
                    self.run_id,
                    cell.request_id,
                    USAGE_ROW_TIMEOUT,
                )
            else:
                cell = _with_usage(cell, figures)
        expected = self.spec.expected[cell.position]
        results = run_checks(cell.answer, expected, self.spec.checks)
        cell = replace(
            cell, check_results=results, passed=all(results.values()) if results else None
        )
        if self.stop.is_set():
            return None
        if self.run_store is not None and self.run_id is not None:
            cell = replace(cell, cell_id=self.run_store.save_cell(self.run_id, cell))
        return cell


def _with_usage(cell: CellResult, figures: UsageFigures) -> CellResult:
    input_tokens = cell.input_tokens if cell.input_tokens is not None else figures.prompt_tokens
    output_tokens = cell.output_tokens
    if output_tokens is None:
        output_tokens = figures.completion_tokens
    tokens_per_second = cell.tokens_per_second
    if tokens_per_second is None:
        tokens_per_second = _tokens_per_second(output_tokens, cell.ttft_ms, cell.latency_ms)
    return replace(
        cell,
        cost_usd=figures.cost_usd,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        tokens_per_second=tokens_per_second,
    )


def chat_messages(spec: RunSpec, position: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": spec.system}] if spec.system else []
    messages.append({"role": "user", "content": spec.prompts[position]})
    return messages


def stream_cell(
    client: openai.OpenAI,
    spec: RunSpec,
    position: int,
    model: str,
    *,
    on_text: Callable[[str], None],
    stop: threading.Event,
) -> CellResult:
    """Stream one chat completion and measure it; a failed call returns a cell with `error`.

    Raises _CellAborted when `stop` is set before the stream ends.
    """
    params: dict[str, object] = {
        "model": model,
        "messages": chat_messages(spec, position),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if spec.temperature is not None:
        params["temperature"] = spec.temperature
    if spec.max_tokens is not None:
        params["max_tokens"] = spec.max_tokens
    started = time.perf_counter()
    first_token: float | None = None
    answer = ""
    usage = None
    request_id = None
    try:
        with client.chat.completions.with_streaming_response.create(**params) as response:
            request_id = response.headers.get("x-request-id")
            for chunk in response.parse():
                if stop.is_set():
                    raise _CellAborted
                if chunk.usage is not None:
                    usage = chunk.usage
                text = "".join(choice.delta.content or "" for choice in chunk.choices)
                if text:
                    if first_token is None:
                        first_token = time.perf_counter()
                    answer += text
                    on_text(answer)
    except openai.APIStatusError as error:
        request_id = error.response.headers.get("x-request-id", request_id)
        return _error_cell(
            position,
            model,
            f"HTTP {error.status_code}: {error.message}",
            started,
            request_id,
            answer,
        )
    except (openai.APIError, httpx.HTTPError) as error:
        # Closing the client to stop a run also ends up here.
        if stop.is_set():
            raise _CellAborted from error
        return _error_cell(position, model, str(error), started, request_id, answer)
    ended = time.perf_counter()
    ttft_ms = None if first_token is None else round((first_token - started) * 1000)
    latency_ms = round((ended - started) * 1000)
    output_tokens = usage.completion_tokens if usage is not None else None
    return CellResult(
        position=position,
        model=model,
        answer=answer,
        request_id=request_id,
        ttft_ms=ttft_ms,
        latency_ms=latency_ms,
        input_tokens=usage.prompt_tokens if usage is not None else None,
        output_tokens=output_tokens,
        tokens_per_second=_tokens_per_second(output_tokens, ttft_ms, latency_ms),
    )


def _error_cell(
    position: int,
    model: str,
    message: str,
    started: float,
    request_id: str | None,
    answer: str,
) -> CellResult:
    logger.info("comparison cell on %s failed (request %s): %s", model, request_id, message)
    return CellResult(
        position=position,
        model=model,
        # Text streamed before a mid-stream error is kept.
        answer=answer or None,
        error=message,
        request_id=request_id,
        latency_ms=round((time.perf_counter() - started) * 1000),
    )


def _tokens_per_second(
    output_tokens: int | None, ttft_ms: int | None, latency_ms: int | None
) -> float | None:
    """Return output tokens per second of generation, from the first token to the last.

    None when the tokens arrived within one millisecond, as the sandbox's do,
    because the rate would be meaningless.
    """
    if output_tokens is None or ttft_ms is None or latency_ms is None:
        return None
    generating_ms = latency_ms - ttft_ms
    if generating_ms < 1:
        return None
    return round(output_tokens / (generating_ms / 1000), 2)
