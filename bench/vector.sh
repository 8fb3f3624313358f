#!/usr/bin/env bash
# Filtered vector search: Qdrant's engine (qdrant-edge) called directly vs through Portcullis's
# Qdrant API, on copies of one store (POINTS points of DIMS dimensions, HNSW-indexed, ten
# tenants), the same query vectors, and the same filter (the one the shim injects, read back
# from its audit record), interleaved round by round in one run. Through the shim: without the
# audit log, and with it in sync and batch mode. Writes the medians and ratios to BENCHMARKS.md.
#
#   bash bench/vector.sh
#   POINTS=100000 DIMS=384 ROUNDS=9 SECONDS_PER_RUN=8 CLIENTS=8 bash bench/vector.sh
set -euo pipefail
cd "$(dirname "$0")/.."
POINTS="${POINTS:-100000}"
DIMS="${DIMS:-384}"
ROUNDS="${ROUNDS:-9}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-8}"
CLIENTS="${CLIENTS:-8}"
OUT="${OUT:-BENCHMARKS.md}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}"

BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release -p proxy --locked
cargo build --release -p connectors --example vector_bench --locked
PORTCULLIS="$CARGO_TARGET_DIR/release/portcullis"
LOAD="$CARGO_TARGET_DIR/release/examples/vector_bench"

WORK=$(mktemp -d /tmp/portcullis-vbench-XXXXXX)
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Portcullis needs a PostgreSQL upstream to start (its [postgres] section); the bench does not
# query it.
PG_PORT=$(free_port)
"${AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres -A trust --auth-host=scram-sha-256 -N >/dev/null
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w \
  -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
"$BIN/psql" -X -q -h "$WORK" -p "$PG_PORT" -U postgres -c "CREATE ROLE bench LOGIN PASSWORD 'bench-pw'" postgres

echo "seeding $POINTS points of $DIMS dimensions"
"$LOAD" seed "$WORK/store" "$POINTS" "$DIMS"
TARGETS=(direct shim audit-sync audit-batch)
for t in "${TARGETS[@]}"; do cp -r "$WORK/store" "$WORK/store-$t"; done
"$PORTCULLIS" audit keygen --node-id vbench --out "$WORK/audit.key" >/dev/null 2>&1

declare -A PORT
start_shim() { # name, extra config
  local name=$1 extra=$2 port
  port=$(free_port); PORT[$name]=$(free_port)
  cat > "$WORK/$name.toml" <<TOML
[postgres]
listen = "127.0.0.1:$port"
upstream = "postgres://bench:bench-pw@127.0.0.1:$PG_PORT/postgres"
[policies]
dir = "$PWD/bench/vector-policy"
[vector]
listen = "127.0.0.1:${PORT[$name]}"
store = "$WORK/store-$name"
$extra
[[agents]]
id = "bench"
secret = "bench-pw"
TOML
  RUST_LOG=warn "$PORTCULLIS" serve --config "$WORK/$name.toml" 2>"$WORK/$name.log" & PIDS+=($!)
}
start_shim shim ""
for mode in sync batch; do
  start_shim "audit-$mode" "[audit]
dir = \"$WORK/audit-$mode\"
key_file = \"$WORK/audit.key\"
node_id = \"vbench\"
mode = \"$mode\""
done
for t in shim audit-sync audit-batch; do
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:${PORT[$t]}/" >/dev/null && break; sleep 0.2; done
done

# One query through the audited shim: its record holds the filter the shim injected, which the
# direct runs use; and the policy is really enforced (only tenant 1 comes back).
QUERY="{\"query\": [$(python3 -c "print(','.join(['0.1']*$DIMS))")], \"limit\": 50, \"with_payload\": true}"
TENANTS=$(curl -sf -H 'api-key: bench:bench-pw' -H 'content-type: application/json' \
  -d "$QUERY" "http://127.0.0.1:${PORT[audit-sync]}/collections/bench_docs/points/query" \
  | python3 -c 'import json,sys; print(sorted({p["payload"]["tenant_id"] for p in json.load(sys.stdin)["result"]["points"]}))')
[ "$TENANTS" = "[1]" ] || { echo "the bench policy is not enforced: tenants $TENANTS" >&2; exit 1; }
FILTER=$(python3 - "$WORK/audit-sync/entries" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("protocol") == "qdrant" and e.get("decision") == "rewrite":
        print(json.dumps(e["rewritten"][0]["filter"]))
        break
PY
)
echo "injected filter: $FILTER"

declare -A TPS P50 P99 RATIO ROUND_TPS
for round in $(seq 1 "$ROUNDS"); do
  # The order rotates each round, so no target always runs first (or right after another).
  k=$(( (round - 1) % ${#TARGETS[@]} ))
  for t in "${TARGETS[@]:$k}" "${TARGETS[@]:0:$k}"; do
    if [ "$t" = direct ]; then
      line=$("$LOAD" direct "$WORK/store-direct" "$FILTER" "$SECONDS_PER_RUN" "$CLIENTS" "$DIMS")
    else
      line=$("$LOAD" shim "http://127.0.0.1:${PORT[$t]}" "bench:bench-pw" "$SECONDS_PER_RUN" "$CLIENTS" "$DIMS")
    fi
    echo "round $round  $t  $line"
    TPS[$t]="${TPS[$t]:-} $(echo "$line" | sed 's/.*tps=\([^ ]*\).*/\1/')"
    P50[$t]="${P50[$t]:-} $(echo "$line" | sed 's/.*p50_ms=\([^ ]*\).*/\1/')"
    P99[$t]="${P99[$t]:-} $(echo "$line" | sed 's/.*p99_ms=\([^ ]*\).*/\1/')"
    ROUND_TPS[$t]=$(echo "$line" | sed 's/.*tps=\([^ ]*\).*/\1/')
  done
  # Each target against direct in the same round: the machine's drift cancels out.
  for t in "${TARGETS[@]}"; do
    RATIO[$t]="${RATIO[$t]:-} $(echo "${ROUND_TPS[$t]} / ${ROUND_TPS[direct]}" | bc -l)"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
D=$(echo "${TPS[direct]}" | median)
SECTION=$(mktemp)
{
  echo "<!-- vector:start (written by bench/vector.sh) -->"
  echo "## Vector search: Qdrant's engine directly vs through Portcullis's Qdrant API"
  echo
  echo "Generated by \`bash bench/vector.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m))."
  echo "$POINTS points of $DIMS dimensions (cosine, HNSW-indexed, a payload index on tenant_id),"
  echo "ten tenants; the agent may search tenant 1 (a tenth of the points). Queries: a random"
  echo "vector, limit 10, with payload; $CLIENTS concurrent clients, ${SECONDS_PER_RUN}s per run, $ROUNDS"
  echo "interleaved rounds (the order rotating each round), medians. *Direct*: \`Embedded::call\` in process with the filter the shim"
  echo "injects (read back from its audit record), so both do the same search. *Shim*: HTTP/1.1"
  echo "keep-alive through \`portcullis serve\` ([vector] over a copy of the same store): API-key"
  echo "check (cached), policy (cached), request rewriting, payload projection, JSON both ways."
  echo "The HTTP load generator keeps one connection per client and writes pre-serialized requests"
  echo "(as \`wrk\` does; it shares the cores with the shim), checking every reply's status and"
  echo "\`points\`; both modes cycle through the same query vectors, made before the clock starts."
  echo
  echo "| target | tps | p50 ms | p99 ms | tps / direct (medians) | median of per-round ratios |"
  echo "|---|---|---|---|---|---|"
  for t in "${TARGETS[@]}"; do
    tps=$(echo "${TPS[$t]}" | median)
    printf '| %s | %.0f | %.2f | %.2f | %.2f | %.2f |\n' "$t" "$tps" "$(echo "${P50[$t]}" | median)" \
      "$(echo "${P99[$t]}" | median)" "$(echo "$tps / $D" | bc -l)" "$(echo "${RATIO[$t]}" | median)"
  done
  echo
  echo "Raw tps per round: $(for t in "${TARGETS[@]}"; do printf '%s%s; ' "$t" "${TPS[$t]}"; done)"
  echo "<!-- vector:end -->"
} > "$SECTION"
python3 - "$OUT" "$SECTION" <<'PY'
import pathlib, re, sys
out, section = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).read_text()
text = out.read_text() if out.exists() else "# Benchmarks\n\n"
pattern = re.compile(r"<!-- vector:start.*?<!-- vector:end -->\n?", re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
out.write_text(text)
PY
rm -f "$SECTION"
sed -n '/<!-- vector:start/,/<!-- vector:end/p' "$OUT"
