#!/bin/sh
# PostgreSQL as user postgres, with no capabilities: the first start (an empty $PGDATA, the
# volume Docker filled from the image) makes the cluster, the role and database demo (its
# password from POSTGRES_PASSWORD, through the environment only) and lets it log in over TCP.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?the first start needs POSTGRES_PASSWORD}"
    initdb -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql -v ON_ERROR_STOP=1 -q -d postgres <<'SQL'
\getenv password POSTGRES_PASSWORD
create role demo login password :'password';
create database demo owner demo;
SQL
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
fi
unset POSTGRES_PASSWORD
exec postgres -D "$PGDATA" -c listen_addresses='*'
