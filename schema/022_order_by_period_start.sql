-- Subscription states of one second order by the start of their billing period before
-- its end (webhook/rules/ordering.py).
--
-- The stored order key was [created, terminal, period end, type, status]. Within one
-- second the later period end won, but the end can move back: switching a yearly price to
-- a monthly one restarts the cycle now and ends it a month later, within the year that
-- was running. An update of the old year and the switch in the same second therefore kept
-- the old year's state (and its plan) in either delivery order. The start of a period only
-- moves forward (a renewal, a new interval, a reset anchor, a trial's end all start a
-- period at the moment they happen), so it now comes first: [created, terminal, period
-- start, period end, type, status].
--
-- Stored keys gain the start of the state they describe, read from the event that wrote
-- it: on the items since basil (the latest item's), on the subscription before. A state
-- read by `sync` (its key is [fetched, terminal, -1, -1, -1]) gets -1, like the keys sync
-- writes now. A state whose event is no longer in the inbox (purged, so at least a week
-- old) gets 0: only an event of its own second could tie it, and Stripe stops retrying
-- after three days.
--
-- Rewrites every row of the mirror once; waits at most 5 s for the drains' locks, then
-- fails, changes nothing, and can be run again.
set local lock_timeout = '5s';

lock table webhook_private.subscriptions in share row exclusive mode;

update webhook_private.subscriptions s
   set order_key = s.order_key[1:2]
                   || case
                        when s.order_key[3] = -1 then -1::bigint
                        else coalesce(
                          (select coalesce(
                                    (select max((item ->> 'current_period_start')::bigint)
                                       from jsonb_array_elements(
                                              case when jsonb_typeof(o -> 'items' -> 'data') = 'array'
                                                   then o -> 'items' -> 'data' end) item
                                      where item ->> 'current_period_start' ~ '^[0-9]{1,18}$'),
                                    case when o ->> 'current_period_start' ~ '^[0-9]{1,18}$'
                                         then (o ->> 'current_period_start')::bigint end)
                             -- The payload parsed once (offset 0 keeps the planner from
                             -- repeating the parse at each use of o).
                             from (select e.payload::jsonb -> 'data' -> 'object' as o
                                     from webhook_private.events e
                                    where e.id = s.event_id
                                   offset 0) as stored
                            where jsonb_typeof(o) = 'object'),
                          0)
                      end
                   || s.order_key[3:5]
 where cardinality(s.order_key) = 5;
