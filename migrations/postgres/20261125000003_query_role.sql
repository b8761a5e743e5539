-- The role every read-model query runs as (`SET LOCAL ROLE`): not the
-- owner of any table, so row-level security applies to it; each query
-- transaction names its tenant with `set_config('karvon.tenant', …, true)`.
-- Roles are cluster-wide, so databases migrating at the same time may race
-- to create it.
DO $$
BEGIN
    CREATE ROLE karvon_query NOLOGIN;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;
    WHEN insufficient_privilege THEN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'karvon_query') THEN
            RAISE EXCEPTION 'karvon needs the role karvon_query and may not create it'
                USING HINT = format('As an administrator: CREATE ROLE karvon_query NOLOGIN; GRANT karvon_query TO %I;', current_user);
        END IF;
END
$$;

-- The role the application connects as must be able to switch to it.
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'karvon_query', 'MEMBER') THEN
        EXECUTE format('GRANT karvon_query TO %I', current_user);
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'karvon''s role % must be a member of karvon_query', current_user
            USING HINT = format('As an administrator: GRANT karvon_query TO %I;', current_user);
END
$$;
