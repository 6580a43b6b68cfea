-- A release keeps the standing of the link it ended, and is remembered for the customer
-- it released.
--
-- When the application clears a customer's `stripe_customer_id`, the Stripe customer's
-- row becomes a release of that customer (migration 018): it concerns them alone, so a
-- link to anyone else replaced it, whatever that link's standing. Whether a lesser fact
-- for someone else (a restated link, or an older one) got the Stripe customer therefore
-- depended on order: applied before the release, it lost to the link the release later
-- ended; applied after, it replaced the release. The row now keeps that link's standing
-- (new fact or restated, its time, its event), and a link to someone else replaces the
-- release only where it would have outranked the link, so both orders end alike.
--
-- Releases made before this migration do not say what they ended and keep the old rule.
-- Adding nullable columns rewrites nothing; it takes the table's lock for a moment and
-- waits at most 5 s for the transactions using the links (the drains'), then fails,
-- changes nothing, and can be run again.
set local lock_timeout = '5s';

alter table webhook_private.customer_links
  add column released_link_created timestamptz,
  add column released_link_restated boolean,
  add column released_link_event text;

-- And a release is remembered for the customer it released, apart from the row: once a
-- link to someone else replaced the release (or the release found someone else owning the
-- Stripe customer), the row no longer said it, and a fact of the released customer that
-- the release had stopped (not newer than it) could link them again, or not, by order.
-- One row per Stripe customer and released customer, with the latest release's moment.
create table webhook_private.customer_link_releases (
  stripe_customer_id text not null,
  customer_uuid uuid not null references public.customer (uuid) on delete cascade,
  released_at timestamptz not null,
  primary key (stripe_customer_id, customer_uuid)
);

create index customer_link_releases_customer_uuid_idx
  on webhook_private.customer_link_releases (customer_uuid);

-- The releases made since 018 that the link rows still show.
insert into webhook_private.customer_link_releases (stripe_customer_id, customer_uuid, released_at)
select stripe_customer_id, released_customer, event_created
  from webhook_private.customer_links
 where customer_uuid is null and released_customer is not null and deleted_at is null;

revoke all on webhook_private.customer_link_releases from public, anon, authenticated;
