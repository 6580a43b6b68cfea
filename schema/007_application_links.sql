-- The application's own link: `public.customer.stripe_customer_id`, when the application
-- writes it (a Stripe customer created server-side, the Customer Portal, a subscription made
-- in the Dashboard), links that Stripe customer exactly as a checkout's
-- client_reference_id does. The write is the newest fact at the moment it is made.
--
-- A trigger records each such write as a link request; the service applies it within a
-- second (webhook/application_links.py), under the same per-Stripe-customer locks as the
-- events, and recomputes the plan. The service's own writes to the column (it shows there
-- the customer's newest linked Stripe customer) set `webhook.writing_links` for their
-- transaction, so they make no request: no loop, no extra audit row.

-- A link may now also be "unlinked as of a moment" (no owner, no deletion): an event older
-- than that moment cannot link it again, a newer one can. A deleted Stripe customer still
-- has no owner and a deletion time, for good.
alter table webhook_private.customer_links drop constraint if exists customer_links_live_or_deleted;
alter table webhook_private.customer_links add constraint customer_links_deleted_has_no_owner
  check (deleted_at is null or customer_uuid is null);

create table webhook_private.link_requests (
  id bigint generated always as identity primary key,
  customer_uuid uuid not null references public.customer (uuid) on delete cascade,
  -- What the column held before the write, and what the write put there (null: unlink).
  previous_stripe_customer_id text,
  stripe_customer_id text,
  requested_at timestamptz not null default statement_timestamp(),
  status text not null default 'pending'
    constraint link_requests_status_known check (status in ('pending', 'applied', 'failed')),
  error text,
  applied_at timestamptz
);

create index link_requests_pending_idx on webhook_private.link_requests (id)
  where status = 'pending';
create index link_requests_customer_uuid_idx on webhook_private.link_requests (customer_uuid);

-- SECURITY DEFINER so that any role allowed to write public.customer (service_role on
-- Supabase) can record the request in the private schema it has no privileges on. It lives
-- in webhook_private, which no API exposes, and runs with an empty search_path.
create function webhook_private.request_application_link() returns trigger
  language plpgsql
  security definer
  set search_path = ''
as $$
begin
  if coalesce(current_setting('webhook.writing_links', true), '') = 'on' then
    return null;  -- the service showing a link it made: not the application's write
  end if;
  insert into webhook_private.link_requests
    (customer_uuid, previous_stripe_customer_id, stripe_customer_id)
  values (
    new.uuid,
    case when tg_op = 'UPDATE' then old.stripe_customer_id end,
    new.stripe_customer_id);
  return null;
end
$$;

revoke all on function webhook_private.request_application_link() from public, anon, authenticated;

create trigger on_customer_stripe_id_inserted
  after insert on public.customer
  for each row when (new.stripe_customer_id is not null)
  execute function webhook_private.request_application_link();

create trigger on_customer_stripe_id_updated
  after update of stripe_customer_id on public.customer
  for each row when (old.stripe_customer_id is distinct from new.stripe_customer_id)
  execute function webhook_private.request_application_link();

-- Values the application wrote before this migration, which no link knows of yet, are
-- requested now; the service applies them as it starts.
insert into webhook_private.link_requests (customer_uuid, stripe_customer_id)
select c.uuid, c.stripe_customer_id
  from public.customer c
 where c.stripe_customer_id is not null
   and not exists (
     select from webhook_private.customer_links l
      where l.stripe_customer_id = c.stripe_customer_id)
 order by c.uuid;

revoke all on webhook_private.link_requests from public, anon, authenticated;
