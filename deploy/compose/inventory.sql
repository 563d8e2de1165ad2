-- Demo inventory for the laptop try-out: the view contract breakglass reads
-- (README "Inventory view contract") over a small table.
CREATE TABLE devices (
  project text, provider text, device_name text, protocol text,
  public_ip text, private_ip text, url text, port text, access_type text,
  account text, password text, pem_file_name text, extra_credential text
);
INSERT INTO devices VALUES
  ('Payments', 'AWS', 'web-10', 'SSH', '203.0.113.10', '10.0.0.10', NULL, '22', 'password', 'root', 'demo-pass-10', NULL, NULL),
  ('Payments', 'AWS', 'web-2', 'SSH', '203.0.113.2', '10.0.0.2', NULL, '22', 'password', 'root', 'demo-pass-2', NULL, NULL),
  ('核心業務系統', 'Azure', 'db-1', 'PostgreSQL', NULL, '10.1.0.1', NULL, '5432', 'password', 'postgres', 'demo-db-pass', NULL, NULL);
CREATE VIEW breakglass_inventory AS SELECT * FROM devices;
CREATE ROLE breakglass_reader LOGIN PASSWORD 'reader-password';
GRANT SELECT ON breakglass_inventory TO breakglass_reader;
