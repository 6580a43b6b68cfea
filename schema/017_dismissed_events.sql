-- Dismissing a failed event: `python -m webhook events dismiss EVT_ID... --reason TEXT`.
--
-- Some failed events can never be applied (a payload Stripe will not send again in another
-- shape, an event of a test that went wrong); replaying them fails again, purge keeps them,
-- and they hold `webhook_inbox_events{status="failed"}`, the oldest-failed age and
-- `doctor` on for good. An operator who has looked at one can now settle it as ignored,
-- with the reason kept: the event's `error` says it was dismissed and why, and its history
-- gains an attempt whose trigger is `operator`.
alter table webhook_private.event_attempts drop constraint event_attempts_trigger_known;
alter table webhook_private.event_attempts add constraint event_attempts_trigger_known
  check (trigger in ('delivery', 'replay', 'sync', 'operator')) not valid;
-- Every existing row passed the narrower check; validating only confirms it, under the
-- lock already held (a scan of the attempts, which only the drains wait for).
alter table webhook_private.event_attempts validate constraint event_attempts_trigger_known;
