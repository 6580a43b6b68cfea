"""Where a `sync` run is, kept in webhook_private.sync_runs so that it can be resumed.

A run records its phase and the id of the last object it wrote, in the same transaction
as the page it wrote, so that after a crash, a Ctrl-C or a lost connection the next run of
the same kind continues from exactly there. One run of a kind at a time: a run whose owner
is alive (same host: its pid exists; another host: a page within LIVE_SECONDS) is not
taken over.
"""

import contextlib
import json
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from webhook.core.errors import ProjectError
from webhook.database.embedded import process_exists

LIVE_SECONDS = 120


@dataclass
class Run:
    """One sync run, as far as it has got."""

    id: int
    kind: str
    phase: str
    cursor: str | None
    since: datetime | None
    counts: dict[str, int] = field(default_factory=dict)
    resumed: bool = False

    @property
    def source(self) -> str:
        """What audit rows and mirror rows written by this run name as their cause."""
        return f"sync:{self.id}"

    def add(self, **counts: int) -> None:
        for name, value in counts.items():
            self.counts[name] = self.counts.get(name, 0) + value


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def start(
    conn: psycopg.Connection,
    kind: str,
    first_phase: str,
    *,
    restart: bool = False,
    since: datetime | None = None,
) -> Run:
    """Continue the interrupted run of this kind, or start a new one."""
    with conn.transaction():
        row = conn.execute(
            "select id, phase, cursor, since, counts, owner,"
            " heartbeat_at > now() - make_interval(secs => %s)"
            " from webhook_private.sync_runs where kind = %s and finished_at is null"
            " order by id desc limit 1 for update",
            (LIVE_SECONDS, kind),
        ).fetchone()
        if row is not None:
            run_id, phase, cursor, stored_since, counts, owner, recent = row
            if owner and _alive(owner, recent):
                raise ProjectError(
                    f"another sync is running (run {run_id}, {owner}); wait for it to finish"
                )
            if not restart:
                conn.execute(
                    "update webhook_private.sync_runs set owner = %s, heartbeat_at = now()"
                    " where id = %s",
                    (_owner(), run_id),
                )
                return Run(run_id, kind, phase, cursor, stored_since, dict(counts), resumed=True)
            conn.execute(
                "update webhook_private.sync_runs set phase = 'abandoned', finished_at = now(),"
                " owner = null where id = %s",
                (run_id,),
            )
        new_id = conn.execute(
            "insert into webhook_private.sync_runs (kind, phase, since, owner)"
            " values (%s, %s, %s, %s) returning id",
            (kind, first_phase, since, _owner()),
        ).fetchone()[0]
    return Run(new_id, kind, first_phase, None, since)


def save(conn: psycopg.Connection, run: Run) -> None:
    """Record the run's place; call inside the transaction that wrote the page."""
    conn.execute(
        "update webhook_private.sync_runs set phase = %s, cursor = %s, counts = %s::jsonb,"
        " heartbeat_at = now() where id = %s",
        (run.phase, run.cursor, json.dumps(run.counts), run.id),
    )


def advance(conn: psycopg.Connection, run: Run, phase: str) -> None:
    """Move the run to its next phase, whose cursor starts empty."""
    run.phase, run.cursor = phase, None
    with conn.transaction():
        save(conn, run)


def finish(conn: psycopg.Connection, run: Run) -> None:
    run.phase, run.cursor = "done", None
    with conn.transaction():
        save(conn, run)
        conn.execute(
            "update webhook_private.sync_runs set finished_at = now(), owner = null where id = %s",
            (run.id,),
        )


def release(conn: psycopg.Connection, run: Run) -> None:
    """Let the next sync continue this run at once (after an error or Ctrl-C)."""
    # If the connection is gone, so is this process soon: the owner check then sees that.
    with contextlib.suppress(psycopg.Error):
        conn.execute(
            "update webhook_private.sync_runs set owner = null where id = %s and finished_at is null",
            (run.id,),
        )


def _alive(owner: str, recent: bool) -> bool:
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return int(pid) != os.getpid() and process_exists(int(pid))
    return bool(recent)
