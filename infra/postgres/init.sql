-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d), as
-- POSTGRES_USER, and by tests/test_team.py: one database per server; Prefect needs pg_trgm.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
