-- Settings stored through the config API (option 2 of issue #4). Only the
-- settings page's keys live here; service wiring stays in the mounted
-- secret. Secret values are sealed with ChaCha20-Poly1305 under
-- settings_key before they arrive (`sealed-v1:<key id>:<base64>`), so this
-- table never holds a credential in clear.
CREATE TABLE settings (
    key    text PRIMARY KEY,
    value  text NOT NULL,
    sealed boolean NOT NULL
);

-- One row per accepted update: the version it made, who asked, from where,
-- and which keys changed. Never a value.
CREATE TABLE settings_audit (
    version bigint PRIMARY KEY,
    at      timestamptz NOT NULL,
    actor   text NOT NULL,
    peer    text NOT NULL DEFAULT '',
    changed text[] NOT NULL
);
