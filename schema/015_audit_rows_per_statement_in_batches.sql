-- Audit rows for batch writes, one insert per statement, each row named after its event.
--
-- The audit trigger writes one audit row per changed customer row, and names it after
-- `webhook.source`, one value per transaction. The service's batch engines (the drain,
-- replay, renewals) change up to a thousand customers in one statement, each because of a
-- different Stripe event. Until now they let the trigger write the rows unnamed and then
-- updated every one of them to name it: each audit row written twice, on top of one insert
-- statement per row. Measured on the benchmark machine (PostgreSQL's CPU for a statement
-- changing the plans of 1,000 customers, then naming their rows): about 120 µs per
-- customer before, 75 with this migration; `replay --failed` over 100,000 events went from
-- 5,100-5,300 to 6,100-6,400 rows/s.
--
-- Now a writer that changes many customers at once may set `webhook.sources` for its
-- statement: a JSON object from customer uuid to source. While it is set (and not empty),
-- updates are logged by a statement-level trigger that reads the statement's old and new
-- rows and writes all their audit rows in one insert, each named from the map (a customer
-- missing from it gets `webhook.source`). The decisions are those of log_customer_changes:
-- a plan change; otherwise a balance put back to the plan's allowance is a reset, any other
-- move of the balance an update; nothing else is logged. While it is not set, which is
-- every other writer (consume_resources, the one-by-one handlers, your application), the
-- row-level trigger logs updates as before. Inserts are always logged row by row.
--
-- Either way every change is logged once: the two update triggers test the same setting
-- with opposite conditions (a statement that changes the setting while it runs, from its
-- own RETURNING list, is not supported). Setting `webhook.sources` only changes how the
-- rows are written and what their source says, which `webhook.source` already lets any
-- writer choose. A value that is not a JSON object makes the update fail; an empty source
-- counts as none. Old and new rows are paired by uuid, so an update that changes a
-- customer's uuid (which nothing does; audit rows refer to it) would not be logged in this
-- mode.
--
-- The cost: PostgreSQL keeps every UPDATE's old and new rows of public.customer for the
-- statement trigger even when it does not fire. It is not measurable in consume_resources
-- (about 70 µs of server CPU per call with and without it, 10,000 calls, five runs each),
-- though a very large update may spill them to a temporary file. Replacing the triggers
-- takes an exclusive lock on public.customer for a moment; the migration gives up after
-- 5 s rather than queue every reader of the table behind a long transaction (run it again
-- later).

set local lock_timeout = '5s';

create function webhook_private.log_customer_changes_in_batch() returns trigger
  language plpgsql
  security definer
  set search_path = ''
as $$
declare
  v_sources jsonb := current_setting('webhook.sources')::jsonb;
  v_source text := nullif(current_setting('webhook.source', true), '');
begin
  if jsonb_typeof(v_sources) is distinct from 'object' then
    raise exception 'webhook.sources must be a JSON object from customer uuid to source';
  end if;
  insert into public.audit_logs (customer_uuid, action, old_value, new_value, source)
  select n.uuid,
         case
           when n.plan_id is distinct from o.plan_id then 'plan_change'
           when n.remaining_resources is not distinct from n.plan_resources then 'resource_reset'
           else 'resource_update'
         end,
         jsonb_build_object('plan_id', o.plan_id, 'remaining_resources', o.remaining_resources),
         jsonb_build_object('plan_id', n.plan_id, 'remaining_resources', n.remaining_resources),
         coalesce(nullif(v_sources ->> n.uuid::text, ''), v_source)
    from new_rows n
    join old_rows o on o.uuid = n.uuid
   where n.plan_id is distinct from o.plan_id
      or n.remaining_resources is distinct from o.remaining_resources
   order by n.uuid;
  return null;
end
$$;

revoke all on function webhook_private.log_customer_changes_in_batch() from public, anon, authenticated;

drop trigger on_customer_changes on public.customer;

create trigger on_customer_inserted
  after insert on public.customer
  for each row execute function webhook_private.log_customer_changes();

create trigger on_customer_changes
  after update of plan_id, remaining_resources on public.customer
  for each row
  when (coalesce(current_setting('webhook.sources', true), '') = '')
  execute function webhook_private.log_customer_changes();

create trigger on_customer_changes_in_batch
  after update on public.customer
  referencing old table as old_rows new table as new_rows
  for each statement
  when (coalesce(current_setting('webhook.sources', true), '') <> '')
  execute function webhook_private.log_customer_changes_in_batch();
