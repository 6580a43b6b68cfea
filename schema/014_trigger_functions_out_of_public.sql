-- The trigger functions leave `public`, the schema Supabase's API exposes, for
-- webhook_private, which no API exposes. Three of them are SECURITY DEFINER (they write
-- customer and audit rows whatever role made the change: Supabase Auth's own role, or a
-- signed-in user under row-level security), and the project keeps no definer function in
-- an exposed schema. None of them could be called through the API (no API role may execute
-- them, and PostgreSQL runs trigger functions only as triggers), so this changes no
-- behaviour; it keeps `public` to what the API is meant to reach: the tables, the views and
-- consume_resources. The fourth, handle_customer_plan_update, runs as the invoker and moves
-- with them so that every trigger function of the project lives in one place.
--
-- SET SCHEMA keeps each function's identity: the triggers on auth.users and public.customer
-- reference functions, not names, so they keep firing without being created again, and the
-- privileges (revoked from every API role in 001) go with the functions. The bodies name
-- every object by its schema and run with an empty search_path, so the move changes none
-- of what they read or write.

alter function public.handle_new_user() set schema webhook_private;
alter function public.handle_user_update() set schema webhook_private;
alter function public.log_customer_changes() set schema webhook_private;
alter function public.handle_customer_plan_update() set schema webhook_private;
