-- `python -m webhook drop --yes`: removes everything the numbered migrations created, in
-- one transaction. It never deletes rows of auth.users, and it leaves the auth stub and
-- the roles alone (on a plain PostgreSQL auth.users holds your users; roles are shared by
-- every database of the server).
-- webhook_private goes first: its tables hold foreign keys to public.customer, and its
-- functions are what every trigger of the project calls (the triggers on auth.users go
-- with them).
drop schema if exists webhook_private cascade;
drop view if exists public.customer_plan_history;
drop view if exists public.usage_analytics;
drop trigger if exists on_auth_user_updated on auth.users;
drop trigger if exists on_auth_user_created on auth.users;
drop function if exists public.consume_resources(uuid, text, integer);
drop schema if exists webhook_definer cascade;
drop table if exists public.audit_logs;
drop table if exists public.customer;
drop table if exists public.plans;
-- Where the trigger functions were before 014.
drop function if exists public.log_customer_changes();
drop function if exists public.handle_customer_plan_update();
drop function if exists public.handle_user_update();
drop function if exists public.handle_new_user();
