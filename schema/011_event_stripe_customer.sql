-- Each stored event's Stripe customer: the one whose lock applying it takes (a customer
-- event's own id, else the object's `customer`), written when the event is stored. A
-- parallel replay splits its events by this column (webhook/pipeline/replay_parallel.py) instead of
-- reading every payload once more. Events stored before this migration keep NULL here and
-- are read from their payload; so are events about no Stripe customer (prices, products).
alter table webhook_private.events add column stripe_customer_id text;
