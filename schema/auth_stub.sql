-- What Supabase provides and a plain PostgreSQL lacks: the auth schema, auth.users,
-- auth.uid() and the three API roles. The migrator runs this file before the numbered
-- migrations on every `migrate`. Each piece is created only when it is missing, so on
-- Supabase, where all of it exists, this file changes nothing (it never touches objects
-- it did not create, which on Supabase belong to supabase_auth_admin).

-- Roles belong to the whole server, not to one database. Each is created only if missing
-- (on Supabase they all exist, and the migrating user may not be allowed to create roles);
-- two databases migrated at the same moment may still race to create one, so the loser
-- treats "already exists" as done.
do $$
declare
  spec record;
begin
  for spec in select * from (values ('anon', ''), ('authenticated', ''), ('service_role', ' bypassrls'))
                as r(name, extra) loop
    if not exists (select from pg_catalog.pg_roles where rolname = spec.name) then
      begin
        execute format('create role %I nologin noinherit%s', spec.name, spec.extra);
      exception when duplicate_object then
        null;
      end;
    end if;
  end loop;
end
$$;

do $$
begin
  if to_regnamespace('auth') is null then
    create schema auth;
    grant usage on schema auth to anon, authenticated, service_role;
  end if;

  if to_regclass('auth.users') is null then
    create table auth.users (
      id uuid primary key default gen_random_uuid(),
      email varchar(255),
      raw_user_meta_data jsonb,
      raw_app_meta_data jsonb,
      last_sign_in_at timestamptz,
      created_at timestamptz not null default now(),
      updated_at timestamptz not null default now()
    );
    grant select, insert, update, delete on auth.users to service_role;
    comment on table auth.users is 'plain-PostgreSQL stand-in for Supabase auth.users';
  end if;

  -- Same contract as Supabase's auth.uid(): the JWT subject, from either the legacy
  -- per-claim setting or the whole claims document that PostgREST sets per request.
  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid
      language sql stable
      set search_path = ''
    as $fn$
      select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
      )::uuid
    $fn$;
    grant execute on function auth.uid() to anon, authenticated, service_role;
  end if;
end
$$;
