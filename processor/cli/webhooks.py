"""``drishtiksha webhooks``: list webhook deliveries and send dead ones again.

A thin layer over ``storage.deliveries``; the database and the console are the ones every other
command uses.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from processor.cli.common import _config, _fail, _job_id, _queue, err, out

if TYPE_CHECKING:
    from storage.deliveries import Deliveries

webhooks_app = typer.Typer(
    no_args_is_help=True, help="Webhook deliveries: list them, send dead ones again."
)

_DELIVERY_ID = re.compile(r"^[0-9]{1,10}$")
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML file (found as for `drishtiksha run`)."),
]


# storage.deliveries.DeliveryState as option choices, spelled out so that the command line
# starts without importing SQLAlchemy.
class DeliveryStateChoice(enum.StrEnum):
    PENDING = "pending"
    DEAD = "dead"
    DELIVERED = "delivered"


@contextmanager
def _outbox(config: Path | None) -> Iterator[Deliveries]:
    """The deliveries on the configured database, its connections closed when the command
    ends (it may run in-process, as the tests run it)."""
    from storage.deliveries import Deliveries

    queue = _queue(_config(config))
    try:
        yield Deliveries(queue)
    finally:
        queue.engine.dispose()


@webhooks_app.command("list")
def webhooks_list(
    config: ConfigOpt = None,
    state: Annotated[
        DeliveryStateChoice | None,
        typer.Option(
            case_sensitive=False,
            help="pending (to be tried again), dead (parked after the retry period) or delivered.",
        ),
    ] = None,
    job: Annotated[
        str | None, typer.Option(help="Only this job's (a job id or a unique prefix).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many deliveries.")] = 20,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document per delivery, one per line.")
    ] = False,
) -> None:
    """Webhook deliveries, newest first: their state, attempts and last error."""
    from processor.webhooks import delivery_document
    from storage.deliveries import DeliveryState

    with _outbox(config) as deliveries:
        job_id = _job_id(deliveries.queue, job) if job is not None else None
        found = deliveries.list(
            state=DeliveryState(state.value) if state else None, job_id=job_id, limit=limit
        )
    if as_json:
        for delivery in found:
            typer.echo(json.dumps(delivery_document(delivery)))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("id", "state", "event", "job", "tries"):
        table.add_column(column, no_wrap=True)
    table.add_column("last answer", no_wrap=True, overflow="ellipsis", max_width=32)
    table.add_column("when (UTC)", no_wrap=True)
    table.add_column("url", overflow="fold")
    for d in found:
        # When it will be tried again, was parked, or went through.
        when = d.next_attempt_at or d.dead_at or d.delivered_at
        table.add_row(
            str(d.id),
            d.state.value,
            d.event,
            d.job_id[:12],
            str(d.attempts),
            d.last_error or (str(d.last_status) if d.last_status else "-"),
            when.strftime("%Y-%m-%d %H:%M:%S") if when else "-",
            d.url,
        )
    out.print(table)


@webhooks_app.command("retry")
def webhooks_retry(
    delivery_ids: Annotated[
        list[str] | None, typer.Argument(help="Delivery ids, as `webhooks list` shows them.")
    ] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Every dead delivery.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Send dead deliveries again: each is due at once, with a new retry period starting now
    (webhooks.retry_for_s). A running daemon sends them."""
    from storage.deliveries import MAX_ID

    if bool(delivery_ids) == all_dead:
        _fail("give delivery ids or --all-dead")
    ids: list[int] = []
    for raw in delivery_ids or []:
        if not (_DELIVERY_ID.fullmatch(raw) and 0 < int(raw) <= MAX_ID):
            _fail(f"{raw!r} is not a delivery id: give the number `webhooks list` shows")
        ids.append(int(raw))
    with _outbox(config) as deliveries:
        if all_dead:
            requeued = deliveries.requeue()
            if not requeued:
                _fail("no dead delivery", 1)
            for delivery_id in requeued:
                out.print(f"delivery {delivery_id} queued again")
            out.print(f"{len(requeued)} dead deliveries queued again")
            return
        done = set(deliveries.requeue(ids))
        refused = 0
        for delivery_id in dict.fromkeys(ids):
            if delivery_id in done:
                out.print(f"delivery {delivery_id} queued again")
                continue
            refused += 1
            current = deliveries.get(delivery_id)
            why = (
                f"no webhook delivery {delivery_id}"
                if current is None
                else f"delivery {delivery_id} is {current.state.value}; only a dead one can "
                "be sent again"
            )
            err.print(f"not retried: {why}", markup=False, highlight=False, soft_wrap=True)
    if refused:
        raise typer.Exit(1)
