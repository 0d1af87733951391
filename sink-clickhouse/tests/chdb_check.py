#!/usr/bin/env python3
"""Checks the sink's DDL and query recipes against a CURRENT ClickHouse engine, in-process via
chDB (PyPI `chdb-core`, no server needed), complementing the Rust tests that run them on the
local 18.16 server (auditctl/tests/query_recipes.rs checks every recipe's answer there).

    python3 sink-clickhouse/tests/chdb_check.py
    python3 sink-clickhouse/tests/chdb_check.py --compare http://127.0.0.1:8123

Applies every migration (base + version-gated upgrades, which all apply on a current engine)
twice, inserts a small corpus with the same column list the sink uses (two partitions, a
duplicated row, denials, failures, escalations and approvals, costs, AI fields, target
metadata, departments), applies the migrations once more (the report views' backfill over rows
they already hold must change nothing), and runs each recipe in queries/ with its {name:Type}
parameters bound server-side (SET param_…). Every recipe must return rows.

With --compare URL, the same corpus goes into a fresh database on that server (the local
18.16: base migrations only, `ADD COLUMN IF NOT EXISTS` run the way the sink's migration runner
runs it there) and every recipe must give the same rows on both engines (parameters there are
substituted as literals: 18.16 has no query parameters; the values are this script's own).
Exits non-zero on the first failure.
"""

import pathlib
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid

from chdb import session as chs

HERE = pathlib.Path(__file__).resolve().parent.parent
BASE = sorted((HERE / "migrations").glob("*.sql"))
UPGRADES = sorted((HERE / "migrations" / "upgrades").glob("*.sql"))
MIGRATIONS = BASE + UPGRADES
QUERIES = sorted((HERE / "queries").glob("*.sql"))

PARAMS = {
    "from": "2024-06-01 00:00:00",
    "to": "2024-06-03 00:00:00",
    "trace_id": "trace-1",
    "actor_id": "user-1",
    "limit": "100",
    "partition": "0",
    "request_id": "req-2",
    "target_id": "srv-1",
    "outcome": "FAILURE",
}
TYPES = [
    "infrastructure_request",
    "request_blocked",
    "request_escalated",
    "request_approved",
    "response_escalated",
    "request_rejected",
    "deploy_service",
]


def statements(sql: str):
    body = "\n".join(l for l in sql.splitlines() if not l.strip().startswith("--"))
    return [s.strip().rstrip(";") for s in body.split(";\n") if s.strip().rstrip(";").strip()]


def corpus_rows():
    """VALUES tuples of the corpus (event i in partition i % 2), plus one duplicated row."""
    rows = []
    for i in range(40):
        p, seq = i % 2, i // 2 + 1
        t = 1_717_200_000 + i * 4000 + i
        outcome = "DENIED" if i % 5 == 2 else "FAILURE" if i % 7 == 6 else "SUCCESS"
        team = "NULL" if i % 5 == 4 else f"'team-{i % 3}'"
        cc = "NULL" if i % 5 == 4 or i % 3 == 2 else f"'CC-{i % 3}'"
        result = []
        if i % 3 == 0:
            result.append(f'"estimatedCost":{10.5 * (i + 1)}')
        if i % 6 == 0:
            result.append(f'"deploymentId":"dep-{i // 12}"')
        result_json = "'{" + ",".join(result) + "}'" if result else "NULL"
        error = f"'{['timeout', 'quota'][i % 2]}'" if outcome == "FAILURE" else "NULL"
        meta = (
            f"'{{\"_unmapped\":{{\"target\":{{\"metadata\":{{\"region\":\"eu-{i % 3}\"}}}}}}}}'"
            if i % 2 == 0
            else "NULL"
        )
        dept = "['audit.enrich.department']" if i % 4 < 2 else "[]"
        dept_v = f"['{['eng', 'finance'][i % 4]}']" if i % 4 < 2 else "[]"
        ai = (
            f"1, '{['model-a', 'model-b'][i % 3 % 2]}', 'planner', {100 + i}, {10 + i}, "
            f"{0.5 + i / 100}"
            if i % 4 == 1
            else "0, NULL, NULL, NULL, NULL, NULL"
        )
        rows.append(
            f"({p}, {seq}, '{i:064x}', {t * 1_000_000}, toDateTime({t}, 'UTC'), "
            f"'{TYPES[i % len(TYPES)]}', 'USER_INTERACTION', 'INFO', '{outcome}', 'USER', "
            f"'user-{i % 4}', {team}, {cc}, 'trace-{i // 5}', 'req-{i // 3}', "
            f"'{['gateway', 'policy_engine'][i % 2]}', 'api_server', 'srv-{i % 4}', "
            f"{result_json}, {error}, {meta}, {dept}, {dept_v}, {ai})"
        )
    rows.append(rows[10])
    return rows


INSERT = (
    "INSERT INTO audit_events (chain_partition, seq, hash, event_time_us, event_time, "
    "event_type, category, severity, outcome, actor_type, actor_id, team_id, cost_center, "
    "trace_id, request_id, source_component, target_type, target_id, result_json, "
    "action_error, metadata_json, attribute_keys, attribute_values, has_ai, ai_model, "
    "ai_agent_type, ai_prompt_tokens, ai_completion_tokens, ai_confidence) VALUES "
)


class Chdb:
    name = "chDB"

    def __init__(self, tmp):
        self.s = chs.Session(tmp)
        self.s.query("CREATE DATABASE IF NOT EXISTS audit")
        self.s.query("USE audit")

    def q(self, sql):
        return self.s.query(sql, "TSV").bytes().decode()

    def migrate(self):
        for f in MIGRATIONS:
            for stmt in statements(f.read_text()):
                self.q(stmt)

    def recipe(self, sql, names):
        for n in names:
            self.q(f"SET param_{n} = '{PARAMS[n]}'")
        return self.q(sql)


class Server:
    """A ClickHouse server over HTTP (the local 18.16)."""

    def __init__(self, url):
        self.url = url.rstrip("/")
        self.db = f"chdb_compare_{uuid.uuid4().hex}"
        self.name = f"server {url}"
        self.post(f"CREATE DATABASE {self.db}", db="default")
        self.version = self.post("SELECT version()").strip()

    def post(self, sql, db=None):
        qs = urllib.parse.urlencode({"database": db or self.db})
        req = urllib.request.Request(f"{self.url}/?{qs}", data=sql.encode())
        try:
            return urllib.request.urlopen(req).read().decode()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{e.read().decode()[:400]}\n{sql}") from None

    q = post

    def migrate(self):
        major = int(self.version.split(".")[0])
        for f in BASE if major < 21 else MIGRATIONS:
            for stmt in statements(f.read_text()):
                m = re.match(
                    r"ALTER TABLE (\w+)\s+ADD COLUMN IF NOT EXISTS (\w+)", stmt, re.S
                )
                if m and major < 20:
                    have = self.post(
                        "SELECT count() FROM system.columns WHERE database = currentDatabase() "
                        f"AND table = '{m[1]}' AND name = '{m[2]}'"
                    ).strip()
                    if have != "0":
                        continue
                    stmt = stmt.replace("IF NOT EXISTS ", "", 1)
                self.post(stmt)

    def recipe(self, sql, names):
        def lit(m):
            name, ty = m[1], m[2]
            v = PARAMS[name]
            if ty in ("UInt64", "Int64"):
                return v
            if ty == "DateTime":
                return f"toDateTime('{v}', 'UTC')"
            return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

        body = "\n".join(l for l in sql.splitlines() if not l.strip().startswith("--"))
        return self.post(re.sub(r"\{(\w+):(\w+)\}", lit, body))

    def drop(self):
        self.post(f"DROP DATABASE IF EXISTS {self.db}", db="default")


def load(e):
    e.migrate()
    e.migrate()
    e.q(INSERT + ", ".join(corpus_rows()))
    e.q(
        "INSERT INTO audit_checkpoints (chain_partition, seq, key_id, time_us, time) "
        "VALUES (0, 6, 'k', 1717300000000000, toDateTime(1717300000, 'UTC'))"
    )
    # The report views got the rows through their materialized views; applying the
    # migrations again (their backfill INSERT … SELECT re-adds every row) changes nothing.
    e.migrate()


def results(e):
    out = {}
    for q in QUERIES:
        sql = q.read_text()
        names = list(dict.fromkeys(re.findall(r"\{(\w+):\w+\}", sql)))
        out[q.name] = e.recipe(sql, names)
    return out


def main() -> int:
    compare = None
    if len(sys.argv) == 3 and sys.argv[1] == "--compare":
        compare = sys.argv[2]
    elif len(sys.argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        c = Chdb(tmp)
        load(c)
        got = c.q("SELECT target_metadata, department FROM audit_events WHERE seq = 1 AND chain_partition = 0")
        assert got.strip() == '{"region":"eu-0"}\teng', got
        got = c.q("SELECT uniqExactMerge(events) FROM report_activity_daily").strip()
        assert got == "40", got
        got = c.q(
            "SELECT count() FROM (SELECT 1 FROM report_violations LIMIT 1 BY chain_partition, seq)"
        ).strip()
        want = c.q(
            "SELECT count() FROM (SELECT 1 FROM audit_events WHERE outcome = 'DENIED' OR "
            "match(event_type, '_(blocked|escalated)$') LIMIT 1 BY chain_partition, seq)"
        ).strip()
        assert got == want and got != "0", (got, want)
        mine = results(c)
        for name, out in mine.items():
            print(f"{name}: {len(out.splitlines())} rows")
            if not out.strip():
                print(f"{name}: no rows", file=sys.stderr)
                return 1
        if compare:
            srv = Server(compare)
            try:
                load(srv)
                theirs = results(srv)
            finally:
                srv.drop()
            bad = 0
            for name in mine:
                a, b = mine[name].splitlines(), theirs[name].splitlines()
                if a != b:
                    bad += 1
                    print(f"{name}: chDB and {srv.version} differ:", file=sys.stderr)
                    for x, y in zip(a, b):
                        if x != y:
                            print(f"  chDB:   {x}\n  server: {y}", file=sys.stderr)
                            break
                    if len(a) != len(b):
                        print(f"  rows: {len(a)} vs {len(b)}", file=sys.stderr)
            if bad:
                return 1
            print(f"every recipe gives the same rows on chDB and ClickHouse {srv.version}")
    print("chDB check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
