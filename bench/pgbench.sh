#!/usr/bin/env bash
# Side-by-side throughput: pgbench -S against PostgreSQL directly, through PgBouncer (session
# mode), through Portcullis with its statement gate only, and through Portcullis enforcing a row
# policy on the pgbench tables (schema imported from the bench database, bench/policy/*.cedar),
# interleaved round by round in one run so that the machine's noise hits all alike. Writes the
# median tps and the ratios to BENCHMARKS.md.
#
#   bash bench/pgbench.sh            # 3 rounds x 10 s per (mode, target)
#   ROUNDS=5 SECONDS_PER_RUN=20 CLIENTS=8 bash bench/pgbench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
CLIENTS="${CLIENTS:-8}"
SCALE="${SCALE:-10}"
OUT="${OUT:-BENCHMARKS.md}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}"

command -v pgbouncer >/dev/null || { echo "pgbouncer missing: run bash tests/setup.sh" >&2; exit 1; }
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release -p proxy --locked
PORTCULLIS="$CARGO_TARGET_DIR/release/portcullis"

WORK=$(mktemp -d /tmp/portcullis-bench-XXXXXX)
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); PROXY_PORT=$(free_port); POLICY_PORT=$(free_port)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/pgbouncer.pid" ] && kill "$(cat "$WORK/pgbouncer.pid")" 2>/dev/null || true
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"${AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres -A trust --auth-host=scram-sha-256 -N >/dev/null
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w \
  -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=100 -c shared_buffers=256MB -c fsync=off" start >/dev/null
PSQL=("$BIN/psql" -X -q -h "$WORK" -p "$PG_PORT" -U postgres)
"${PSQL[@]}" -c "CREATE ROLE bench LOGIN PASSWORD 'bench-pw'" postgres
"${PSQL[@]}" -c "CREATE DATABASE bench" postgres
"$BIN/pgbench" -i -q -s "$SCALE" -h "$WORK" -p "$PG_PORT" -U postgres bench >/dev/null 2>&1
"${PSQL[@]}" -c "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO bench" bench

cat > "$WORK/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
INI
echo '"bench" "bench-pw"' > "$WORK/userlist.txt"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"/pgbouncer.ini "$WORK"/userlist.txt
"${AS[@]}" pgbouncer -q -d "$WORK/pgbouncer.ini"

cat > "$WORK/portcullis.toml" <<TOML
[postgres]
listen = "127.0.0.1:$PROXY_PORT"
upstream = "postgres://bench:bench-pw@127.0.0.1:$PG_PORT/bench"
[[agents]]
id = "bench"
secret = "bench-pw"
TOML
RUST_LOG=warn "$PORTCULLIS" serve --config "$WORK/portcullis.toml" 2>"$WORK/portcullis.log" & PIDS+=($!)

# The policy set: the schema imported from the bench database, plus bench/policy/*.cedar.
mkdir -p "$WORK/policy"
"$PORTCULLIS" schema import --upstream "postgres://bench:bench-pw@127.0.0.1:$PG_PORT/bench" \
  --out "$WORK/policy/tables.cedarschema" 2>/dev/null
cp bench/policy/* "$WORK/policy/"
"$PORTCULLIS" policy validate "$WORK/policy" >/dev/null
sed -e "s/$PROXY_PORT/$POLICY_PORT/" "$WORK/portcullis.toml" > "$WORK/policy.toml"
printf '[policies]\ndir = "%s"\n' "$WORK/policy" >> "$WORK/policy.toml"
RUST_LOG=warn "$PORTCULLIS" serve --config "$WORK/policy.toml" 2>"$WORK/policy.log" & PIDS+=($!)
# The same policy with the audit log, per durability mode (the log on this machine's disk).
"$PORTCULLIS" audit keygen --node-id bench --out "$WORK/audit.key" >/dev/null 2>&1
AUDIT_PORT=()
declare -A AUDIT_PID ADMIN_PORT
for mode in sync batch async; do
  port=$(free_port); AUDIT_PORT+=("$port"); ADMIN_PORT[$mode]=$(free_port)
  sed -e "s/$POLICY_PORT/$port/" "$WORK/policy.toml" > "$WORK/audit-$mode.toml"
  printf '[audit]\ndir = "%s"\nkey_file = "%s"\nnode_id = "bench"\nmode = "%s"\n[admin]\nlisten = "127.0.0.1:%s"\n' \
    "$WORK/audit-$mode" "$WORK/audit.key" "$mode" "${ADMIN_PORT[$mode]}" >> "$WORK/audit-$mode.toml"
  RUST_LOG=info "$PORTCULLIS" serve --config "$WORK/audit-$mode.toml" 2>"$WORK/audit-$mode.log" & PIDS+=($!)
  AUDIT_PID[$mode]=$!
done
sleep 2
# The policy is really enforced: branches 9 and 10 are hidden.
HIDDEN=$("$BIN/psql" -X -At "postgres://bench:bench-pw@127.0.0.1:$POLICY_PORT/bench" \
  -c "select count(*) from pgbench_accounts where bid > 8")
[ "$HIDDEN" = 0 ] || { echo "the bench policy is not enforced ($HIDDEN hidden rows visible)" >&2; exit 1; }

declare -A URL=(
  [direct]="postgres://bench:bench-pw@127.0.0.1:$PG_PORT/bench"
  [pgbouncer]="postgres://bench:bench-pw@127.0.0.1:$BOUNCER_PORT/bench"
  [portcullis]="postgres://bench:bench-pw@127.0.0.1:$PROXY_PORT/bench"
  [policy]="postgres://bench:bench-pw@127.0.0.1:$POLICY_PORT/bench"
  [audit-sync]="postgres://bench:bench-pw@127.0.0.1:${AUDIT_PORT[0]}/bench"
  [audit-batch]="postgres://bench:bench-pw@127.0.0.1:${AUDIT_PORT[1]}/bench"
  [audit-async]="postgres://bench:bench-pw@127.0.0.1:${AUDIT_PORT[2]}/bench"
)
TARGETS=(direct pgbouncer portcullis policy audit-sync audit-batch audit-async)
MODES=(simple extended prepared)
declare -A RESULTS
for round in $(seq 1 "$ROUNDS"); do
  for mode in "${MODES[@]}"; do
    for t in "${TARGETS[@]}"; do
      tps=$("$BIN/pgbench" -n -S -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -M "$mode" "${URL[$t]}" 2>/dev/null \
            | awk '/^tps/ {print $3; exit}')
      [ -n "$tps" ] || { echo "pgbench failed against $t ($mode)" >&2; exit 1; }
      RESULTS[$mode,$t]="${RESULTS[$mode,$t]:-} $tps"
      echo "round $round  $mode  $t  $tps tps"
    done
  done
done

# The sync proxy's durable appends, from its /metrics: mean time of one (write + fdatasync)
# and how many statements each carried.
METRICS=$(curl -s "http://127.0.0.1:${ADMIN_PORT[sync]}/metrics")
metric() { echo "$METRICS" | awk -v m="$1" '$1 == m {print $2}'; }
FSYNC_SUM=$(metric portcullis_audit_fsync_seconds_sum); FSYNC_COUNT=$(metric portcullis_audit_fsync_seconds_count)
STATEMENTS=$(echo "$METRICS" | awk '/^portcullis_statements_total/ {s += $2} END {print s}')
FSYNC_MS=$(echo "1000 * $FSYNC_SUM / $FSYNC_COUNT" | bc -l)
PER_FSYNC=$(echo "$STATEMENTS / $FSYNC_COUNT" | bc -l)
# Stop the audited proxies cleanly: each logs how many entries its fsyncs carried.
declare -A BATCH
for mode in sync batch async; do
  kill -TERM "${AUDIT_PID[$mode]}"; wait "${AUDIT_PID[$mode]}" 2>/dev/null || true
  BATCH[$mode]=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/audit-$mode.log" \
    | grep -o 'entries=[0-9]* appends=[0-9]* mean_batch=[^ ]*' | tail -1 || true)
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
SECTION=$(mktemp)
{
  echo "<!-- pgbench:start (written by bench/pgbench.sh) -->"
  echo "## Wire throughput: pgbench through Portcullis (gate only, and enforcing a row policy) vs PgBouncer vs direct"
  echo
  echo "Generated by \`bash bench/pgbench.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m))."
  echo "pgbench -S (select-only), scale $SCALE, $CLIENTS clients, -j 2, ${SECONDS_PER_RUN}s per run,"
  echo "$ROUNDS interleaved rounds, median tps. The client, PostgreSQL and the proxy share the same"
  echo "machine, so absolute numbers mean little; compare the ratios, measured side by side."
  echo "*Gate*: Portcullis without [policies] (parse, check, re-serialize every Query and Parse)."
  echo "*Policy*: Portcullis enforcing bench/policy (pgbench_accounts rows of branches 1-8 only, so"
  echo "every query is rewritten into a fenced, filtered subquery with the aid lookup pushed into it)."
  echo
  echo "| mode | direct tps | PgBouncer tps | gate tps | policy tps | gate / PgBouncer | policy / PgBouncer | policy / direct |"
  echo "|---|---|---|---|---|---|---|---|"
  for mode in "${MODES[@]}"; do
    d=$(echo "${RESULTS[$mode,direct]}" | median)
    b=$(echo "${RESULTS[$mode,pgbouncer]}" | median)
    p=$(echo "${RESULTS[$mode,portcullis]}" | median)
    q=$(echo "${RESULTS[$mode,policy]}" | median)
    printf '| %s | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %.2f |\n' "$mode" "$d" "$b" "$p" "$q" \
      "$(echo "$p / $b" | bc -l)" "$(echo "$q / $b" | bc -l)" "$(echo "$q / $d" | bc -l)"
  done
  echo
  echo "The audit log's cost: the policy target again, with [audit] in each durability mode (a"
  echo "decision record per statement and an outcome record per result, on this machine's disk;"
  echo "sync: nothing goes upstream before its record is fdatasync'ed, group commit across the"
  echo "$CLIENTS clients)."
  echo
  echo "| mode | policy tps | audit sync tps | audit batch tps | audit async tps | sync / policy | batch / policy | async / policy |"
  echo "|---|---|---|---|---|---|---|---|"
  for mode in "${MODES[@]}"; do
    q=$(echo "${RESULTS[$mode,policy]}" | median)
    a=$(echo "${RESULTS[$mode,audit-sync]}" | median)
    b=$(echo "${RESULTS[$mode,audit-batch]}" | median)
    c=$(echo "${RESULTS[$mode,audit-async]}" | median)
    printf '| %s | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %.2f |\n' "$mode" "$q" "$a" "$b" "$c" \
      "$(echo "$a / $q" | bc -l)" "$(echo "$b / $q" | bc -l)" "$(echo "$c / $q" | bc -l)"
  done
  echo
  echo "Group commit (entries per fdatasync, over the whole run): sync ${BATCH[sync]}; batch ${BATCH[batch]}; async ${BATCH[async]}."
  printf 'Sync mode, from its /metrics: %.3f ms per durable append (write + fdatasync, under this load), %.2f decision records per append.\n' "$FSYNC_MS" "$PER_FSYNC"
  echo
  echo "Sync mode's cost is latency, not work: each statement waits for one durable append before"
  echo "it goes upstream (prepared executions do not: their decision was made durable at Parse),"
  echo "and each pgbench client waits for its statement before sending the next, so"
  echo "tps ~ clients / (time through the policy + wait for the append). With the append time above"
  echo "against roughly a millisecond per statement through the policy, no batching brings sync"
  echo "within 10 % on this disk; batch mode (records fsynced at most batch_ms apart) does."
  echo
  echo "Raw tps per round:"
  echo
  for mode in "${MODES[@]}"; do
    echo "- $mode: direct${RESULTS[$mode,direct]}; pgbouncer${RESULTS[$mode,pgbouncer]}; gate${RESULTS[$mode,portcullis]}; policy${RESULTS[$mode,policy]}; audit sync${RESULTS[$mode,audit-sync]}; audit batch${RESULTS[$mode,audit-batch]}; audit async${RESULTS[$mode,audit-async]}"
  done
  echo "<!-- pgbench:end -->"
} > "$SECTION"
# Replace only this script's section of $OUT, keeping the other benchmarks' sections.
python3 - "$OUT" "$SECTION" <<'PY'
import pathlib, re, sys
out, section = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).read_text()
text = out.read_text() if out.exists() else "# Benchmarks\n\n"
pattern = re.compile(r"<!-- pgbench:start.*?<!-- pgbench:end -->\n?", re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
out.write_text(text)
PY
rm -f "$SECTION"
cat "$OUT"
