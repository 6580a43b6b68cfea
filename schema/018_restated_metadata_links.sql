-- Metadata that an event only restates is a weaker fact than a new one.
--
-- A subscription or Stripe customer that carries `metadata.customer_uuid` names that
-- customer in every one of its later events: a renewal, a card change, a pause. Each of
-- them used to link again as a new fact as of its own `created`, so an application that
-- moved the Stripe customer to another row (by writing `stripe_customer_id`) saw it moved
-- back at the next routine event. Now metadata links as a new fact only where it is new:
-- the object's `*.created` event, or an update whose `previous_attributes` name metadata.
-- Anywhere else (and in `sync`, which reads the current metadata) it is restated: such a
-- link is made where nothing else has linked the Stripe customer (a subscription from
-- before the service was installed), and replaces only another restated one, never a link
-- or release made by a new fact, whatever their times. A link's standing is this flag
-- beside its `event_created`: a new fact outranks a restated one, and within each the
-- later wins, so the result stays the same in any order.
--
-- Every existing link came from a new fact, but for those sync made (below): `restated`
-- starts false. Adding the columns rewrites nothing, but takes the table's lock
-- for a moment; it waits at most 5 s for the transactions using the links (the drains'),
-- then fails, changes nothing, and can be run again.
set local lock_timeout = '5s';

alter table webhook_private.customer_links
  add column restated boolean not null default false;

-- A release (the application cleared a customer's `stripe_customer_id`) is a fact about
-- that customer alone: it keeps their older facts from linking them again, and says
-- nothing against a link to anyone else. The row now remembers whom it released (before,
-- a release also refused an older link to another customer, or not, depending on the
-- order the two were applied in).
alter table webhook_private.customer_links add column released_customer uuid;

-- Links an earlier `sync` made from the metadata it read were restatements too.
update webhook_private.customer_links
   set restated = true
 where linked_by_event like 'sync:%' and customer_uuid is not null;
