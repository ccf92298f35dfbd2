-- Run by the ERP's owner (a superuser) once, after the ERP schema exists.
-- Least-privilege capture login for Debezium: REPLICATION + SELECT on the captured tables, plus
-- write access only to its own signal and heartbeat tables. Idempotent.
-- psql variables: capture_user, capture_password.
CREATE SCHEMA IF NOT EXISTS erpsync_cdc;
CREATE TABLE IF NOT EXISTS erpsync_cdc.debezium_signal (
    id   varchar(42) PRIMARY KEY,
    type varchar(32) NOT NULL,
    data varchar(2048)
);
CREATE TABLE IF NOT EXISTS erpsync_cdc.debezium_heartbeat (
    id integer PRIMARY KEY,
    ts timestamptz NOT NULL
);

SELECT format('CREATE ROLE %I LOGIN REPLICATION PASSWORD %L', :'capture_user', :'capture_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'capture_user') \gexec
SELECT format('ALTER ROLE %I LOGIN REPLICATION PASSWORD %L', :'capture_user', :'capture_password') \gexec

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'capture_user') \gexec
GRANT USAGE ON SCHEMA erp, erpsync_cdc TO :"capture_user";
GRANT SELECT ON ALL TABLES IN SCHEMA erp TO :"capture_user";
ALTER DEFAULT PRIVILEGES IN SCHEMA erp GRANT SELECT ON TABLES TO :"capture_user";
GRANT SELECT, INSERT, UPDATE, DELETE ON erpsync_cdc.debezium_signal, erpsync_cdc.debezium_heartbeat
    TO :"capture_user";

-- Every captured table logs whole old rows (REPLICA IDENTITY FULL): an update or delete then carries
-- the row it changed, so a row that moves to another order or channel is retracted from its old one,
-- and an unchanged TOASTed column comes with its value instead of a placeholder.
SELECT format('ALTER TABLE %I.%I REPLICA IDENTITY FULL', schemaname, tablename)
FROM pg_tables WHERE schemaname = 'erp' \gexec

-- The publication is created here, by the owner, so the capture login needs no ownership.
SELECT 'CREATE PUBLICATION erpsync_erp FOR TABLES IN SCHEMA erp, erpsync_cdc'
WHERE NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'erpsync_erp') \gexec
