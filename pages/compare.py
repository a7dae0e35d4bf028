"""Compare page: send a prompt, or a file of prompts, to 2 to 6 models and score the answers.

app.py registers this page for owners, admins, team admins and researchers.
Calls go through the proxy at GATEWAYZ_PROXY_URL with a project API key that
the user pastes, so the proxy bills that key's project. The key is kept in
this session's state only, never in Postgres or the logs. Runs, answers,
metrics and ratings are stored. Installation staff see every run in the history, and
an organization user sees the runs of the members of their organizations.

The script thread draws the answers while they stream, so any click on the
page stops a run in progress, as Streamlit reruns the script. Finished cells
stay stored, and Resume sends only the cells that have no result.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import openai
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from sqlalchemy import Engine

from app_support import current_actor
from gateway_core import compare, model_admin
from gateway_core.compare import CellDelta, CellDone, CellResult, CompareEvent, RunStore
from gateway_core.compare_report import MAX_BATCH_PROMPTS
from gateway_core.compare_store import Rating, RunRecord, RunSpec
from gateway_core.config import ConfigError, Settings
from gateway_core.db import get_engine
from gateway_core.errors import GatewayError, NotFoundError

PAGE_NAME = "compare"
MIN_MODELS = 2
MAX_MODELS = 6
MAX_BATCH_CONCURRENCY = 8
HISTORY_LIMIT = 50
DEFAULT_ALIAS = "research-default"
# Session-state keys. The API key is kept under API_KEY only.
API_KEY = "compare_api_key"
MODEL_LIST = "compare_model_list"
OPEN_RUN = "compare_open_run"
FLASH_MESSAGE = "compare_page_flash"
QUALITY_LABELS = {"pass_rate": "Pass rate", "mean_rating": "Mean rating (1 to 5)"}
SUMMARY_LABELS = {
    "model": "Model",
    "cells": "Answers",
    "errors": "Errors",
    "checked": "Checked answers",
    "pass_rate": QUALITY_LABELS["pass_rate"],
    "mean_rating": QUALITY_LABELS["mean_rating"],
    "median_latency_ms": "Median latency (ms)",
    "p95_latency_ms": "p95 latency (ms)",
    "total_cost_usd": "Total cost (USD)",
}

logger = logging.getLogger("gatewayz.app.compare")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error("Sign in as an owner, admin, team admin or researcher to compare models.")
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


def username() -> str:
    return st.session_state["gatewayz_user"]["username"]


def finish_write(message: str) -> None:
    st.session_state[FLASH_MESSAGE] = message
    st.rerun()


def available_models(key: str, base_url: str) -> list[str] | None:
    """Return the models GET /v1/models lists for the key, fetched once per key and session."""
    fingerprint = hashlib.sha256(key.encode()).hexdigest()
    cached = st.session_state.get(MODEL_LIST)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    try:
        models = compare.list_models(key, base_url=base_url)
    except openai.AuthenticationError:
        st.error("The proxy rejected this API key. Check that it is complete and not revoked.")
        return None
    except openai.APIConnectionError:
        logger.warning("listing models failed: cannot reach the proxy at %s", base_url)
        st.error(
            f"Cannot reach the proxy at {base_url}. Start it, or set GATEWAYZ_PROXY_URL "
            "to its address, then reload the page."
        )
        return None
    except openai.APIStatusError as error:
        logger.warning("listing models failed with HTTP %d", error.status_code)
        st.error(f"Listing models failed with HTTP {error.status_code}: {error.message}")
        return None
    st.session_state[MODEL_LIST] = (fingerprint, models)
    return models


def settings_form(models: list[str]) -> dict[str, Any]:
    """Render the settings that both tabs use and return them."""
    chosen = st.multiselect(
        f"Models ({MIN_MODELS} to {MAX_MODELS})",
        models,
        max_selections=MAX_MODELS,
        key="compare_models",
    )
    system = st.text_area("System prompt (optional)", key="compare_system", height=80)
    left, right = st.columns(2)
    temperature = left.number_input(
        "Temperature (blank for the model's default)",
        min_value=0.0,
        max_value=compare.MAX_TEMPERATURE,
        step=0.1,
        value=None,
        key="compare_temperature",
    )
    max_tokens = right.number_input(
        "Max output tokens (blank for the model's default)",
        min_value=1,
        step=1,
        value=None,
        key="compare_max_tokens",
    )
    return {
        "models": chosen,
        "system": system,
        "temperature": temperature,
        "max_tokens": None if max_tokens is None else int(max_tokens),
    }


def checked_spec(
    settings: dict[str, Any],
    prompts: list[str],
    expected: list[str | None] | None,
    checks: tuple[str, ...],
) -> RunSpec | None:
    """Validate the inputs, showing an error and returning None when one is invalid."""
    if not MIN_MODELS <= len(settings["models"]) <= MAX_MODELS:
        st.error(f"Choose {MIN_MODELS} to {MAX_MODELS} models to compare.")
        return None
    try:
        return compare.build_spec(
            settings["models"],
            prompts,
            system=settings["system"],
            temperature=settings["temperature"],
            max_tokens=settings["max_tokens"],
            expected=expected,
            checks=checks,
        )
    except GatewayError as error:
        st.error(f"Comparison not started: {error.message}.")
        return None


def metrics_line(cell: CellResult) -> str:
    parts = []
    if cell.ttft_ms is not None:
        parts.append(f"TTFT {cell.ttft_ms / 1000:.2f} s")
    if cell.latency_ms is not None:
        parts.append(f"total {cell.latency_ms / 1000:.2f} s")
    if cell.input_tokens is not None or cell.output_tokens is not None:
        parts.append(f"{cell.input_tokens or 0} in / {cell.output_tokens or 0} out tokens")
    if cell.tokens_per_second is not None:
        parts.append(f"{cell.tokens_per_second:.1f} tokens/s")
    parts.append("cost not recorded yet" if cell.cost_usd is None else f"${cell.cost_usd:.6f}")
    return " · ".join(parts)


def live_columns(models: tuple[str, ...]) -> Callable[[CompareEvent], None]:
    """Draw one column per model and return an event handler that streams answers into them."""
    status = st.empty()
    texts, captions = {}, {}
    for column, model in zip(st.columns(len(models)), models, strict=True):
        column.markdown(f"**{model}**")
        texts[model] = column.empty()
        captions[model] = column.empty()

    def on_event(event: CompareEvent) -> None:
        if isinstance(event, CellDelta):
            texts[event.model].markdown(event.text)
            return
        if isinstance(event, CellDone):
            cell = event.cell
            if cell.error:
                texts[cell.model].error(cell.error)
            else:
                texts[cell.model].markdown(cell.answer or "")
            captions[cell.model].caption(metrics_line(cell))
        # Drawing on every event also lets a click stop the run between events.
        status.caption(f"{event.finished} of {event.total} answers finished")

    return on_event


def live_progress(remaining: int) -> Callable[[CompareEvent], None]:
    """Draw a cancel button and a progress bar and return an event handler for the bar."""
    # A click reruns the script, which stops the run; see the module docstring.
    st.button("Cancel batch", key="compare_cancel")
    st.caption(
        "Any click on this page stops the batch. Finished cells are kept, and Resume "
        "under the run sends the rest."
    )
    bar = st.progress(0.0, text=f"0 of {remaining} cells finished")

    def on_event(event: CompareEvent) -> None:
        if isinstance(event, CellDelta):
            return
        fraction = event.finished / event.total if event.total else 1.0
        bar.progress(fraction, text=f"{event.finished} of {event.total} cells finished")

    return on_event


def execute(store: RunStore, run_id: int, kind: str, key: str, base_url: str) -> None:
    """Send the run's cells that have no result, drawing them live, then show the stored run."""
    st.session_state[OPEN_RUN] = run_id
    spec = store.load_spec(run_id)
    if kind == "interactive":
        on_event = live_columns(spec.models)
        concurrency = len(spec.models)
    else:
        remaining = spec.cell_count - len(store.finished_cells(run_id))
        on_event = live_progress(remaining)
        concurrency = st.session_state.get("compare_concurrency", 4)
    try:
        compare.resume_comparison(
            run_id,
            key,
            base_url=base_url,
            run_store=store,
            concurrency=concurrency,
            on_event=on_event,
        )
    except GatewayError as error:
        logger.warning("comparison run %d stopped: %s", run_id, error.message)
        st.error(f"Run {run_id} stopped: {error.message}.")
        return
    st.rerun()


def start_run(store: RunStore, spec: RunSpec, kind: str, key: str, base_url: str) -> None:
    run_id = store.create_run(spec, kind=kind, created_by=username())
    logger.info("user %s started %s comparison run %d", username(), kind, run_id)
    execute(store, run_id, kind, key, base_url)


def render_compare_tab(
    store: RunStore, settings: dict[str, Any], key: str | None, base_url: str
) -> None:
    prompt = st.text_area("Prompt", key="compare_prompt", height=120)
    if not st.button("Run comparison", key="compare_run", type="primary"):
        return
    if key is None:
        st.error("Paste a project API key above first.")
        return
    spec = checked_spec(settings, [prompt], None, ())
    if spec is not None:
        start_run(store, spec, "interactive", key, base_url)


def render_batch_tab(
    store: RunStore, settings: dict[str, Any], key: str | None, base_url: str
) -> None:
    st.caption(
        "A CSV file with a header row and a `prompt` column, or a JSONL file with one "
        '`{"prompt": ..., "expected": ...}` object per line. The expected answer is '
        f"optional on each row, and the checks compare against it. At most "
        f"{MAX_BATCH_PROMPTS} prompts per file."
    )
    upload = st.file_uploader("Prompt file", type=["csv", "jsonl"], key="compare_file")
    checks = st.multiselect(
        "Checks on rows with an expected answer",
        list(compare.CHECKS),
        default=list(compare.DEFAULT_CHECKS),
        key="compare_checks",
        help="exact: the answer equals the expected text. contains: the answer contains the "
        "expected text, ignoring case. regex: re.search finds the expected text, read as a "
        "Python regular expression, in the answer. json: the answer parses as JSON.",
    )
    st.slider("Calls at the same time", 1, MAX_BATCH_CONCURRENCY, 4, key="compare_concurrency")
    if not st.button("Start batch", key="compare_start_batch", type="primary"):
        return
    if key is None:
        st.error("Paste a project API key above first.")
        return
    if upload is None:
        st.error("Upload a CSV or JSONL file of prompts first.")
        return
    try:
        prompts, expected = compare.parse_prompt_file(upload.name, upload.getvalue())
    except GatewayError as error:
        st.error(f"Batch not started: {error.message}.")
        return
    spec = checked_spec(settings, prompts, expected, tuple(checks))
    if spec is not None:
        start_run(store, spec, "batch", key, base_url)


def render_history_tab(runs: list[RunRecord]) -> None:
    if not runs:
        st.info("No comparison runs yet. Start one on the Compare or Batch tab.")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "Run": [run.id for run in runs],
                "Kind": [run.kind for run in runs],
                "Status": [run.status for run in runs],
                "Models": [", ".join(run.models) for run in runs],
                "Prompts": [run.prompt_count for run in runs],
                "Cells done": [f"{run.finished_cells} of {run.cell_count}" for run in runs],
                "Created by": [run.created_by for run in runs],
                "Created": [run.created_at for run in runs],
                "Re-run of": pd.array([run.source_run_id for run in runs], dtype="Int64"),
            }
        ),
        hide_index=True,
        column_config={"Created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm z")},
    )
    labels = {run.id: f"Run {run.id} ({run.kind}, {run.status})" for run in runs}
    chosen = st.selectbox("Run", list(labels), format_func=labels.__getitem__, key="history_run")
    if st.button("Open run", key="history_open"):
        st.session_state[OPEN_RUN] = chosen
        st.rerun()


def render_run_actions(store: RunStore, run: RunRecord, key: str | None, base_url: str) -> None:
    unfinished = run.cell_count - run.finished_cells
    if unfinished:
        st.warning(
            f"Run {run.id} has {unfinished} of {run.cell_count} cells without a result. "
            "Resume sends only those."
        )
    left, right = st.columns(2)
    resume = left.button("Resume run", key="run_resume", disabled=not unfinished)
    rerun = right.button("Re-run as a new run", key="run_rerun")
    if not (resume or rerun):
        return
    if key is None:
        st.error("Paste a project API key above to send the run's prompts.")
        return
    run_id = run.id
    if rerun:
        spec = store.load_spec(run.id)
        run_id = store.create_run(spec, kind=run.kind, created_by=username(), source_run_id=run.id)
        logger.info("user %s re-ran comparison run %d as run %d", username(), run.id, run_id)
    execute(store, run_id, run.kind, key, base_url)


def save_rating(store: RunStore, cell: CellResult, rating: int, note: str) -> None:
    try:
        store.rate_cell(cell.cell_id, rating, note, username())
    except GatewayError as error:
        st.error(f"Rating not saved: {error.message}.")
        return
    logger.info("user %s rated comparison cell %d", username(), cell.cell_id)
    finish_write(f"Saved your rating of {cell.model} on prompt {cell.position + 1}.")


def rating_inputs(cell_id: int | str, current: Rating | None) -> tuple[int, str]:
    rating = st.select_slider(
        "Rating",
        options=[1, 2, 3, 4, 5],
        value=current.rating if current else 3,
        key=f"rating_{cell_id}",
    )
    note = st.text_input(
        "Note", value=(current.note or "") if current else "", key=f"note_{cell_id}"
    )
    return rating, note


def render_answer_columns(
    store: RunStore, cells: list[CellResult], models: tuple[str, ...], mine: dict[int, Rating]
) -> None:
    """Show each model's answer with its metrics and a rating form under it."""
    by_model = {cell.model: cell for cell in cells}
    for column, model in zip(st.columns(len(models)), models, strict=True):
        with column:
            st.markdown(f"**{model}**")
            cell = by_model.get(model)
            if cell is None:
                st.caption("No result yet.")
                continue
            if cell.error:
                st.error(cell.error)
            st.markdown(cell.answer or "")
            st.caption(metrics_line(cell))
            with st.form(f"rate_form_{cell.cell_id}"):
                rating, note = rating_inputs(cell.cell_id, mine.get(cell.cell_id))
                submitted = st.form_submit_button("Save rating", key=f"rate_{cell.cell_id}")
            if submitted:
                save_rating(store, cell, rating, note)


def render_batch_rating(store: RunStore, cells: list[CellResult], mine: dict[int, Rating]) -> None:
    st.markdown("**Rate an answer**")
    by_id = {cell.cell_id: cell for cell in cells}
    cell_id = st.selectbox(
        "Answer",
        list(by_id),
        format_func=lambda i: f"Prompt {by_id[i].position + 1} · {by_id[i].model}",
        key="batch_rate_cell",
    )
    st.text(by_id[cell_id].answer or by_id[cell_id].error or "")
    with st.form("batch_rate_form"):
        rating, note = rating_inputs("batch", mine.get(cell_id))
        submitted = st.form_submit_button("Save rating", key="batch_rate")
    if submitted:
        save_rating(store, by_id[cell_id], rating, note)


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    shown = frame.drop(columns=["run_id", "cell_id"])
    shown["position"] = shown["position"] + 1
    # Shown as text so the exact Decimal value is displayed.
    shown["cost_usd"] = [None if cost is None else format(cost, "f") for cost in shown["cost_usd"]]
    return shown.rename(columns={"position": "prompt #"})


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    shown = summary.copy()
    # Shown as text so the exact Decimal total is displayed.
    shown["total_cost_usd"] = [format(cost, "f") for cost in shown["total_cost_usd"]]
    return shown


def quality_chart(summary: pd.DataFrame) -> None:
    """Plot each model's total cost against its quality, coloured by median latency."""
    measures = [column for column in QUALITY_LABELS if summary[column].notna().any()]
    if not measures:
        st.caption(
            "The cost and quality chart needs checked prompts (rows with an expected answer) "
            "or ratings."
        )
        return
    measure = st.radio(
        "Quality measure",
        measures,
        format_func=QUALITY_LABELS.__getitem__,
        horizontal=True,
        key="compare_quality",
    )
    figure = go.Figure(
        go.Scatter(
            # Plotly takes floats; the exact Decimal totals are in the summary table.
            x=[float(cost) for cost in summary["total_cost_usd"]],
            y=summary[measure].astype(float).tolist(),
            mode="markers+text",
            text=summary["model"].tolist(),
            textposition="top center",
            marker={
                "size": 14,
                "color": summary["median_latency_ms"].astype(float).tolist(),
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": "Median latency (ms)"}},
            },
        )
    )
    figure.update_layout(
        title={"text": f"Cost against {QUALITY_LABELS[measure].lower()}"},
        xaxis={"title": {"text": "Total cost (USD)"}, "tickprefix": "$"},
        yaxis={"title": {"text": QUALITY_LABELS[measure]}},
    )
    st.plotly_chart(figure, key="compare_chart")


def render_winner_alias(summary: pd.DataFrame) -> None:
    st.markdown("**Point an alias at the winner**")
    with st.form("winner_alias"):
        alias = st.text_input("Alias", value=DEFAULT_ALIAS, max_chars=100, key="winner_alias")
        model = st.selectbox("Winning model", summary["model"].tolist(), key="winner_model")
        submitted = st.form_submit_button("Point alias at model", key="winner_submit")
    if not submitted:
        return
    try:
        with engine_for(Settings.from_env().database_url).begin() as conn:
            compare.set_winner_alias(conn, alias.strip(), model, current_actor())
    except GatewayError as error:
        st.error(f"Alias not saved: {error.message}.")
        return
    finish_write(f"Alias {alias.strip()!r} now points at {model}.")


def run_caption(run: RunRecord, spec: RunSpec) -> str:
    origin = f", a re-run of run {run.source_run_id}" if run.source_run_id else ""
    temperature = "default" if spec.temperature is None else spec.temperature
    max_tokens = "default" if spec.max_tokens is None else spec.max_tokens
    return (
        f"{run.kind.capitalize()} run by {run.created_by} with {len(spec.prompts)} "
        f"prompt(s), {run.status}{origin}. Temperature {temperature}, "
        f"max output tokens {max_tokens}."
    )


def render_run(store: RunStore, run_id: int, key: str | None, base_url: str) -> None:
    try:
        run = store.load_run(run_id, current_actor())
    except NotFoundError:
        st.session_state.pop(OPEN_RUN, None)
        st.info(f"Run {run_id} no longer exists.")
        return
    spec = store.load_spec(run_id)
    st.subheader(f"Run {run.id}")
    st.caption(run_caption(run, spec))
    render_run_actions(store, run, key, base_url)

    cells = store.load_cells(run_id)
    if not cells:
        st.info("This run has no results yet.")
        return
    frame = compare.cells_frame(spec, cells, run_id)
    summary = compare.summarize(frame, spec.models)
    mine = {rating.cell_id: rating for rating in store.ratings(run_id, username())}

    if run.kind == "interactive":
        st.markdown(f"**Prompt:** {spec.prompts[0]}")
        render_answer_columns(store, cells, spec.models, mine)
    else:
        st.dataframe(display_frame(frame), hide_index=True)
        render_batch_rating(store, cells, mine)

    st.markdown("**Summary per model**")
    st.dataframe(summary_display(summary), hide_index=True, column_config=SUMMARY_LABELS)
    quality_chart(summary)
    st.download_button(
        "Download results as CSV",
        compare.export_csv(frame),
        file_name=f"comparison-{run_id}.csv",
        mime="text/csv",
        key="compare_download",
    )

    if model_admin.can_manage_models(current_actor()):
        render_winner_alias(summary)


settings = Settings.from_env()
try:
    base_url = compare.proxy_url()
except ConfigError as error:
    st.error(str(error))
    st.stop()
store = RunStore(engine_for(settings.database_url))

st.title("Compare models")
# Messages go into containers that are always drawn, so the tabs below keep
# their place in the page and Streamlit keeps the open tab when a message
# comes or goes.
with st.container():
    if FLASH_MESSAGE in st.session_state:
        st.success(st.session_state.pop(FLASH_MESSAGE))
typed_key = st.text_input(
    "Project API key",
    type="password",
    key=API_KEY,
    help="The key whose project pays for the calls. It stays in this browser session only.",
).strip()
key = typed_key or None
with st.container():
    models = available_models(key, base_url) if key else None
    if key is None:
        st.info("Paste a project API key to choose models. History is shown without one.")
settings_values = settings_form(models or [])
compare_tab, batch_tab, history_tab = st.tabs(["Compare", "Batch", "History"])
with compare_tab:
    render_compare_tab(store, settings_values, key, base_url)
with batch_tab:
    render_batch_tab(store, settings_values, key, base_url)
with history_tab:
    render_history_tab(store.list_runs(HISTORY_LIMIT, current_actor()))
if OPEN_RUN in st.session_state:
    render_run(store, st.session_state[OPEN_RUN], key, base_url)
