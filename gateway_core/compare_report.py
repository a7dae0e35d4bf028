"""Scoring and tables for model comparisons: checks, result frames, summaries, prompt files."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pandas as pd

from gateway_core.compare_store import CellResult, RunSpec, ordered_cells
from gateway_core.errors import InvalidRequestError

MAX_BATCH_PROMPTS = 500
CELL_COLUMNS = (
    "run_id",
    "cell_id",
    "position",
    "prompt",
    "expected",
    "model",
    "answer",
    "error",
    "ttft_ms",
    "latency_ms",
    "input_tokens",
    "output_tokens",
    "tokens_per_second",
    "cost_usd",
    "request_id",
    "exact",
    "contains",
    "regex",
    "json",
    "passed",
    "rating",
)
SUMMARY_COLUMNS = (
    "model",
    "cells",
    "errors",
    "checked",
    "pass_rate",
    "mean_rating",
    "median_latency_ms",
    "p95_latency_ms",
    "total_cost_usd",
)


def run_checks(answer: str | None, expected: str | None, checks: Sequence[str]) -> dict[str, bool]:
    """Check an answer against the expected answer; empty when there is no expected answer.

    - exact: the answer equals the expected text, both stripped of surrounding whitespace.
    - contains: the answer contains the expected text, ignoring case.
    - regex: `re.search` finds the expected text, read as a pattern, in the answer.
      Inline flags such as `(?i)` set case-insensitive matching.
    - json: the answer, stripped, parses as JSON. The expected text is not used.
    A missing answer (a failed call) fails every check.
    """
    if expected is None:
        return {}
    results: dict[str, bool] = {}
    text = answer.strip() if answer is not None else None
    for check in checks:
        if text is None:
            results[check] = False
        elif check == "exact":
            results[check] = text == expected.strip()
        elif check == "contains":
            results[check] = expected.strip().casefold() in text.casefold()
        elif check == "regex":
            results[check] = re.search(expected, text) is not None
        elif check == "json":
            results[check] = _is_json(text)
        else:
            raise InvalidRequestError(f"unknown check {check!r}", param="checks")
    return results


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def cells_frame(spec: RunSpec, cells: Sequence[CellResult], run_id: int | None) -> pd.DataFrame:
    """Return one row per cell, ordered by prompt and then by the run's model order.

    `cost_usd` contains Decimal values (object dtype), or None when unknown.
    """
    rows: list[dict[str, Any]] = []
    for cell in ordered_cells(cells, spec.models):
        rows.append(
            {
                "run_id": run_id,
                "cell_id": cell.cell_id,
                "position": cell.position,
                "prompt": spec.prompts[cell.position],
                "expected": spec.expected[cell.position],
                "model": cell.model,
                "answer": cell.answer,
                "error": cell.error,
                "ttft_ms": cell.ttft_ms,
                "latency_ms": cell.latency_ms,
                "input_tokens": cell.input_tokens,
                "output_tokens": cell.output_tokens,
                "tokens_per_second": cell.tokens_per_second,
                "cost_usd": cell.cost_usd,
                "request_id": cell.request_id,
                "exact": cell.check_results.get("exact"),
                "contains": cell.check_results.get("contains"),
                "regex": cell.check_results.get("regex"),
                "json": cell.check_results.get("json"),
                "passed": cell.passed,
                "rating": cell.rating,
            }
        )
    frame = pd.DataFrame(rows, columns=list(CELL_COLUMNS))
    for column in ("run_id", "cell_id", "ttft_ms", "latency_ms", "input_tokens", "output_tokens"):
        frame[column] = frame[column].astype("Int64")
    for column in ("exact", "contains", "regex", "json", "passed"):
        frame[column] = frame[column].astype("boolean")
    frame["tokens_per_second"] = frame["tokens_per_second"].astype("Float64")
    frame["rating"] = frame["rating"].astype("Float64")
    frame["cost_usd"] = frame["cost_usd"].astype(object)
    return frame


def summarize(frame: pd.DataFrame, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Return one row per model: pass rate, mean rating, latency and total cost.

    - pass_rate: passed cells over cells whose prompt has an expected answer,
      failed calls included; missing when no prompt has one.
    - mean_rating: the mean of the model's rated cells' mean ratings.
    - median_latency_ms, p95_latency_ms: over calls without an error, with
      linear interpolation between cells (pandas' quantile default).
    - total_cost_usd: the Decimal sum of known cell costs.
    """
    order = list(models) if models is not None else list(dict.fromkeys(frame["model"]))
    rows = [_summary_row(model, frame[frame["model"] == model]) for model in order]
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    for column in ("pass_rate", "mean_rating", "median_latency_ms", "p95_latency_ms"):
        summary[column] = summary[column].astype("Float64")
    summary["total_cost_usd"] = summary["total_cost_usd"].astype(object)
    return summary


def _summary_row(model: str, cells: pd.DataFrame) -> dict[str, Any]:
    checked = cells[cells["passed"].notna()]
    ok_latency = cells.loc[cells["error"].isna(), "latency_ms"].dropna().astype(float)
    ratings = cells["rating"].dropna()
    costs = [cost for cost in cells["cost_usd"] if cost is not None and not pd.isna(cost)]
    return {
        "model": model,
        "cells": len(cells),
        "errors": int(cells["error"].notna().sum()),
        "checked": len(checked),
        "pass_rate": float(checked["passed"].astype(bool).mean()) if len(checked) else None,
        "mean_rating": float(ratings.mean()) if len(ratings) else None,
        "median_latency_ms": float(ok_latency.median()) if len(ok_latency) else None,
        "p95_latency_ms": float(ok_latency.quantile(0.95)) if len(ok_latency) else None,
        "total_cost_usd": sum(costs, Decimal(0)),
    }


def export_csv(frame: pd.DataFrame) -> bytes:
    """Return the frame as UTF-8 CSV, with costs written as exact decimal strings."""
    export = frame.copy()
    for column in ("cost_usd", "total_cost_usd"):
        if column in export:
            export[column] = [
                "" if value is None or pd.isna(value) else format(value, "f")
                for value in export[column]
            ]
    return export.to_csv(index=False).encode("utf-8")


def parse_prompt_file(filename: str, data: bytes) -> tuple[list[str], list[str | None]]:
    """Read prompts, and expected answers where given, from a CSV or JSONL file.

    CSV needs a header row with a `prompt` column and may have an `expected`
    column. JSONL has one object per line with a `prompt` string and an
    optional `expected` string or null. Blank expected answers become None.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidRequestError(f"{filename} is not UTF-8 text: {error}") from error
    lower = filename.lower()
    if lower.endswith(".csv"):
        rows = _csv_rows(filename, text)
    elif lower.endswith((".jsonl", ".ndjson")):
        rows = _jsonl_rows(filename, text)
    else:
        raise InvalidRequestError(f"{filename}: upload a .csv or .jsonl file")
    if not rows:
        raise InvalidRequestError(f"{filename} contains no prompts")
    if len(rows) > MAX_BATCH_PROMPTS:
        raise InvalidRequestError(
            f"{filename} has {len(rows)} prompts; split it into files of at most "
            f"{MAX_BATCH_PROMPTS}"
        )
    prompts = [prompt for prompt, _ in rows]
    expected = [answer if answer and answer.strip() else None for _, answer in rows]
    return prompts, expected


def _csv_rows(filename: str, text: str) -> list[tuple[str, str | None]]:
    reader = csv.DictReader(io.StringIO(text))
    fields = [name.strip().lower() for name in reader.fieldnames or []]
    if "prompt" not in fields:
        raise InvalidRequestError(
            f"{filename} has no 'prompt' column; the first row must name the columns, "
            "such as prompt,expected"
        )
    reader.fieldnames = fields
    rows = []
    for line, record in enumerate(reader, start=2):
        prompt = record.get("prompt") or ""
        if not prompt.strip():
            raise InvalidRequestError(f"{filename} line {line}: the prompt is empty")
        rows.append((prompt, record.get("expected")))
    return rows


def _jsonl_rows(filename: str, text: str) -> list[tuple[str, str | None]]:
    rows = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as error:
            raise InvalidRequestError(
                f"{filename} line {line} is not valid JSON: {error}"
            ) from error
        if not isinstance(record, dict):
            raise InvalidRequestError(f"{filename} line {line} must be a JSON object")
        prompt = record.get("prompt")
        expected = record.get("expected")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequestError(
                f"{filename} line {line}: 'prompt' must be a non-empty string"
            )
        if expected is not None and not isinstance(expected, str):
            raise InvalidRequestError(
                f"{filename} line {line}: 'expected' must be a string or null"
            )
        rows.append((prompt, expected))
    return rows
