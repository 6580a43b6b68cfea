-- Queued ingestion: a delivery stores its event as `received` and is answered at once; a
-- drain applies received events in batches (webhook/drain.py). The received events are
-- the queue, oldest first. This index holds only them, so a drain's claim and the lag a
-- monitor reads stay one small index scan however many settled events the inbox keeps.
create index events_queue_idx on webhook_private.events (received_at, id)
  where status = 'received';
