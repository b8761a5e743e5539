-- The role every read-model query runs as (`SET LOCAL ROLE`): not the
-- owner of any table, so row-level security applies to it; each query
-- transaction names its tenant with `set_config('karvon.tenant', …, true)`.
-- Roles are cluster-wide, so databases migrating at the same time may race
-- to create it.
DO $$
BEGIN
    CREATE ROLE karvon_query NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The role the application connects as must be able to switch to it.
DO $$
BEGIN
    EXECUTE format('GRANT karvon_query TO %I', current_user);
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
