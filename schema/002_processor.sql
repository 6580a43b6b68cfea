-- The webhook processor's own state. It lives in webhook_private, a schema Supabase does
-- not expose through its API, with no privileges for anon or authenticated: the raw
-- payloads carry customer e-mail addresses and billing details.

revoke all on schema webhook_private from public, anon, authenticated;

-- Every delivery Stripe makes, stored before it is applied. The event id is the key, so a
-- second delivery of the same event finds the first one and stops there.
create table webhook_private.events (
  id text primary key,
  type text not null,
  api_version text,
  livemode boolean not null default false,
  stripe_created timestamptz not null,
  object_id text,
  -- The event as Stripe sent it; set to null by `purge` once it is no longer needed.
  payload jsonb,
  status text not null default 'received'
    constraint events_status_known check (status in ('received', 'processed', 'ignored', 'failed')),
  error text,
  deliveries integer not null default 1,
  attempts integer not null default 0,
  received_at timestamptz not null default now(),
  processed_at timestamptz,
  purged_at timestamptz
);

create index events_status_received_idx on webhook_private.events (status, received_at);
create index events_type_received_idx on webhook_private.events (type, received_at);
create index events_object_id_idx on webhook_private.events (object_id);

-- One row per time an event was applied (by a delivery or a replay), for `events show`.
create table webhook_private.event_attempts (
  id bigint generated always as identity primary key,
  event_id text not null references webhook_private.events (id) on delete cascade,
  attempted_at timestamptz not null default now(),
  trigger text not null constraint event_attempts_trigger_known
    check (trigger in ('delivery', 'replay')),
  outcome text not null constraint event_attempts_outcome_known
    check (outcome in ('processed', 'ignored', 'failed')),
  error text,
  duration_ms numeric(10, 3)
);

create index event_attempts_event_id_idx on webhook_private.event_attempts (event_id, id);

-- Which of our customers a Stripe customer belongs to. A user can end up with several
-- Stripe customers (Checkout creates a new one unless told otherwise); their plan is the
-- best one granted by any of them.
create table webhook_private.customer_links (
  stripe_customer_id text primary key,
  customer_uuid uuid not null references public.customer (uuid) on delete cascade,
  linked_at timestamptz not null default now(),
  linked_by_event text
);

create index customer_links_customer_uuid_idx on webhook_private.customer_links (customer_uuid);

-- The latest known state of each Stripe subscription. `order_key` says how recent that
-- state is; an event whose key is not greater than the stored one changes nothing, so
-- events applied in any order end in the same row.
create table webhook_private.subscriptions (
  id text primary key,
  stripe_customer_id text not null,
  status text not null,
  price_ids text[] not null default '{}',
  current_period_end timestamptz,
  cancel_at_period_end boolean not null default false,
  cancel_at timestamptz,
  ended_at timestamptz,
  metadata jsonb not null default '{}'::jsonb,
  order_key bigint[] not null,
  event_id text not null,
  updated_at timestamptz not null default now()
);

create index subscriptions_stripe_customer_id_idx
  on webhook_private.subscriptions (stripe_customer_id);

-- Renewal invoices that reset a customer's resources, so each invoice resets at most once
-- and an invoice for an older period never resets after a newer one did.
create table webhook_private.resource_resets (
  invoice_id text primary key,
  customer_uuid uuid not null references public.customer (uuid) on delete cascade,
  subscription_id text,
  period_start timestamptz not null,
  event_id text not null,
  reset_at timestamptz not null default now()
);

create index resource_resets_customer_period_idx
  on webhook_private.resource_resets (customer_uuid, period_start);

-- The newest catalog event applied per price or product, so an older price.updated that
-- arrives late cannot overwrite a newer one.
create table webhook_private.catalog_versions (
  object_id text primary key,
  stripe_created timestamptz not null,
  event_id text not null
);

revoke all on all tables in schema webhook_private from public, anon, authenticated;
