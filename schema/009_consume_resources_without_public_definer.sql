-- public.consume_resources stays the API (same signature, same errors, same guarantees)
-- but is no longer a SECURITY DEFINER function. Supabase's linter warns about any definer
-- function that `authenticated` may execute in a schema the API exposes (lint 0029,
-- authenticated_security_definer_function_executable), and its guidance is to keep such
-- functions out of exposed schemas. The definer part moves to `webhook_definer`, a schema
-- that holds this one function and that no API exposes (do not add it to Supabase's
-- exposed schemas); public.consume_resources becomes a SECURITY INVOKER wrapper around it.
--
-- The checks are where they were: the definer function compares auth.uid() with the
-- customer and lets only roles that bypass row-level security act for someone else.
-- Neither the `role` setting nor the JWT claims change through a SECURITY INVOKER call.

create schema webhook_definer;
revoke all on schema webhook_definer from public;
grant usage on schema webhook_definer to authenticated, service_role;

-- The body of 001's public.consume_resources, unchanged.
create function webhook_definer.consume_resources(p_customer uuid, p_resource text, p_amount integer)
  returns jsonb
  language plpgsql
  security definer
  set search_path = ''
as $$
declare
  v_caller uuid := auth.uid();
  v_role text := coalesce(nullif(current_setting('role', true), 'none'), session_user);
  v_remaining jsonb;
  v_plan_id bigint;
  v_balance jsonb;
begin
  if p_customer is null or p_resource is null or p_amount is null then
    raise exception 'consume_resources: customer, resource and amount are all required'
      using errcode = '22004';
  end if;
  if p_amount <= 0 then
    raise exception 'consume_resources: amount must be positive, got %', p_amount
      using errcode = '22023';
  end if;
  if v_caller is distinct from p_customer and not exists (
    select from pg_catalog.pg_roles r
    where r.rolname = v_role and (r.rolbypassrls or r.rolsuper)
  ) then
    raise exception 'consume_resources: not allowed to consume resources of customer %',
      p_customer using errcode = '42501';
  end if;

  update public.customer c
     set remaining_resources = jsonb_set(
           c.remaining_resources,
           array[p_resource],
           to_jsonb((c.remaining_resources ->> p_resource)::numeric - p_amount))
   where c.uuid = p_customer
     and c.plan_id is not null
     and case when jsonb_typeof(c.remaining_resources -> p_resource) = 'number'
              then (c.remaining_resources ->> p_resource)::numeric >= p_amount
              else false end
  returning c.remaining_resources into v_remaining;

  if v_remaining is null then
    select c.plan_id, c.remaining_resources -> p_resource
      into v_plan_id, v_balance
      from public.customer c
     where c.uuid = p_customer;
    if not found then
      raise exception 'consume_resources: customer % does not exist', p_customer
        using errcode = 'P0002';
    elsif v_plan_id is null then
      raise exception 'consume_resources: customer % has no plan', p_customer
        using errcode = 'P0002';
    elsif v_balance is null or jsonb_typeof(v_balance) <> 'number' then
      raise exception 'consume_resources: the plan of customer % has no resource "%"',
        p_customer, p_resource using errcode = 'P0002';
    else
      raise exception 'consume_resources: insufficient "%": % remaining, % requested',
        p_resource, v_balance, p_amount using errcode = '23514';
    end if;
  end if;

  return jsonb_build_object(
    'customer', p_customer,
    'resource', p_resource,
    'consumed', p_amount,
    'remaining', v_remaining -> p_resource,
    'remaining_resources', v_remaining);
end
$$;

revoke all on function webhook_definer.consume_resources(uuid, text, integer) from public, anon;
grant execute on function webhook_definer.consume_resources(uuid, text, integer)
  to authenticated, service_role;

-- Replacing keeps the function's privileges: executable by authenticated and service_role.
create or replace function public.consume_resources(p_customer uuid, p_resource text, p_amount integer)
  returns jsonb
  language sql
  security invoker
  set search_path = ''
as $$
  select webhook_definer.consume_resources(p_customer, p_resource, p_amount)
$$;
