#!/usr/bin/env bash
# Installs what building and the end-to-end tests need besides Rust: libclang and protoc (to build
# libpg_query), PostgreSQL 15 server binaries and psql,
# pgbench, PgBouncer (benchmarks), the JDBC driver, a Python venv with psycopg2, psycopg 3,
# asyncpg, SQLAlchemy, LangChain, LlamaIndex and Django, postgres-mcp (a venv of its own), and node's `pg`, knex, Drizzle,
# Prisma and the MCP PostgreSQL server. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# Building: libpg_query (the `pg_query` crate) needs libclang for bindgen and protoc.
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v make >/dev/null || need_apt+=(make)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ "${1:-}" != build ]; then
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v pgbench >/dev/null || need_apt+=(postgresql-contrib)
command -v pgbouncer >/dev/null || need_apt+=(pgbouncer)
[ -f /usr/share/java/postgresql.jar ] || need_apt+=(libpostgresql-jdbc-java)
command -v java >/dev/null || need_apt+=(default-jdk-headless)
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v bc >/dev/null || need_apt+=(bc)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian's postgresql package starts a cluster of its own; the tests never use it.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _; do pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true; done
  fi
fi

# `setup.sh build`: only what building and the demo need.
[ "${1:-}" = build ] && { echo "setup: done (build)"; exit 0; }

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/clients/requirements.txt

# postgres-mcp in a venv of its own (it needs mcp 1.x; see the requirements file). On Python
# below 3.12 a .pth file gives it typing.override from typing_extensions.
[ -x .venv-pgmcp/bin/python ] || python3 -m venv .venv-pgmcp
.venv-pgmcp/bin/pip install -q --disable-pip-version-check -r tests/clients/pgmcp-requirements.txt
.venv-pgmcp/bin/pip install -q --disable-pip-version-check --no-deps --ignore-requires-python postgres-mcp==0.3.0
site=$(.venv-pgmcp/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo 'import typing, typing_extensions; typing.override = getattr(typing, "override", typing_extensions.override)' >"$site/portcullis_typing_override.py"
echo 'import portcullis_typing_override' >"$site/portcullis_typing_override.pth"

(cd tests/clients/node && npm install --silent --no-audit --no-fund >/dev/null)
# Prisma's client is generated from the test schema. Its CLI fetches a schema-engine binary
# (unused by `generate`) from binaries.prisma.sh, which this network does not reach: point it
# at a stand-in so that nothing is downloaded.
(cd tests/clients/node && PRISMA_SCHEMA_ENGINE_BINARY=/bin/true PRISMA_ENGINES_CHECKSUM_IGNORE_MISSING=1 \
  npx --no-install prisma generate --schema prisma/schema.prisma >/dev/null)
echo "setup: done"
