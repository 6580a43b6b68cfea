-- Run by the migrator before anything else: the private schema and the table that
-- records which numbered migrations have been applied. Idempotent.
create schema if not exists webhook_private;

create table if not exists webhook_private.schema_migrations (
  version text primary key,
  name text not null,
  checksum text not null,
  applied_at timestamptz not null default now()
);
