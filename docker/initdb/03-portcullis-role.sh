#!/bin/sh
# The upstream login Portcullis uses (fixtures/roles.sql: not superuser, not the tables' owner,
# no CREATE anywhere), with the password the portcullis service is given.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v upstream_user=portcullis -v upstream_password="$PORTCULLIS_UPSTREAM_PASSWORD" \
  -f /fixtures/roles.sql
