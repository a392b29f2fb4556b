"""Webhook deliveries: the outbox a finished job (or a review) adds rows to, and every attempt
to send one.

A delivery is in one of three states, read from its row:

- pending: ``next_attempt_at`` is set; a dispatcher sends it once that time has come;
- delivered: ``delivered_at`` is set (a receiver answered 2xx);
- dead: neither. It failed for the whole retry period and is parked (``dead_at`` says when)
  until someone sends it again by hand. Rows given up before migration 0007 are dead too,
  without a ``dead_at``.

``attempts`` on the row counts the tries since the delivery was queued or last re-queued by hand
(the dispatcher's back-off reads it); ``webhook_attempts`` keeps every try ever made. Like
``storage.reviews``, this module writes through the queue's transaction helper, so a busy
database is retried the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, func, insert, select, update

from storage.models import WebhookAttempt, WebhookDelivery
from storage.queue import JobQueue

# The largest id an INTEGER column holds on Postgres: larger ones name no delivery.
MAX_ID = 2**31 - 1


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DEAD = "dead"
    DELIVERED = "delivered"


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A delivery taken for sending."""

    id: int
    job_id: str
    url: str
    event: str
    payload: dict[str, Any]
    attempts: int  # tries since it was queued or re-queued, this one included


@dataclasses.dataclass(frozen=True)
class AttemptView:
    """One try at sending a delivery."""

    attempted_at: dt.datetime
    status: int | None  # the receiver's HTTP status; None when no answer came
    error: str | None  # None when the receiver accepted it
    elapsed_s: float


@dataclasses.dataclass(frozen=True)
class DeliveryView:
    """A delivery as recorded."""

    id: int
    job_id: str
    url: str
    event: str
    state: DeliveryState
    attempts: int  # every try recorded, re-sends by hand included
    last_status: int | None
    last_error: str | None
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None  # None unless pending
    delivered_at: dt.datetime | None
    dead_at: dt.datetime | None
    history: list[AttemptView] = dataclasses.field(default_factory=list)  # filled by ``get`` only


def outbox_rows(
    job_id: str, event: str, payload: dict[str, Any], urls: Sequence[str], at: dt.datetime
) -> list[dict[str, Any]]:
    """The rows that queue one delivery per URL, due at ``at``: for a caller that adds them
    in its own transaction."""
    return [
        {
            "job_id": job_id,
            "url": url,
            "event": event,
            "payload": payload,
            "attempts": 0,
            "next_attempt_at": at,
            "created_at": at,
        }
        for url in urls
    ]


class Deliveries:
    """The webhook outbox, stored beside the job queue."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def add(self, job_id: str, event: str, payload: dict[str, Any], urls: Sequence[str]) -> None:
        """Queue one delivery per URL, due now."""
        rows = outbox_rows(job_id, event, payload, urls, _now())
        if rows:
            self.queue._write(lambda conn: conn.execute(insert(WebhookDelivery), rows))

    def take(self, limit: int, hold_s: float) -> list[Delivery]:
        """Due deliveries, each held for ``hold_s`` (its next attempt moved past the send) so
        that two dispatchers never send the same one at once."""
        now = _now()

        def work(conn: Connection) -> list[Delivery]:
            due = (
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.delivered_at.is_(None),
                    WebhookDelivery.next_attempt_at <= now,
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            ids = list(conn.scalars(due))
            if not ids:
                return []
            rows = conn.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .values(
                    attempts=WebhookDelivery.attempts + 1,
                    next_attempt_at=now + dt.timedelta(seconds=hold_s),
                )
                .returning(
                    WebhookDelivery.id,
                    WebhookDelivery.job_id,
                    WebhookDelivery.url,
                    WebhookDelivery.event,
                    WebhookDelivery.payload,
                    WebhookDelivery.attempts,
                )
            )
            return [Delivery(*row) for row in rows]

        return self.queue._write(work)

    def record(
        self,
        delivery_id: int,
        *,
        attempted_at: dt.datetime,
        elapsed_s: float,
        status: int | None,
        error: str | None,
        retry_at: dt.datetime | None,
    ) -> None:
        """Record one try and its outcome in one transaction: delivered (no ``error``), to be
        tried again at ``retry_at``, or parked (an ``error`` and no ``retry_at``)."""
        now = _now()
        values: dict[str, Any] = {
            "last_status": status,
            "last_error": error,
            "next_attempt_at": retry_at,
        }
        if error is None:
            values["delivered_at"] = now
        elif retry_at is None:
            values["dead_at"] = now
        attempt = {
            "delivery_id": delivery_id,
            "attempted_at": attempted_at,
            "status": status,
            "error": error,
            "elapsed_s": elapsed_s,
        }

        def work(conn: Connection) -> None:
            conn.execute(insert(WebhookAttempt).values(attempt))
            # A sender whose hold ran out may report after another one delivered it: the
            # delivered row stays delivered.
            conn.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.delivered_at.is_(None))
                .values(values)
            )

        self.queue._write(work)

    def for_job(self, job_id: str) -> list[DeliveryView]:
        """Every delivery of a job, oldest first."""
        stmt = _views().where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.id)
        with self.queue._read() as session:
            return [_view(d, n) for d, n in session.execute(stmt)]

    def get(self, delivery_id: int) -> DeliveryView | None:
        """One delivery with the history of its tries, oldest first."""
        if not 0 < delivery_id <= MAX_ID:
            return None
        with self.queue._read() as session:
            row = session.execute(_views().where(WebhookDelivery.id == delivery_id)).first()
            if row is None:
                return None
            tries = session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.id)
            )
            history = [AttemptView(a.attempted_at, a.status, a.error, a.elapsed_s) for a in tries]
        return dataclasses.replace(_view(*row), history=history)

    def requeue(self, delivery_ids: Sequence[int] | None = None) -> list[int]:
        """Send dead deliveries again: those of ``delivery_ids`` that are dead, or every dead
        one when None. Each is due now, with a new retry period starting now. Returns the ids
        re-queued, in order."""
        now = _now()
        stmt = (
            update(WebhookDelivery)
            .where(_in_state(DeliveryState.DEAD))
            .values(attempts=0, next_attempt_at=now, dead_at=None)
            .returning(WebhookDelivery.id)
        )
        if delivery_ids is not None:
            wanted = [i for i in delivery_ids if 0 < i <= MAX_ID]
            if not wanted:
                return []
            stmt = stmt.where(WebhookDelivery.id.in_(wanted))
        return sorted(self.queue._write(lambda conn: list(conn.scalars(stmt))))

    def counts(self) -> dict[DeliveryState, int]:
        """How many deliveries are pending and dead (delivered ones are not counted: they only
        ever grow)."""
        dead = WebhookDelivery.next_attempt_at.is_(None)
        stmt = select(func.count().filter(~dead), func.count().filter(dead)).where(
            WebhookDelivery.delivered_at.is_(None)
        )
        with self.queue._read() as session:
            pending, parked = session.execute(stmt).one()
        return {DeliveryState.PENDING: pending, DeliveryState.DEAD: parked}

    # Last, so that ``list`` in the annotations above still means the builtin.
    def list(
        self,
        *,
        state: DeliveryState | None = None,
        job_id: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> list[DeliveryView]:
        """Deliveries newest first, optionally in one state or for one job; ``before`` is a
        delivery id cursor."""
        stmt = _views().order_by(WebhookDelivery.id.desc()).limit(limit)
        if state is not None:
            stmt = stmt.where(_in_state(state))
        if job_id is not None:
            stmt = stmt.where(WebhookDelivery.job_id == job_id)
        if before is not None:
            stmt = stmt.where(WebhookDelivery.id < before)
        with self.queue._read() as session:
            return [_view(d, n) for d, n in session.execute(stmt)]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _in_state(state: DeliveryState) -> ColumnElement[bool]:
    if state is DeliveryState.DELIVERED:
        return WebhookDelivery.delivered_at.is_not(None)
    undelivered = WebhookDelivery.delivered_at.is_(None)
    if state is DeliveryState.PENDING:
        return undelivered & WebhookDelivery.next_attempt_at.is_not(None)
    return undelivered & WebhookDelivery.next_attempt_at.is_(None)


def _views() -> Select[WebhookDelivery, int]:
    """Each delivery with the number of tries recorded for it."""
    tries = (
        select(func.count(WebhookAttempt.id))
        .where(WebhookAttempt.delivery_id == WebhookDelivery.id)
        .scalar_subquery()
    )
    return select(WebhookDelivery, tries)


def _view(row: WebhookDelivery, tries: int) -> DeliveryView:
    if row.delivered_at is not None:
        state = DeliveryState.DELIVERED
    elif row.next_attempt_at is not None:
        state = DeliveryState.PENDING
    else:
        state = DeliveryState.DEAD
    return DeliveryView(
        id=row.id,
        job_id=row.job_id,
        url=row.url,
        event=row.event,
        state=state,
        attempts=tries,
        last_status=row.last_status,
        last_error=row.last_error,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
        dead_at=row.dead_at,
    )
