-- Room on each page for the updates every event and every spend makes.
--
-- PostgreSQL can write a row's new version on the same page without touching any index
-- (a heap-only or "HOT" update) when no indexed column changes and the page has room.
-- Both tables below were packed full (fillfactor 100), so once a row's page had filled up,
-- which in a table loaded at once (a first `sync`, an import of users) is every page,
-- even an update of unindexed columns moved the row to another page and wrote a new entry
-- into each of the table's indexes: the mirror's status and period at every subscription
-- event, a customer's `remaining_resources` at every `consume_resources`. Leaving a tenth
-- of each page free makes those updates in place. A plan change still writes the
-- customer's indexes, since `plan_id` is indexed (the foreign key to plans wants it), but
-- its new version now stays on the row's own page.
--
-- Measured with 1,000,000 customers and plan changes in most events (the benchmark's
-- load): the mirror's updates went from about 40% to all in place, and the WAL written
-- per applied event fell from 23 kB to 18-22 kB; PostgreSQL's CPU per event stayed
-- within the run-to-run spread, as most of that comes from reading and first-writing
-- pages the cache does not hold.
--
-- The setting applies to pages written from now on; rows already packed get room as they
-- move. `VACUUM FULL` (or pg_repack) at a quiet hour repacks a table at once, and needs it
-- to itself while it runs, which is why no migration does it. Changing the setting takes
-- a lock that only other schema changes and vacuums wait for (reads and writes go on); it
-- waits at most 5 s for one running (a manual VACUUM, ANALYZE or index build), then the
-- migration fails, changes nothing, and can be run again.
set local lock_timeout = '5s';

alter table public.customer set (fillfactor = 90);
alter table webhook_private.subscriptions set (fillfactor = 90);
