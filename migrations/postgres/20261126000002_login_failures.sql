-- Failed logins per username (SPEC §3): after 10 within a 15-minute window
-- the username answers 429 until the window ends, from any address and on
-- every instance. `window_start` is Unix seconds; a success clears the row.
CREATE TABLE login_failures
(
    username     text    PRIMARY KEY,
    window_start bigint  NOT NULL,
    failures     integer NOT NULL
);
