-- Results of `breakglass drill --record`: the emergency path rehearsed with
-- the reader's credential. Holds no credential: destinations are described
-- without secrets and details are the drill's own plain-words messages.
CREATE TABLE drills (
    id                bigserial PRIMARY KEY,
    at                timestamptz NOT NULL,
    destination       text NOT NULL,
    passed            boolean NOT NULL,
    failed_step       text NOT NULL DEFAULT '',
    detail            text NOT NULL DEFAULT '',
    backup_run_id     text NOT NULL DEFAULT '',
    backup_created_at timestamptz
);
CREATE INDEX drills_destination_at ON drills (destination, at DESC);
