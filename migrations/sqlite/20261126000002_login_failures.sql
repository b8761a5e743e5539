-- Failed logins per username (SPEC §3): after 10 within a 15-minute window
-- the username answers 429 until the window ends. `window_start` is Unix
-- seconds; a success clears the row.
CREATE TABLE login_failures
(
    username     TEXT    PRIMARY KEY,
    window_start INTEGER NOT NULL,
    failures     INTEGER NOT NULL
);
