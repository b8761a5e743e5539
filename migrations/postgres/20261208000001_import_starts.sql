-- How many runs of a queued job began and never returned (the process
-- ended under them). The worker counts a start before a run and takes it
-- back when the run returns; past 3 the job fails instead of running.
ALTER TABLE import_queue ADD COLUMN starts integer NOT NULL DEFAULT 0;
