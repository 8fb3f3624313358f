#!/usr/bin/env bash
# Memory: Portcullis's resident memory (VmRSS of the proxy process) at rest, per idle session
# (1, 100, 1,000 and SESSIONS sessions, each logged in and having run one policy-enforced query,
# then left idle), and while one session sends STATEMENTS distinct statements, each a cold
# rewrite that the rewrite cache keeps (bounded by bytes: the resident size must level off).
# Writes the numbers to BENCHMARKS.md.
#
#   bash bench/memory.sh
#   SESSIONS=5000 STATEMENTS=200000 bash bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS="${SESSIONS:-5000}"
STATEMENTS="${STATEMENTS:-200000}"
OUT="${OUT:-BENCHMARKS.md}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}"

[ -x .venv/bin/python ] || { echo ".venv missing: run bash tests/setup.sh" >&2; exit 1; }
# Every session holds a client socket and an upstream one in the proxy, and PostgreSQL a
# backend for each.
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((2 * SESSIONS + 100)) ] || {
  echo "open files limit $(ulimit -n) is too low for $SESSIONS sessions" >&2; exit 1; }
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release -p proxy --locked
PORTCULLIS="$CARGO_TARGET_DIR/release/portcullis"

WORK=$(mktemp -d /tmp/portcullis-mem-XXXXXX)
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

"${AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres -A trust --auth-host=scram-sha-256 -N >/dev/null
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w -o "-p $PG_PORT -k $WORK \
  -c listen_addresses=127.0.0.1 -c max_connections=$((SESSIONS + 20)) -c shared_buffers=64MB \
  -c fsync=off" start >/dev/null
PSQL=("$BIN/psql" -X -q -h "$WORK" -p "$PG_PORT" -U postgres)
"${PSQL[@]}" -c "CREATE ROLE bench LOGIN PASSWORD 'bench-pw'" postgres
"${PSQL[@]}" -c "CREATE DATABASE bench" postgres
"$BIN/pgbench" -i -q -s 1 -h "$WORK" -p "$PG_PORT" -U postgres bench >/dev/null 2>&1
"${PSQL[@]}" -c "GRANT SELECT ON ALL TABLES IN SCHEMA public TO bench" bench

# The pgbench policy (bench/policy): every query on pgbench_accounts is rewritten.
mkdir -p "$WORK/policy"
"$PORTCULLIS" schema import --upstream "postgres://bench:bench-pw@127.0.0.1:$PG_PORT/bench" \
  --out "$WORK/policy/tables.cedarschema" 2>/dev/null
cp bench/policy/* "$WORK/policy/"
cat > "$WORK/portcullis.toml" <<TOML
[postgres]
listen = "127.0.0.1:$PROXY_PORT"
upstream = "postgres://bench:bench-pw@127.0.0.1:$PG_PORT/bench"
[policies]
dir = "$WORK/policy"
[[agents]]
id = "bench"
secret = "bench-pw"
TOML
RUST_LOG=warn "$PORTCULLIS" serve --config "$WORK/portcullis.toml" 2>"$WORK/portcullis.log" & PIDS+=($!)
PROXY_PID=$!
for _ in $(seq 1 100); do
  "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PROXY_PORT" && break; sleep 0.2
done

RESULT=$(mktemp)
.venv/bin/python - "$PROXY_PID" "$PROXY_PORT" "$SESSIONS" "$STATEMENTS" > "$RESULT" <<'PY'
import asyncio, sys, time
import asyncpg

pid, port, sessions, statements = (int(a) for a in sys.argv[1:5])
url = f"postgresql://bench:bench-pw@127.0.0.1:{port}/bench"

def rss_kb():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

async def settle():
    # Freed memory goes back to the allocator, not always to the kernel: sample after a pause.
    await asyncio.sleep(2)
    return rss_kb()

async def session():
    c = await asyncpg.connect(url, statement_cache_size=0)
    # Policy-enforced: the fenced, filtered rewrite (and its cache entry) is made once.
    assert await c.fetchval("SELECT abalance FROM pgbench_accounts WHERE aid = 1") is not None
    return c

async def main():
    warm = await session()
    base = await settle()
    print(f"rest {base}")
    held = []
    for target in (1, 100, 1000, sessions):
        while len(held) < target:
            batch = min(200, target - len(held))
            held += await asyncio.gather(*(session() for _ in range(batch)))
        print(f"sessions {target} {await settle()}")
    for c in held:
        await c.close()
    print(f"closed {await settle()}")
    started = time.monotonic()
    marks = {statements // 4, statements // 2, 3 * statements // 4, statements}
    for i in range(1, statements + 1):
        # A constant in the select list is pinned (not a slot of the shape cache): each text is
        # a cold rewrite and an entry of its own in the rewrite cache.
        await warm.execute(f"SELECT abalance, {i} AS n FROM pgbench_accounts WHERE aid = 1")
        if i in marks:
            print(f"statements {i} {await settle()}")
    print(f"rate {statements / (time.monotonic() - started):.0f}")

asyncio.run(main())
PY
cat "$RESULT"

kb() { awk -v k="$1" '$1 == k {print $NF; exit}' "$RESULT"; }
at() { awk -v k="$1" -v n="$2" '$1 == k && $2 == n {print $3; exit}' "$RESULT"; }
mb() { echo "scale=1; $1 / 1024" | bc; }
REST=$(kb rest)
SECTION=$(mktemp)
{
  echo "<!-- memory:start (written by bench/memory.sh) -->"
  echo "## Memory: resident size of the proxy at rest, per idle session, and with many statements"
  echo
  echo "Generated by \`SESSIONS=$SESSIONS STATEMENTS=$STATEMENTS bash bench/memory.sh\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -m))."
  echo "\`portcullis serve\` (release) enforcing bench/policy on pgbench tables (scale 1); VmRSS of"
  echo "the proxy process, sampled 2 s after each step. A session is an asyncpg connection that"
  echo "logged in (SCRAM) and ran one policy-enforced query, then idles (each holds an upstream"
  echo "connection of its own)."
  echo
  echo "| state | RSS MB | per session KB (over rest) |"
  echo "|---|---|---|"
  echo "| at rest (one session) | $(mb "$REST") | |"
  for n in 1 100 1000 "$SESSIONS"; do
    r=$(at sessions "$n")
    echo "| $n more idle sessions | $(mb "$r") | $(( (r - REST) / n )) |"
  done
  echo "| all closed again | $(mb "$(kb closed)") | |"
  echo
  echo "Then one session sends $STATEMENTS distinct statements (simple protocol, a constant in the"
  echo "select list, so each is a cold rewrite with an entry of its own; $(kb rate) statements/s). The"
  echo "rewrite cache is bounded at 64 MB by its own weighing (key text, rewritten text, audit basis,"
  echo "per-entry overhead):"
  echo
  echo "| statements sent | RSS MB |"
  echo "|---|---|"
  for n in $((STATEMENTS / 4)) $((STATEMENTS / 2)) $((3 * STATEMENTS / 4)) "$STATEMENTS"; do
    echo "| $n | $(mb "$(at statements "$n")") |"
  done
  echo "<!-- memory:end -->"
} > "$SECTION"
python3 - "$OUT" "$SECTION" <<'PY'
import pathlib, re, sys
out, section = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).read_text()
text = out.read_text() if out.exists() else "# Benchmarks\n\n"
pattern = re.compile(r"<!-- memory:start.*?<!-- memory:end -->\n?", re.S)
text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
out.write_text(text)
PY
rm -f "$SECTION" "$RESULT"
sed -n '/<!-- memory:start/,/<!-- memory:end/p' "$OUT"
