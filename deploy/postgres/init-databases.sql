-- One database per service, so each service owns its data as it does in production.
-- Run once by the postgres image on an empty volume (/docker-entrypoint-initdb.d/), as the
-- POSTGRES_USER, who owns them all. Each service still keeps to its own schema inside.
-- deploy/tests/test_compose.py checks that every DATABASE_URL in compose.yaml names one.
CREATE DATABASE marketplace_backend;
CREATE DATABASE marketplace_manager;
CREATE DATABASE marketplace_order;
CREATE DATABASE marketplace_payment;
CREATE DATABASE marketplace_inventory;
CREATE DATABASE marketplace_delivery;
CREATE DATABASE marketplace_dead_letter;
