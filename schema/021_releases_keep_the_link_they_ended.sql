-- A release keeps the standing of the link it ended.
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
