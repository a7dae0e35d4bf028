"""Model comparisons: send prompts to several models through the proxy and score the answers.

Every prompt goes to every model as a streamed chat completion through the
proxy's OpenAI-compatible API, so the proxy checks, bills and records each
call like any other. gateway_core.compare_runner sends the calls,
compare_store keeps runs in Postgres, and compare_report scores and
summarizes them.

Streamed responses carry no cost header, so a cell's cost and, when the
stream has no usage chunk, its token counts come from the call's
usage_events row, read through the `RunStore`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence

import pandas as pd
from sqlalchemy import Connection, select

from gateway_core import access, audit, model_routes
from gateway_core.access import Actor
from gateway_core.compare_report import (
    MAX_BATCH_PROMPTS,
    cells_frame,
    export_csv,
    parse_prompt_file,
    run_checks,
    summarize,
)
from gateway_core.compare_runner import (
    MAX_CONCURRENCY,
    CellDelta,
    CellDone,
    CompareEvent,
    ComparisonCancelled,
    EventHandler,
    Waiting,
    proxy_client,
    run_cells,
)
from gateway_core.compare_store import CellResult, RunSpec, RunStore
from gateway_core.config import ConfigError
from gateway_core.errors import InvalidRequestError
from gateway_core.schema import model_routes as model_routes_table

__all__ = [
    "CHECKS",
    "MAX_BATCH_PROMPTS",
    "MAX_CONCURRENCY",
    "CellDelta",
    "CellDone",
    "CellResult",
    "CompareEvent",
    "ComparisonCancelled",
    "ConfigError",
    "RunSpec",
    "RunStore",
    "Waiting",
    "build_spec",
    "cells_frame",
    "compare_models",
    "export_csv",
    "list_models",
    "parse_prompt_file",
    "proxy_url",
    "rerun_comparison",
    "resume_comparison",
    "run_checks",
    "set_winner_alias",
    "summarize",
]

logger = logging.getLogger("gatewayz.compare")
audit_logger = logging.getLogger("gatewayz.audit")

DEFAULT_PROXY_PORT = 8000
CHECKS = ("exact", "contains", "regex", "json")
DEFAULT_CHECKS = ("contains",)
MAX_TEMPERATURE = 2.0


def proxy_url(environ: Mapping[str, str] | None = None) -> str:
    """Return the proxy's base URL, without /v1, from GATEWAYZ_PROXY_URL.

    Unset, it is the proxy that `make run` starts on this host:
    http://127.0.0.1 at GATEWAYZ_PROXY_PORT, which defaults to 8000.
    """
    env = os.environ if environ is None else environ
    default = f"http://127.0.0.1:{env.get('GATEWAYZ_PROXY_PORT') or DEFAULT_PROXY_PORT}"
    url = (env.get("GATEWAYZ_PROXY_URL") or default).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"GATEWAYZ_PROXY_URL must start with http:// or https://, got {url!r}")
    return url


def list_models(key: str, *, base_url: str) -> list[str]:
    """Return the model ids and aliases that GET /v1/models lists for this key."""
    with proxy_client(key, base_url, timeout=30.0) as client:
        return [model.id for model in client.models.list()]


def build_spec(
    models: Sequence[str],
    prompts: Sequence[str],
    *,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    expected: Sequence[str | None] | None = None,
    checks: Sequence[str] = DEFAULT_CHECKS,
) -> RunSpec:
    """Validate the inputs of a run, raising InvalidRequestError on the first problem."""
    if not models:
        raise InvalidRequestError("choose at least one model", param="models")
    if len(set(models)) != len(models):
        raise InvalidRequestError("each model may be chosen only once", param="models")

    if not prompts:
        raise InvalidRequestError("enter at least one prompt", param="prompts")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise InvalidRequestError(f"prompt {i + 1} is empty", param="prompts")

    if expected is None:
        expected = [None] * len(prompts)
    if len(expected) != len(prompts):
        raise InvalidRequestError(
            f"expected has {len(expected)} entries for {len(prompts)} prompts", param="expected"
        )

    unknown = [check for check in checks if check not in CHECKS]
    if unknown:
        raise InvalidRequestError(
            f"unknown checks {unknown}; use some of {', '.join(CHECKS)}", param="checks"
        )

    if temperature is not None and not 0 <= temperature <= MAX_TEMPERATURE:
        raise InvalidRequestError(
            f"temperature must be between 0 and {MAX_TEMPERATURE}, got {temperature}",
            param="temperature",
        )
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequestError(
            f"max tokens must be at least 1, got {max_tokens}", param="max_tokens"
        )

    answers = tuple(None if value is None or not value.strip() else value for value in expected)
    if "regex" in checks:
        _check_patterns(answers)
    if system is not None and not system.strip():
        system = None
    return RunSpec(
        models=tuple(models),
        prompts=tuple(prompts),
        expected=answers,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        checks=tuple(dict.fromkeys(checks)),
    )


def _check_patterns(expected: Sequence[str | None]) -> None:
    for i, pattern in enumerate(expected):
        if pattern is None:
            continue
        try:
            re.compile(pattern)
        except re.error as error:
            raise InvalidRequestError(
                f"expected answer of prompt {i + 1} is not a valid regular expression "
                f"for the regex check: {error}",
                param="expected",
            ) from error


def compare_models(
    models: list[str],
    prompts: list[str],
    key: str,
    *,
    base_url: str,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    concurrency: int = 4,
    expected: list[str | None] | None = None,
    checks: Sequence[str] = DEFAULT_CHECKS,
    run_store: RunStore | None = None,
    kind: str = "batch",
    created_by: str | None = None,
    on_event: EventHandler | None = None,
    cancel: threading.Event | None = None,
) -> pd.DataFrame:
    """Send every prompt to every model through the proxy and return one row per cell.

    A failed call gives a cell with `error` set and does not stop the others.
    With a `run_store` the run and each finished cell are stored, the frame's
    `run_id` column names the run, and costs come from the usage rows.
    Without one, `cost_usd` is None. Setting `cancel` stops the run and
    raises ComparisonCancelled once the calls in flight have closed.
    """
    spec = build_spec(
        models,
        prompts,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        expected=expected,
        checks=checks,
    )
    run_id = None
    if run_store is not None:
        run_id = run_store.create_run(spec, kind=kind, created_by=created_by)
        logger.info(
            "comparison run %d started by %s: %d models, %d prompts",
            run_id,
            created_by,
            len(spec.models),
            len(spec.prompts),
        )
    pending = [(i, model) for i in range(len(spec.prompts)) for model in spec.models]
    cells = _run_and_record(
        spec, pending, key, base_url, concurrency, run_store, run_id, on_event, cancel
    )
    return cells_frame(spec, cells, run_id)


def resume_comparison(
    run_id: int,
    key: str,
    *,
    base_url: str,
    run_store: RunStore,
    concurrency: int = 4,
    on_event: EventHandler | None = None,
    cancel: threading.Event | None = None,
) -> pd.DataFrame:
    """Send only the cells of a stored run that have no stored result, and return all cells."""
    spec = run_store.load_spec(run_id)
    done = run_store.finished_cells(run_id)
    pending = [
        (i, model)
        for i in range(len(spec.prompts))
        for model in spec.models
        if (i, model) not in done
    ]
    logger.info("resuming comparison run %d: %d cells left", run_id, len(pending))
    run_store.set_status(run_id, "running")
    _run_and_record(spec, pending, key, base_url, concurrency, run_store, run_id, on_event, cancel)
    return cells_frame(spec, run_store.load_cells(run_id), run_id)


def rerun_comparison(
    run_id: int,
    key: str,
    *,
    base_url: str,
    run_store: RunStore,
    created_by: str | None = None,
    concurrency: int = 4,
    on_event: EventHandler | None = None,
    cancel: threading.Event | None = None,
) -> pd.DataFrame:
    """Send a stored run's prompts and settings again as a new run."""
    spec = run_store.load_spec(run_id)
    kind = run_store.load_run(run_id).kind
    new_id = run_store.create_run(spec, kind=kind, created_by=created_by, source_run_id=run_id)
    logger.info("comparison run %d started by %s as a re-run of run %d", new_id, created_by, run_id)
    pending = [(i, model) for i in range(len(spec.prompts)) for model in spec.models]
    cells = _run_and_record(
        spec, pending, key, base_url, concurrency, run_store, new_id, on_event, cancel
    )
    return cells_frame(spec, cells, new_id)


def _run_and_record(
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
    """Run the pending cells and set the stored run's status from how the run ended."""
    status = "cancelled"
    try:
        cells = run_cells(
            spec, pending, key, base_url, concurrency, run_store, run_id, on_event, cancel
        )
        status = "completed"
        return cells
    finally:
        # Also reached when the page's script is stopped by a rerun.
        if run_store is not None and run_id is not None:
            run_store.set_status(run_id, status)
            logger.info("comparison run %d %s", run_id, status)


def set_winner_alias(conn: Connection, alias: str, model: str, actor: Actor | str) -> None:
    """Point a model alias at a comparison's winning model, with an audit entry and log line.

    An alias routes requests of every organization, so this needs
    `models.manage`, which only installation staff take. A bare role string
    is an installation-wide principal (see access.as_actor). The audit entry
    is written in the caller's transaction, so it commits or rolls back with
    the alias.
    """
    principal = access.as_actor(actor)
    access.require_actor(principal, "models.manage")
    before = conn.execute(
        select(model_routes_table.c.target).where(model_routes_table.c.name == alias)
    ).scalar_one_or_none()
    model_routes.set_alias(conn, alias, model, principal.username)
    audit.record(
        conn,
        actor=principal.username,
        action="model_alias.set",
        object_type="model_alias",
        object_id=alias,
        before=None if before is None else {"target": before},
        after={"target": model, "reason": "model comparison winner"},
        client_address=principal.client_address,
    )
    audit_logger.info(
        "user %s pointed alias %r at %s after a model comparison",
        principal.username,
        alias,
        model,
    )
