#!/bin/sh
# The postgres image's contract, for the image test's stand-in (services.Containerfile): a
# first start makes the cluster in /var/lib/postgresql/data with the superuser POSTGRES_USER,
# password POSTGRES_PASSWORD and the database POSTGRES_DB; every start serves on all addresses.
set -eu
PGDATA=/var/lib/postgresql/data
BIN=/usr/lib/postgresql/15/bin
AS_POSTGRES="setpriv --reuid=postgres --regid=postgres --init-groups"
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
# The marker is written last: a first start cut short is made again from nothing.
if [ ! -f "$PGDATA/.initialized" ]; then
  find "$PGDATA" -mindepth 1 -delete
  printf '%s\n' "$POSTGRES_PASSWORD" >/run/postgresql/password
  chown postgres /run/postgresql/password
  # UTF8, as the postgres image (SQL_ASCII, the default without a locale, hands psycopg bytes).
  $AS_POSTGRES "$BIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/run/postgresql/password \
    --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm /run/postgresql/password
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
  $AS_POSTGRES "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  $AS_POSTGRES "$BIN/psql" -q -v ON_ERROR_STOP=1 -h /run/postgresql -U "$POSTGRES_USER" \
    -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
  $AS_POSTGRES "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  touch "$PGDATA/.initialized"
fi
exec $AS_POSTGRES "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*'
