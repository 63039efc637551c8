#!/bin/sh
# Start PostgreSQL as user postgres. On the first start (an empty $PGDATA) make the cluster:
# the superuser postgres reaches it only through the local socket (peer), and the role
# $POSTGRES_USER, owner of the database $POSTGRES_DB, logs in over TCP with its password.
set -eu

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        [ -r "$POSTGRES_PASSWORD_FILE" ] || { echo "POSTGRES_PASSWORD_FILE $POSTGRES_PASSWORD_FILE is not readable" >&2; exit 1; }
        POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
    fi
    [ -n "${POSTGRES_PASSWORD:-}" ] ||
        { echo "the first start needs the password of role $POSTGRES_USER: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE" >&2; exit 1; }
    case $POSTGRES_USER$POSTGRES_DB in
        *[!a-z0-9_]*) echo "POSTGRES_USER and POSTGRES_DB take lower-case letters, digits and _ only" >&2; exit 1 ;;
    esac
    chown postgres:postgres "$PGDATA"
    chmod 0700 "$PGDATA"
    as_postgres initdb -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    # The password reaches psql through the environment, never a command line.
    export POSTGRES_PASSWORD
    as_postgres psql -v ON_ERROR_STOP=1 -q -d postgres -v user="$POSTGRES_USER" -v db="$POSTGRES_DB" <<'SQL'
\getenv password POSTGRES_PASSWORD
create role :"user" login password :'password';
create database :"db" owner :"user";
SQL
    as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
fi
unset POSTGRES_PASSWORD
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" -c listen_addresses='*' "$@"
