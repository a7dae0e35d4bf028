"""Model comparison runs, cells and ratings in Postgres.

A run stores its settings and prompts when it starts, then one cell row per
prompt and model as each call finishes. A cell row, with an answer or an
error, marks that pair as done: resuming a run sends only the pairs without
one. The API key that paid for a run is never stored.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from gateway_core import access
from gateway_core.access import Actor
from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.schema import (
    comparison_cells,
    comparison_prompts,
    comparison_ratings,
    comparison_runs,
    usage_events,
)

RUN_KINDS = ("interactive", "batch")
RUN_STATUSES = ("running", "cancelled", "completed")
# Check names and the comparison_cells columns that store their outcomes.
CHECK_COLUMNS = {
    "exact": "exact_match",
    "contains": "contains_match",
    "regex": "regex_match",
    "json": "json_valid",
}
MAX_NOTE_CHARS = 2000
USAGE_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class RunSpec:
    """The inputs of a run, which sends every prompt to every model with the same settings."""

    models: tuple[str, ...]
    prompts: tuple[str, ...]
    # One entry per prompt; None where the prompt has no expected answer.
    expected: tuple[str | None, ...]
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    checks: tuple[str, ...] = ()

    @property
    def cell_count(self) -> int:
        return len(self.models) * len(self.prompts)


@dataclass(frozen=True)
class CellResult:
    """The outcome of one prompt on one model. Times are milliseconds."""

    position: int
    model: str
    answer: str | None = None
    error: str | None = None
    request_id: str | None = None
    ttft_ms: int | None = None
    latency_ms: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    tokens_per_second: float | None = None
    cost_usd: Decimal | None = None
    # Outcome per check name; empty when the prompt has no expected answer.
    check_results: Mapping[str, bool] = field(default_factory=dict)
    passed: bool | None = None
    cell_id: int | None = None
    # Mean of the cell's ratings, filled in only when loaded from Postgres.
    rating: float | None = None


@dataclass(frozen=True)
class RunRecord:
    id: int
    kind: str
    status: str
    models: tuple[str, ...]
    prompt_count: int
    finished_cells: int
    created_by: str | None
    created_at: datetime
    finished_at: datetime | None
    source_run_id: int | None

    @property
    def cell_count(self) -> int:
        return len(self.models) * self.prompt_count


@dataclass(frozen=True)
class Rating:
    cell_id: int
    rated_by: str
    rating: int
    note: str | None


@dataclass(frozen=True)
class UsageFigures:
    """The parts of a call's usage_events row that a comparison cell shows."""

    cost_usd: Decimal
    prompt_tokens: int
    completion_tokens: int


class RunStore:
    """Reads and writes comparison runs through one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_run(
        self,
        spec: RunSpec,
        *,
        kind: str,
        created_by: str | None,
        source_run_id: int | None = None,
    ) -> int:
        if kind not in RUN_KINDS:
            raise InvalidRequestError(f"run kind must be one of {RUN_KINDS}, got {kind!r}")
        with self.engine.begin() as conn:
            run_id = conn.execute(
                insert(comparison_runs)
                .values(
                    kind=kind,
                    models=list(spec.models),
                    system_prompt=spec.system,
                    temperature=spec.temperature,
                    max_tokens=spec.max_tokens,
                    checks=list(spec.checks),
                    source_run_id=source_run_id,
                    created_by=created_by,
                )
                .returning(comparison_runs.c.id)
            ).scalar_one()
            conn.execute(
                insert(comparison_prompts),
                [
                    {"run_id": run_id, "position": i, "prompt": prompt, "expected": expected}
                    for i, (prompt, expected) in enumerate(
                        zip(spec.prompts, spec.expected, strict=True)
                    )
                ],
            )
        return run_id

    def load_spec(self, run_id: int) -> RunSpec:
        with self.engine.connect() as conn:
            run = _run_row(conn, run_id)
            prompts = conn.execute(
                select(comparison_prompts.c.prompt, comparison_prompts.c.expected)
                .where(comparison_prompts.c.run_id == run_id)
                .order_by(comparison_prompts.c.position)
            ).all()
        return RunSpec(
            models=tuple(run.models),
            prompts=tuple(prompt for prompt, _ in prompts),
            expected=tuple(expected for _, expected in prompts),
            system=run.system_prompt,
            temperature=run.temperature,
            max_tokens=run.max_tokens,
            checks=tuple(run.checks),
        )

    def load_run(self, run_id: int, actor: Actor | None = None) -> RunRecord:
        """Return one run; with an `actor`, only a run that `list_runs` would show them."""
        condition = comparison_runs.c.id == run_id
        visible = self._visible_to(actor)
        if visible is not None:
            condition = and_(condition, visible)
        runs = self._runs(condition, limit=1)
        if not runs:
            raise NotFoundError(f"comparison run {run_id} not found")
        return runs[0]

    def list_runs(self, limit: int = 50, actor: Actor | None = None) -> list[RunRecord]:
        """Return the newest runs first.

        Runs carry no organization, so an organization user sees the runs
        that members of their organizations started.
        """
        return self._runs(self._visible_to(actor), limit=limit)

    def _visible_to(self, actor: Actor | None) -> Any:
        if actor is None or actor.organization_ids is None:
            return None
        return access.written_by_member(
            actor.organization_ids, comparison_runs.c.created_by, comparison_runs.c.created_at
        )

    def _runs(self, condition: Any, limit: int) -> list[RunRecord]:
        prompt_count = (
            select(func.count())
            .where(comparison_prompts.c.run_id == comparison_runs.c.id)
            .scalar_subquery()
        )
        finished = (
            select(func.count())
            .where(comparison_cells.c.run_id == comparison_runs.c.id)
            .scalar_subquery()
        )
        query = select(
            comparison_runs.c.id,
            comparison_runs.c.kind,
            comparison_runs.c.status,
            comparison_runs.c.models,
            prompt_count,
            finished,
            comparison_runs.c.created_by,
            comparison_runs.c.created_at,
            comparison_runs.c.finished_at,
            comparison_runs.c.source_run_id,
        )
        if condition is not None:
            query = query.where(condition)
        query = query.order_by(comparison_runs.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            RunRecord(
                id=row[0],
                kind=row[1],
                status=row[2],
                models=tuple(row[3]),
                prompt_count=row[4],
                finished_cells=row[5],
                created_by=row[6],
                created_at=row[7],
                finished_at=row[8],
                source_run_id=row[9],
            )
            for row in rows
        ]

    def set_status(self, run_id: int, status: str) -> None:
        if status not in RUN_STATUSES:
            raise InvalidRequestError(f"run status must be one of {RUN_STATUSES}, got {status!r}")
        finished_at = None if status == "running" else func.now()
        with self.engine.begin() as conn:
            conn.execute(
                update(comparison_runs)
                .where(comparison_runs.c.id == run_id)
                .values(status=status, finished_at=finished_at)
            )

    def finished_cells(self, run_id: int) -> set[tuple[int, str]]:
        """Return the (prompt position, model) pairs that have a stored result."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(comparison_cells.c.position, comparison_cells.c.model).where(
                    comparison_cells.c.run_id == run_id
                )
            ).all()
        return {(position, model) for position, model in rows}

    def save_cell(self, run_id: int, cell: CellResult) -> int:
        """Store a finished cell once and return its id.

        A second save of the same prompt and model keeps the first row, so a
        cell that two overlapping resumes both finish is stored once.
        """
        values = {
            "run_id": run_id,
            "position": cell.position,
            "model": cell.model,
            "answer": cell.answer,
            "error": cell.error,
            "request_id": cell.request_id,
            "ttft_ms": cell.ttft_ms,
            "latency_ms": cell.latency_ms,
            "input_tokens": cell.input_tokens,
            "output_tokens": cell.output_tokens,
            "tokens_per_second": cell.tokens_per_second,
            "cost_usd": cell.cost_usd,
            "passed": cell.passed,
        }
        for check, column in CHECK_COLUMNS.items():
            values[column] = cell.check_results.get(check)
        statement = pg_insert(comparison_cells).values(**values)
        statement = statement.on_conflict_do_nothing(
            constraint="uq_comparison_cells_run_cell"
        ).returning(comparison_cells.c.id)
        with self.engine.begin() as conn:
            cell_id = conn.execute(statement).scalar_one_or_none()
            if cell_id is None:
                cell_id = conn.execute(
                    select(comparison_cells.c.id).where(
                        comparison_cells.c.run_id == run_id,
                        comparison_cells.c.position == cell.position,
                        comparison_cells.c.model == cell.model,
                    )
                ).scalar_one()
        return cell_id

    def load_cells(self, run_id: int) -> list[CellResult]:
        """Return the run's stored cells with their mean ratings.

        A cell saved before the proxy wrote its usage row has no cost yet, so
        the cost is read from usage_events for such cells.
        """
        mean_rating = (
            select(func.avg(comparison_ratings.c.rating))
            .where(comparison_ratings.c.cell_id == comparison_cells.c.id)
            .scalar_subquery()
        )
        cost = func.coalesce(comparison_cells.c.cost_usd, usage_events.c.cost_usd)
        query = (
            select(comparison_cells, cost.label("known_cost"), mean_rating.label("mean_rating"))
            .select_from(
                comparison_cells.outerjoin(
                    usage_events, usage_events.c.request_id == comparison_cells.c.request_id
                )
            )
            .where(comparison_cells.c.run_id == run_id)
            .order_by(comparison_cells.c.position, comparison_cells.c.id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_cell_from_row(row._mapping) for row in rows]

    def rate_cell(self, cell_id: int, rating: int, note: str | None, rated_by: str) -> None:
        """Store or replace `rated_by`'s 1 to 5 rating of a cell."""
        if not 1 <= rating <= 5:
            raise InvalidRequestError(f"rating must be 1 to 5, got {rating}", param="rating")
        note = (note or "").strip() or None
        if note is not None and len(note) > MAX_NOTE_CHARS:
            raise InvalidRequestError(
                f"note must be at most {MAX_NOTE_CHARS} characters, got {len(note)}",
                param="note",
            )
        values = {"rating": rating, "note": note}
        statement = pg_insert(comparison_ratings).values(
            cell_id=cell_id, rated_by=rated_by, **values
        )
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(comparison_cells.c.id).where(comparison_cells.c.id == cell_id)
            ).first()
            if exists is None:
                raise NotFoundError(f"comparison cell {cell_id} not found")
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[comparison_ratings.c.cell_id, comparison_ratings.c.rated_by],
                    set_={**values, "rated_at": func.now()},
                )
            )

    def ratings(self, run_id: int, rated_by: str | None = None) -> list[Rating]:
        """Return the ratings of a run's cells, optionally only those of one user."""
        query = (
            select(
                comparison_ratings.c.cell_id,
                comparison_ratings.c.rated_by,
                comparison_ratings.c.rating,
                comparison_ratings.c.note,
            )
            .select_from(
                comparison_ratings.join(
                    comparison_cells,
                    and_(
                        comparison_cells.c.id == comparison_ratings.c.cell_id,
                        comparison_cells.c.run_id == run_id,
                    ),
                )
            )
            .order_by(comparison_ratings.c.cell_id, comparison_ratings.c.rated_by)
        )
        if rated_by is not None:
            query = query.where(comparison_ratings.c.rated_by == rated_by)
        with self.engine.connect() as conn:
            return [Rating(*row) for row in conn.execute(query).all()]

    def usage_figures(self, request_id: str, timeout: float) -> UsageFigures | None:
        """Wait up to `timeout` seconds for the proxy to record a call and return its figures.

        The proxy writes usage rows in batches after the response ends, so a
        row can appear a little after the client has read the last chunk.
        """
        query = select(
            usage_events.c.cost_usd,
            usage_events.c.prompt_tokens,
            usage_events.c.completion_tokens,
        ).where(usage_events.c.request_id == request_id)
        deadline = time.monotonic() + timeout
        while True:
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
            if row is not None:
                return UsageFigures(*row)
            if time.monotonic() >= deadline:
                return None
            time.sleep(USAGE_POLL_SECONDS)


def _run_row(conn: Connection, run_id: int) -> Any:
    row = conn.execute(select(comparison_runs).where(comparison_runs.c.id == run_id)).first()
    if row is None:
        raise NotFoundError(f"comparison run {run_id} not found")
    return row


def _cell_from_row(row: Mapping[str, Any]) -> CellResult:
    checks = {
        check: row[column] for check, column in CHECK_COLUMNS.items() if row[column] is not None
    }
    rating = row["mean_rating"]
    return CellResult(
        position=row["position"],
        model=row["model"],
        answer=row["answer"],
        error=row["error"],
        request_id=row["request_id"],
        ttft_ms=row["ttft_ms"],
        latency_ms=row["latency_ms"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        tokens_per_second=row["tokens_per_second"],
        cost_usd=row["known_cost"],
        check_results=checks,
        passed=row["passed"],
        cell_id=row["id"],
        # Mean of 1 to 5 integers, a display figure rather than money.
        rating=None if rating is None else float(rating),
    )


def ordered_cells(cells: Sequence[CellResult], models: Sequence[str]) -> list[CellResult]:
    """Sort cells by prompt position, then by the run's model order."""
    rank = {model: i for i, model in enumerate(models)}
    return sorted(cells, key=lambda cell: (cell.position, rank.get(cell.model, len(rank))))
