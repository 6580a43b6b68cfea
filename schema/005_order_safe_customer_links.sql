-- Links between Stripe customers and our customers become order-safe, like subscriptions:
-- a link records the Stripe `created` of the event that made it, so an older event cannot
-- move it, and a deleted Stripe customer keeps a tombstone (customer_uuid null, deleted_at
-- set) so that no late event links it again.
--
-- Written to be applied to either earlier shape of the table: the one 002 creates, and the
-- one a development version of 002 created with these columns already in place.
alter table webhook_private.customer_links alter column customer_uuid drop not null;

do $$
begin
  if not exists (
    select from information_schema.columns
     where table_schema = 'webhook_private' and table_name = 'customer_links'
       and column_name = 'event_created'
  ) then
    alter table webhook_private.customer_links
      add column event_created timestamptz not null default now();
    -- A link made before this migration dates from the event that made it, where that
    -- event is still in the inbox; otherwise from when it was made (never earlier).
    update webhook_private.customer_links l
       set event_created = coalesce(
             (select e.stripe_created from webhook_private.events e where e.id = l.linked_by_event),
             l.linked_at);
  end if;
end
$$;

alter table webhook_private.customer_links add column if not exists deleted_at timestamptz;

do $$
begin
  if not exists (
    select from pg_catalog.pg_constraint
     where conname = 'customer_links_live_or_deleted'
       and conrelid = 'webhook_private.customer_links'::regclass
  ) then
    alter table webhook_private.customer_links add constraint customer_links_live_or_deleted
      check ((customer_uuid is null) = (deleted_at is not null));
  end if;
end
$$;
