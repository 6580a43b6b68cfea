-- `python -m webhook sync` reads subscriptions, customers and events from Stripe's API.
-- Each run keeps its place here, committed with every page it writes, so an interrupted
-- run continues where it stopped: the phase it was in and the id of the last object it
-- wrote (Stripe's `starting_after` cursor). `owner` names the process running it (host and
-- pid; cleared when a run stops on an error or Ctrl-C) and `heartbeat_at` moves with every
-- page, so a second sync can tell a live run (refuse) from an interrupted one (continue).
create table webhook_private.sync_runs (
  id bigint generated always as identity primary key,
  kind text not null constraint sync_runs_kind_known check (kind in ('subscriptions', 'events')),
  phase text not null,
  cursor text,
  -- For an events catch-up: the start of the window it reads.
  since timestamptz,
  counts jsonb not null default '{}'::jsonb,
  owner text,
  started_at timestamptz not null default now(),
  heartbeat_at timestamptz not null default now(),
  finished_at timestamptz
);

create index sync_runs_unfinished_idx on webhook_private.sync_runs (kind, id)
  where finished_at is null;

revoke all on webhook_private.sync_runs from public, anon, authenticated;

-- Events a catch-up applies are recorded as attempts of their own kind.
alter table webhook_private.event_attempts drop constraint event_attempts_trigger_known;
alter table webhook_private.event_attempts add constraint event_attempts_trigger_known
  check (trigger in ('delivery', 'replay', 'sync'));
