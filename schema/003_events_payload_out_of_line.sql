-- Keep the inbox's rows small: a Stripe payload (2-10 kB of JSON, ~1.7 kB compressed) is
-- moved to the TOAST table whenever a row is over 256 bytes, instead of staying inline
-- up to PostgreSQL's default 2 kB target. Every event's row is written twice (stored,
-- then its status recorded), and a status change copies the whole inline row: with the
-- payload out of line it copies about 200 bytes and a pointer. It also keeps the heap
-- that the status and type indexes point into about ten times smaller. Rows written
-- before this migration keep their layout until they are next rewritten.
alter table webhook_private.events set (toast_tuple_target = 256);
