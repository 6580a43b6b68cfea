-- The identity sequences of plans and audit_logs: Supabase's default privileges grant them
-- to the API roles, and UPDATE on a sequence allows setval(). Identity columns need no
-- sequence privilege to insert, so take them back. (Repeating a revoke is harmless.)
revoke all on sequence public.plans_id_seq, public.audit_logs_id_seq
  from public, anon, authenticated;
