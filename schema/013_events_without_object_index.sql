-- Drop the inbox's index on object_id. Nothing the service runs reads events by object
-- (lookups go by event id, status, type and time), yet every stored event added an entry
-- to it, and so did every status change: a drain's update of a row moves the row, which
-- writes a new entry in every index. Object ids are random, so with millions of events
-- each entry landed on a leaf page of its own: about a tenth of the service's throughput
-- with 1,000,000 customers (README, Benchmark). The column stays; an operator looking
-- for the events of one object can still filter on it, or create the index again.
drop index webhook_private.events_object_id_idx;
