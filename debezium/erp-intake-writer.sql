-- Run by the ERP's owner (a superuser) once, after the ERP schema exists.
-- The login erpsync writes governed channel orders with: INSERT (and SELECT, for ON CONFLICT) on
-- the ERP's order import table erp.order_intake, nothing else. Idempotent.
-- psql variables: intake_user, intake_password.
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'intake_user', :'intake_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'intake_user') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'intake_user', :'intake_password') \gexec

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'intake_user') \gexec
GRANT USAGE ON SCHEMA erp TO :"intake_user";
GRANT SELECT, INSERT ON erp.order_intake TO :"intake_user";
