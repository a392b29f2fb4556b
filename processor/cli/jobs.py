"""``jobs``: inspect, cancel and retry jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

# typer carries its own copy of click (since 0.2x); its errors are that copy's classes.
from processor.cli.common import (
    SHOWN_ID,
    ConfigOpt,
    LabelChoice,
    StateChoice,
    _config,
    _fail,
    _job_id,
    _queue,
    err,
    out,
)

if TYPE_CHECKING:
    from storage.queue import JobView


jobs_app = typer.Typer(no_args_is_help=True, help="Inspect, cancel and retry jobs.")


@jobs_app.command("list")
def jobs_list(
    config: ConfigOpt = None,
    state: Annotated[StateChoice | None, typer.Option(case_sensitive=False)] = None,
    label: Annotated[
        LabelChoice | None,
        typer.Option(case_sensitive=False, help="Only done jobs with this overall verdict."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Only jobs whose source (file path, upload name) contains this."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs.")] = 20,
) -> None:
    """The newest jobs. Ids are shown by their first 12 characters (more where needed to tell
    them apart), which every jobs command accepts."""
    from storage.queue import JobState

    queue = _queue(_config(config))
    jobs = queue.list(
        state=JobState(state.value) if state else None,
        label=label.value if label else None,
        source_contains=name,
        limit=limit,
    )
    rows = [
        (
            _shown_id(queue, job.id),
            job.state.value,
            _verdict_cell(job),
            Path(job.source_ref).name or job.source_ref,
            job.created_at.strftime("%Y-%m-%d %H:%M"),
        )
        for job in jobs
    ]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    id_width = max([SHOWN_ID, *(len(row[0]) for row in rows)])
    widths = {"id": id_width, "state": 9, "verdict": 14, "created (UTC)": 16}
    # The name gives way so that ids and the rest stay whole at 80 columns; 14: the table's
    # gaps and edges.
    name_width = max(8, out.width - sum(widths.values()) - 14)
    for column, width in widths.items():
        table.add_column(column, no_wrap=True, min_width=width)
        if column == "verdict":
            table.add_column("name", overflow="ellipsis", no_wrap=True, max_width=name_width)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _shown_id(queue: Any, job_id: str) -> str:
    """The first 12 characters of the id, or more where another job's id starts the same way:
    what is shown always names one job when pasted back."""
    shown = SHOWN_ID
    while shown < len(job_id) and len(queue.job_ids_starting(job_id[:shown], 2)) > 1:
        shown += 4
    return job_id[:shown]


def _verdict_cell(job: JobView) -> str:
    """A done job's overall label and fake probability, or a failed job's error code."""
    if job.state.value == StateChoice.DONE and job.verdict:
        prob = job.verdict.get("fake_probability")
        return str(job.verdict["label"]) + ("" if prob is None else f" {prob:.2f}")
    return job.error_code or ""


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="Job id or a unique prefix (8+ characters).")],
    config: ConfigOpt = None,
) -> None:
    """One job with its results, as JSON."""
    from processor.api.common import job_document

    queue = _queue(_config(config))
    out.print_json(json.dumps(job_document(queue.get(_job_id(queue, job_id)))))


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="Job id or a unique prefix (8+ characters).")],
    config: ConfigOpt = None,
) -> None:
    """Cancel a queued job; its inbox file goes to failed/ with an .error.json."""
    from processor.lifecycle import Lifecycle

    cfg = _config(config)
    queue = _queue(cfg)
    full = _job_id(queue, job_id)
    if not queue.cancel(full):
        state = queue.get(full).state.value
        _fail(f"job {full} is {state}; only a queued job can be cancelled", 1)
    # Nobody else finalizes a job that never ran.
    Lifecycle(queue, cfg.inboxes, cfg.queue, webhooks=cfg.webhooks).finalize(queue.get(full))
    out.print(f"job {full} cancelled")


@jobs_app.command("retry")
def jobs_retry(
    job_id: Annotated[
        str | None, typer.Argument(help="Job id or a unique prefix (8+ characters).")
    ] = None,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Every failed job (or those with --code).")
    ] = False,
    code: Annotated[
        str | None, typer.Option(help="With --all-failed: only jobs that failed with this code.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Run failed or cancelled jobs again: back to queued with attempts reset, an inbox file
    taken back from failed/ (its .error.json removed). A job whose file is gone cannot be
    retried."""
    from processor.retry import RetryRefused, retry_job

    if (job_id is None) == (not all_failed):
        _fail("give a job id or --all-failed")
    if code is not None and not all_failed:
        _fail("--code goes with --all-failed")
    cfg = _config(config)
    queue = _queue(cfg)
    inboxes = [inbox.name for inbox in cfg.inboxes]
    if job_id is not None:
        try:
            job = retry_job(queue, inboxes, _job_id(queue, job_id))
        except RetryRefused as exc:
            _fail(exc.message, 1)
        out.print(f"job {job.id} queued again")
        return
    ids = _failed_ids(queue, code)
    if not ids:
        _fail("no failed job" + (f" with code {code}" if code else ""), 1)
    refused = 0
    for full in ids:
        try:
            retry_job(queue, inboxes, full)
        except RetryRefused as exc:
            refused += 1
            err.print(f"not retried: {exc.message}", markup=False, highlight=False, soft_wrap=True)
        else:
            out.print(f"job {full} queued again")
    out.print(f"{len(ids) - refused} of {len(ids)} failed jobs queued again")
    if refused:
        raise typer.Exit(1)


def _failed_ids(queue: Any, code: str | None) -> list[str]:
    """Ids of every failed job (with error ``code`` when given), oldest first."""
    from storage.queue import JobState

    ids: list[str] = []
    before: str | None = None
    while page := queue.list(state=JobState.FAILED, limit=500, before=before, oldest_first=True):
        ids.extend(j.id for j in page if code is None or j.error_code == code)
        before = page[-1].id
    return ids
