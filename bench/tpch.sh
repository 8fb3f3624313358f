#!/usr/bin/env bash
# TPC-H's 22 queries (bench/tpch/q01.sql ... q22.sql, the specification's default substitution
# parameters) side by side: directly on PostgreSQL as a superuser, over the policy written by hand
# as security_barrier views (bench/tpch/views.sql), and through Portcullis enforcing the same
# policy (bench/tpch/policy/: customers and suppliers of 13 nations, addresses redacted,
# customers' comments NULL). Interleaved round by round in one run, median per query; the rows of
# the views and of Portcullis must be identical for every query. Writes its section of
# BENCHMARKS.md (exit status 1 after writing it if any query's rows differ or a query fails).
#
# Data: tpchgen-cli (PyPI; a Rust generator, dbgen's output) installed with pip into .venv, as
# psycopg 3, the timing client (bench/tpch/requirements.txt). Nothing else is downloaded.
#
#   bash bench/tpch.sh                               # SF 0.1, 3 rounds, 120 s statement timeout
#   SF=1 ROUNDS=5 TIMEOUT=300 bash bench/tpch.sh
#   PORTCULLIS_BIN=target/debug/portcullis SF=0.01 ROUNDS=1 bash bench/tpch.sh   # no cargo build
#   QUERIES=17,20 ...                                # a subset (the section says so)
set -euo pipefail
cd "$(dirname "$0")/.."
SF="${SF:-0.1}"
ROUNDS="${ROUNDS:-3}"
TIMEOUT="${TIMEOUT:-120}"
QUERIES="${QUERIES:-}"
OUT="${OUT:-BENCHMARKS.md}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}"

if [ -d /usr/lib/postgresql/15/bin ]; then BIN=/usr/lib/postgresql/15/bin
else BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1); fi
BIN="${PG_BIN:-$BIN}"

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r bench/tpch/requirements.txt
GENERATOR="tpchgen-cli $(.venv/bin/tpchgen-cli --version | awk '{print $NF}')"

if [ -n "${PORTCULLIS_BIN:-}" ]; then
  PORTCULLIS="$PORTCULLIS_BIN"
else
  cargo build --release -p proxy --locked
  PORTCULLIS="$CARGO_TARGET_DIR/release/portcullis"
fi
[ -x "$PORTCULLIS" ] || { echo "no portcullis binary at $PORTCULLIS" >&2; exit 1; }

WORK=$(mktemp -d /tmp/portcullis-tpch-XXXXXX)
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); PROXY_PORT=$(free_port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# A throwaway PostgreSQL. PG_OPTS adds settings (e.g. "-c jit=off").
"${AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres -A trust --auth-host=scram-sha-256 -N >/dev/null
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w \
  -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=50 -c shared_buffers=512MB -c fsync=off ${PG_OPTS:-}" \
  start >/dev/null
PSQL=("$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PG_PORT" -U postgres)
"${PSQL[@]}" -c "CREATE DATABASE tpch" postgres

echo "generating TPC-H data at scale factor $SF with $GENERATOR"
mkdir -p "$WORK/gen"
.venv/bin/tpchgen-cli csv -s "$SF" -o "$WORK/gen" -q
"${PSQL[@]}" -f bench/tpch/schema.sql tpch
for t in region nation supplier customer part partsupp orders lineitem; do
  "${PSQL[@]}" -c "\\copy $t FROM '$WORK/gen/$t.csv' WITH (FORMAT csv, HEADER true)" tpch
done
rm -rf "$WORK/gen"
"${PSQL[@]}" -f bench/tpch/keys.sql tpch
"${PSQL[@]}" -c "VACUUM ANALYZE" tpch
"${PSQL[@]}" -At -c "SELECT 'loaded: ' || string_agg(format('%s %s', relname, n_live_tup), ', ' ORDER BY relname)
                     FROM pg_stat_user_tables" tpch

# The three logins: the superuser (direct), the views' reader, Portcullis's upstream role.
"${PSQL[@]}" -f bench/tpch/views.sql tpch
"${PSQL[@]}" tpch <<'SQL'
ALTER ROLE postgres PASSWORD 'tpch-direct';
CREATE ROLE tpch_views LOGIN PASSWORD 'tpch-views';
GRANT USAGE ON SCHEMA sb TO tpch_views;
GRANT SELECT ON ALL TABLES IN SCHEMA sb TO tpch_views;
CREATE ROLE tpch_proxy LOGIN PASSWORD 'tpch-proxy';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO tpch_proxy;
SQL
UPSTREAM="postgres://tpch_proxy:tpch-proxy@127.0.0.1:$PG_PORT/tpch"

# The policy set as shipped: its tables.cedarschema must still be the import of this database.
RUST_LOG=warn "$PORTCULLIS" schema import --upstream "$UPSTREAM" --schema public --out "$WORK/tables.cedarschema"
diff -u bench/tpch/policy/tables.cedarschema "$WORK/tables.cedarschema" >&2 \
  || { echo "bench/tpch/policy/tables.cedarschema is not the import of the TPC-H tables" >&2; exit 1; }
mkdir -p "$WORK/policy"
cp bench/tpch/policy/* "$WORK/policy/"
RUST_LOG=warn "$PORTCULLIS" policy validate "$WORK/policy" >/dev/null
RUST_LOG=warn "$PORTCULLIS" policy test "$WORK/policy"

cat > "$WORK/portcullis.toml" <<TOML
[postgres]
listen = "127.0.0.1:$PROXY_PORT"
upstream = "$UPSTREAM"
statement_timeout_ms = $(( (${TIMEOUT%.*} + 10) * 1000 ))

[policies]
dir = "$WORK/policy"

[[agents]]
id = "tpch-agent"
secret = "tpch-agent-secret"
TOML
RUST_LOG=warn "$PORTCULLIS" serve --config "$WORK/portcullis.toml" 2>"$WORK/portcullis.log" & PIDS+=($!)
for _ in $(seq 1 100); do
  "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PROXY_PORT" && break
  kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$WORK/portcullis.log" >&2; exit 1; }
  sleep 0.2
done
echo "what Portcullis enforces on customer and supplier:"
RUST_LOG=warn "$PORTCULLIS" explain --config "$WORK/portcullis.toml" --agent tpch-agent \
  "select c_custkey, c_address, c_comment from customer join supplier on s_nationkey = c_nationkey" || true

TREE=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- . ':!BENCHMARKS.md' 2>/dev/null || TREE="$TREE with local changes"
COMMAND="SF=$SF ROUNDS=$ROUNDS TIMEOUT=$TIMEOUT${QUERIES:+ QUERIES=$QUERIES} bash bench/tpch.sh"
if [ -n "${PORTCULLIS_BIN:-}" ]; then
  case "$PORTCULLIS" in */release/*) KIND=", release build" ;; */debug/*) KIND=", debug build" ;; *) KIND="" ;; esac
  COMMAND="PORTCULLIS_BIN=$PORTCULLIS_BIN $COMMAND"
  BUILD="from \`$PORTCULLIS\`$KIND (work tree at $TREE)"
else
  BUILD="$TREE, release build"
fi
ABOUT="$(nproc) cores, $(uname -m), PostgreSQL $("$BIN/postgres" --version | awk '{print $NF}'), Portcullis $BUILD, data by $GENERATOR"

status=0
.venv/bin/python bench/tpch/run.py \
  --direct "postgres://postgres:tpch-direct@127.0.0.1:$PG_PORT/tpch" \
  --views "postgres://tpch_views:tpch-views@127.0.0.1:$PG_PORT/tpch" \
  --portcullis "postgres://tpch-agent:tpch-agent-secret@127.0.0.1:$PROXY_PORT/tpch" \
  --queries bench/tpch --only "$QUERIES" --rounds "$ROUNDS" --timeout "$TIMEOUT" --sf "$SF" \
  --command "$COMMAND" --about "$ABOUT" \
  --json "$WORK/tpch.json" --md "$WORK/section.md" || status=$?
[ -f "$WORK/section.md" ] || { echo "no results (exit $status)" >&2; tail -20 "$WORK/portcullis.log" >&2; exit 1; }
# Replace only this script's section of $OUT, keeping the other benchmarks' sections.
python3 - "$OUT" "$WORK/section.md" <<'PY'
import pathlib, re, sys
out, section = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).read_text()
text = out.read_text() if out.exists() else "# Benchmarks\n\n"
pattern = re.compile(r"<!-- tpch:start.*?<!-- tpch:end -->\n?", re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
out.write_text(text)
PY
cat "$WORK/section.md"
if [ "$status" != 0 ]; then
  echo "tpch: FAILED (rows differ or a query failed; see above)" >&2
  grep -v ' INFO ' "$WORK/portcullis.log" | tail -20 >&2 || true
fi
exit "$status"
