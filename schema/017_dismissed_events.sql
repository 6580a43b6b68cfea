-- Dismissing a failed event: `python -m webhook events dismiss EVT_ID... --reason TEXT`.
--
-- Some failed events can never be applied (a payload Stripe will not send again in another
-- shape, an event of a test that went wrong); replaying them fails again, purge keeps them,
-- and they hold `webhook_inbox_events{status="failed"}`, the oldest-failed age and
-- `doctor` on for good. An operator who has looked at one can now settle it as ignored,
-- with the reason kept: the event's `error` says it was dismissed and why, and its history
-- gains an attempt whose trigger is `operator`.
--
-- Replacing the check takes an exclusive lock on the attempts table and re-checks its rows
-- (every one passed the narrower check). Readers and writers of the table (drains,
-- replays, `events show`, inline deliveries) wait for that; so that they never wait for
-- long, the lock is waited for at most 5 s, after which the migration fails, changes
-- nothing, and can be run again.
set local lock_timeout = '5s';

alter table webhook_private.event_attempts drop constraint event_attempts_trigger_known;
alter table webhook_private.event_attempts add constraint event_attempts_trigger_known
  check (trigger in ('delivery', 'replay', 'sync', 'operator'));
