"""The measuring half of bench/tpch.sh (which sets up the database and Portcullis, then runs
this with the repository's .venv): the 22 TPC-H queries against three targets, interleaved
round by round, median wall time per query (execute + fetch, in this process), the rows of the
views and of Portcullis compared query by query, and the BENCHMARKS.md section.

  direct      the base tables, as a superuser
  views       the policy as security_barrier views (schema sb), as a role that may read only them
  portcullis  the same policy enforced by Portcullis, as the agent

Exit status: 0 when every query ran on every target (timeouts allowed) and the rows of views
and Portcullis agreed wherever both finished; 1 otherwise (the section is written anyway).
"""

import argparse
import json
import math
import pathlib
import re
import statistics
import sys
import time

import psycopg
from psycopg import errors
from psycopg.types.string import TextLoader

TARGETS = ("direct", "views", "portcullis")
LABEL = {"direct": "direct", "views": "views", "portcullis": "Portcullis"}
# Every value is compared as PostgreSQL prints it (numeric as text, no float rounding).
TEXT_TYPES = (
    "bool", "int2", "int4", "int8", "oid", "numeric", "float4", "float8", "text", "varchar",
    "bpchar", "name", "date", "time", "timestamp", "timestamptz", "interval",
)


def connect(url, setup):
    conn = psycopg.connect(url, autocommit=True)
    for t in TEXT_TYPES:
        conn.adapters.register_loader(t, TextLoader)
    for statement in setup:
        conn.execute(statement)
    return conn


class Target:
    def __init__(self, name, url, setup):
        self.name, self.url, self.setup = name, url, setup
        self.conn = connect(url, setup)

    def run(self, sql):
        """('ok', ms, rows) | ('timeout', None, None) | ('error', None, message)."""
        if self.conn.closed:
            self.conn = connect(self.url, self.setup)
        start = time.perf_counter()
        try:
            cur = self.conn.execute(sql)
            rows = cur.fetchall() if cur.description is not None else []
        except errors.QueryCanceled:
            return "timeout", None, None
        except psycopg.Error as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "timeout" in message.lower() or "cancel" in message.lower():
                kind = "timeout"
            else:
                kind = "error"
            if self.conn.closed or isinstance(e, psycopg.OperationalError):
                try:
                    self.conn.close()
                finally:
                    self.conn = connect(self.url, self.setup)
            return kind, None, message
        return "ok", (time.perf_counter() - start) * 1000.0, rows


def sort_key(row):
    return tuple((v is None, "" if v is None else v) for v in row)


def compare(rows_a, rows_b, ordered):
    """(equal, detail)."""
    if ordered:
        if rows_a == rows_b:
            return True, ""
        if sorted(rows_a, key=sort_key) == sorted(rows_b, key=sort_key):
            return False, "the same rows in a different order"
    elif sorted(rows_a, key=sort_key) == sorted(rows_b, key=sort_key):
        return True, ""
    a, b = rows_a, rows_b
    if not ordered:
        a, b = sorted(a, key=sort_key), sorted(b, key=sort_key)
    detail = f"{len(rows_a)} rows over the views, {len(rows_b)} through Portcullis"
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            detail += f"; first difference at row {i + 1}: views {x!r} vs Portcullis {y!r}"
            break
    return False, detail


def check_policy(targets):
    """The views and Portcullis implement the same policy: customer and supplier read whole
    (filter and masks) agree row for row, every other table has the same number of rows, and
    the policy hides some customers and suppliers."""
    problems = []
    for table, key in (("customer", "c_custkey"), ("supplier", "s_suppkey")):
        sql = f"select * from {table} order by {key}"
        views = targets["views"].run(sql)
        proxy = targets["portcullis"].run(sql)
        direct = targets["direct"].run(f"select count(*) from {table}")
        if views[0] != "ok" or proxy[0] != "ok" or direct[0] != "ok":
            problems.append(f"{table}: views {views[0]} {views[2] if views[0] == 'error' else ''}"
                            f" / Portcullis {proxy[0]} {proxy[2] if proxy[0] == 'error' else ''}")
            continue
        equal, detail = compare(views[2], proxy[2], True)
        if not equal:
            problems.append(f"{table}: {detail}")
        total = int(direct[2][0][0])
        print(f"policy check: {table}: {len(proxy[2])} of {total} rows visible through Portcullis, "
              f"{'identical to' if equal else 'DIFFERENT FROM'} the views")
        if len(proxy[2]) >= total:
            problems.append(f"{table}: the policy hides no row")
    for table in ("nation", "region", "part", "partsupp", "orders", "lineitem"):
        counts = {n: t.run(f"select count(*) from {table}") for n, t in targets.items()}
        values = {n: (c[2][0][0] if c[0] == "ok" else c[0]) for n, c in counts.items()}
        if len(set(values.values())) != 1:
            problems.append(f"{table}: row counts differ: {values}")
    return problems


def fmt_ms(v):
    if v is None:
        return "n/a"
    if v == "timeout" or v == "error":
        return v
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def median(values):
    """Median of a round's results; a timeout counts as infinitely slow."""
    nums = [math.inf if v == "timeout" else v for v in values if v != "error"]
    if any(v == "error" for v in values) or not nums:
        return "error"
    m = statistics.median(nums)
    return "timeout" if math.isinf(m) else m


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--direct", required=True)
    p.add_argument("--views", required=True)
    p.add_argument("--portcullis", required=True)
    p.add_argument("--queries", required=True, help="directory of q01.sql ... q22.sql")
    p.add_argument("--only", default="", help="comma-separated query numbers (default: all)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per statement")
    p.add_argument("--sf", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--about", default="", help="a line on the build and generator")
    p.add_argument("--json", required=True)
    p.add_argument("--md", required=True)
    a = p.parse_args()

    qdir = pathlib.Path(a.queries)
    numbers = [int(n) for n in a.only.split(",") if n.strip()] or list(range(1, 23))
    queries = {n: (qdir / f"q{n:02d}.sql").read_text() for n in numbers}
    timeout_ms = int(a.timeout * 1000)
    setup = [f"SET statement_timeout = {timeout_ms}"]
    targets = {
        "direct": Target("direct", a.direct, setup),
        "views": Target("views", a.views, setup + ["SET search_path = sb, public"]),
        "portcullis": Target("portcullis", a.portcullis, setup),
    }

    problems = check_policy(targets)
    if problems:
        for pr in problems:
            print(f"POLICY CHECK FAILED: {pr}", file=sys.stderr)
        print("the views and Portcullis do not implement the same policy: not measuring",
              file=sys.stderr)
        return 1

    times = {(t, n): [] for t in TARGETS for n in numbers}
    rows = {}        # (target, query) -> rows of its first successful run
    messages = {}    # (target, query) -> error message
    timed_out = set()
    for r in range(a.rounds):
        for n in numbers:
            # Rotate the order of the targets from round to round.
            order = TARGETS[r % 3:] + TARGETS[:r % 3]
            for t in order:
                if (t, n) in timed_out:
                    times[(t, n)].append("timeout")
                    continue
                kind, ms, result = targets[t].run(queries[n])
                if kind == "ok":
                    times[(t, n)].append(ms)
                    rows.setdefault((t, n), result)
                    print(f"round {r + 1}  Q{n:02d}  {t:<10} {ms:10.1f} ms  {len(result)} rows",
                          flush=True)
                else:
                    times[(t, n)].append(kind)
                    if kind == "timeout":
                        timed_out.add((t, n))
                    else:
                        messages[(t, n)] = result
                    print(f"round {r + 1}  Q{n:02d}  {t:<10} {kind.upper()}"
                          f"{': ' + result if result else ''}", flush=True)

    failed = False
    table = []
    for n in numbers:
        med = {t: median(times[(t, n)]) for t in TARGETS}
        if ("views", n) in rows and ("portcullis", n) in rows:
            ordered = re.search(r"\border\s+by\b", queries[n], re.I) is not None
            equal, detail = compare(rows[("views", n)], rows[("portcullis", n)], ordered)
            if equal:
                eq = f"yes ({len(rows[('views', n)])})"
            else:
                eq = f"**NO**: {detail}"
                failed = True
                print(f"MISMATCH Q{n:02d}: {detail}", file=sys.stderr)
        else:
            eq = "n/a (" + ", ".join(
                f"{LABEL[t]} {med[t]}" for t in ("views", "portcullis") if (t, n) not in rows) + ")"
        for t in TARGETS:
            if (t, n) in messages:
                failed = True
                print(f"ERROR Q{n:02d} {t}: {messages[(t, n)]}", file=sys.stderr)
        table.append((n, med, eq))

    def ratio(x, y):
        if isinstance(x, float) and isinstance(y, float):
            return x / y
        return None

    # Geometric means over the queries every target finished; a timeout counts as the timeout
    # itself (so a ratio with a timed-out numerator is a lower bound).
    def as_num(v):
        return float(timeout_ms) if v == "timeout" else v

    pv, vd, pd = [], [], []
    lower_bound = False
    for n, med, _ in table:
        d, v, c = (as_num(med[t]) for t in TARGETS)
        if "error" in (d, v, c):
            continue
        lower_bound |= "timeout" in (med["portcullis"], med["views"], med["direct"])
        pv.append(c / v)
        vd.append(v / d)
        pd.append(c / d)
    g_pv, g_vd, g_pd = geomean(pv), geomean(vd), geomean(pd)

    slow = []
    for n, med, _ in table:
        c, v = med["portcullis"], med["views"]
        if c in ("timeout", "error") and v not in ("timeout", "error"):
            slow.append(f"Q{n:02d} {c}")
        elif isinstance(c, float) and isinstance(v, float) and c / v > 1.5:
            slow.append(f"Q{n:02d} {c / v:.2f}×")
    per_query_met = not slow
    geomean_met = len(pv) == len(numbers) and g_pv <= 1.1

    out = []
    out.append("<!-- tpch:start (written by bench/tpch.sh) -->")
    out.append("## TPC-H: the 22 queries directly, over security_barrier views, and through Portcullis")
    out.append("")
    out.append(f"Generated by `{a.command}` on {time.strftime('%Y-%m-%d', time.gmtime())}"
               f" ({a.about}).")
    out.append(f"Scale factor {a.sf}, {a.rounds} interleaved round(s) (the order of the three targets"
               " rotates each round), median wall time per query in ms: execute and fetch every row,"
               " in one psycopg 3 client, each target over TCP on this machine, one connection each;"
               f" statement timeout {a.timeout:g} s (a query that timed out is not run again on that"
               " target).")
    out.append("*Direct*: a superuser over the base tables (no policy: more rows than the other two"
               " see). *Views*: the policy written by hand as `security_barrier` views"
               " (`bench/tpch/views.sql`), queried with `search_path = sb, public` by a role that may"
               " read only them. *Portcullis*: the same policy (`bench/tpch/policy/`) enforced by"
               " Portcullis, as its agent; upstream a non-superuser with SELECT on the tables.")
    out.append("The policy: customers and suppliers of 13 of the 25 nations (`c_nationkey` /"
               " `s_nationkey IN (...)`), `c_address` and `s_address` redacted (`'***'`),"
               " `c_comment` NULL; nation, region, part, partsupp, orders and lineitem whole."
               " *Rows equal*: the rows over the views and through Portcullis, compared as text"
               " (in order where the query has ORDER BY), with their number.")
    out.append("")
    out.append("| query | direct ms | views ms | Portcullis ms | Portcullis ÷ views | rows equal |")
    out.append("|---|---|---|---|---|---|")
    for n, med, eq in table:
        r = ratio(med["portcullis"], med["views"])
        if r is not None:
            rs = f"{r:.2f}"
            if r > 1.5:
                rs = f"**{rs}**"
        elif med["portcullis"] == "timeout" and isinstance(med["views"], float):
            rs = f"**≥ {timeout_ms / med['views']:.0f}**"
        else:
            rs = "n/a"
        out.append(f"| Q{n:02d} | {fmt_ms(med['direct'])} | {fmt_ms(med['views'])} |"
                   f" {fmt_ms(med['portcullis'])} | {rs} | {eq} |")
    out.append("")
    note = " (a timeout counted as the timeout itself: a lower bound)" if lower_bound else ""
    out.append(f"Geometric means over {len(pv)} queries{note}: Portcullis ÷ views **{g_pv:.2f}**,"
               f" views ÷ direct **{g_vd:.2f}**, Portcullis ÷ direct **{g_pd:.2f}**.")
    out.append("")
    out.append("Targets (from the issue):")
    out.append("")
    out.append(f"- no query slower than 1.5× the views: **{'met' if per_query_met else 'missed'}**"
               + ("" if per_query_met else f" ({', '.join(slow)})"))
    out.append(f"- geometric mean ≤ 1.1× the views: **{'met' if geomean_met else 'missed'}**"
               f" ({g_pv:.2f}×{'' if len(pv) == len(numbers) else f', over {len(pv)} of {len(numbers)} queries'})")
    if messages:
        out.append("")
        out.append("Errors:")
        out.append("")
        for (t, n), m in sorted(messages.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            out.append(f"- Q{n:02d}, {LABEL[t]}: `{m}`")
    out.append("")
    out.append("Raw ms per round (direct / views / Portcullis):")
    out.append("")
    for n in numbers:
        parts = [" ".join(fmt_ms(v) for v in times[(t, n)]) for t in TARGETS]
        out.append(f"- Q{n:02d}: {' / '.join(parts)}")
    out.append("<!-- tpch:end -->")
    pathlib.Path(a.md).write_text("\n".join(out) + "\n")

    pathlib.Path(a.json).write_text(json.dumps({
        "sf": a.sf, "rounds": a.rounds, "timeout_s": a.timeout,
        "times_ms": {f"q{n:02d}": {t: times[(t, n)] for t in TARGETS} for n in numbers},
        "median_ms": {f"q{n:02d}": med for n, med, _ in table},
        "rows_equal": {f"q{n:02d}": eq for n, _, eq in table},
        "errors": {f"q{n:02d} {t}": m for (t, n), m in messages.items()},
        "geomean": {"portcullis_views": g_pv, "views_direct": g_vd, "portcullis_direct": g_pd},
        "targets": {"per_query_1_5x": per_query_met, "geomean_1_1x": geomean_met},
    }, indent=2, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
