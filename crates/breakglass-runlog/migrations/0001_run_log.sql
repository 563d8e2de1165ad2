-- The run log: one row per run, its stage events, its destination results.
-- Holds no credential (DESIGN.md invariant 3): run ids, reasons, counts,
-- object names, checksums and error texts that are scrubbed before they
-- reach the bus.
CREATE TABLE runs (
    run_id        text PRIMARY KEY,
    reason        text NOT NULL,
    requested_by  text NOT NULL DEFAULT '',
    note          text NOT NULL DEFAULT '',
    requested_at  timestamptz NOT NULL,
    status        text NOT NULL DEFAULT 'running',
    failed_stage  text NOT NULL DEFAULT '',
    error         text NOT NULL DEFAULT '',
    rows          bigint NOT NULL DEFAULT 0,
    warning_count bigint NOT NULL DEFAULT 0,
    finished_at   timestamptz
);
CREATE INDEX runs_requested_at ON runs (requested_at DESC);

CREATE TABLE run_events (
    id      bigserial PRIMARY KEY,
    run_id  text NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    at      timestamptz NOT NULL,
    stage   text NOT NULL,
    detail  text NOT NULL,
    -- A redelivered bus message records its event once.
    UNIQUE (run_id, stage)
);

CREATE TABLE run_destinations (
    run_id      text NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    destination text NOT NULL,
    status      text NOT NULL,
    location    text NOT NULL DEFAULT '',
    size        bigint NOT NULL DEFAULT 0,
    sha256      text NOT NULL DEFAULT '',
    error       text NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, destination)
);
