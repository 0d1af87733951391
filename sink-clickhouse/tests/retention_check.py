#!/usr/bin/env python3
"""Checks the sink's retention TTL on a CURRENT ClickHouse engine, in-process via chDB (python
`chdb`), where TTL exists (the local 18.16 has none). Run by tests/retention.rs, which passes
the statement the sink generates from a policy (sink_clickhouse::retention):

    RETENTION_TTL_STATEMENT='ALTER TABLE audit_events MODIFY TTL …' \
        python3 sink-clickhouse/tests/retention_check.py

Applies every migration (base + upgrades), inserts rows of several classes and ages (seq = row
id), marks the held ones as `auditctl hold on` does (ALTER UPDATE legal_hold = 1), applies the
statement, forces the TTL with OPTIMIZE … FINAL, and prints one JSON object: the seqs left,
the table's TTL clause as the server shows it, and the policy row read back from
audit_retention_policy (the table the sink records applied policies in). The caller decides
what must be left. Exits non-zero on any server error.
"""

import json
import os
import pathlib
import sys
import tempfile

from chdb import session as chs

HERE = pathlib.Path(__file__).resolve().parent.parent
MIGRATIONS = sorted((HERE / "migrations").glob("*.sql")) + sorted(
    (HERE / "migrations" / "upgrades").glob("*.sql")
)

# (seq, category, age in days, held); ages are relative to now() on the engine.
ROWS = [
    (1, "TELEMETRY", 200, False),  # older than 90d: deleted
    (2, "TELEMETRY", 10, False),  # fresh: kept
    (3, "TELEMETRY", 200, True),  # old but held: kept
    (4, "USER_INTERACTION", 8 * 366, False),  # older than 7y: deleted
    (5, "USER_INTERACTION", 200, False),  # younger than 7y: kept
    (6, "SECURITY", 30 * 366, False),  # forever: kept
    (7, "USER_INTERACTION", 8 * 366, True),  # old but held: kept
    (8, "GOVERNANCE", 8 * 366, False),  # default class rule: deleted
]


def statements(sql: str):
    body = "\n".join(l for l in sql.splitlines() if not l.strip().startswith("--"))
    return [s.strip().rstrip(";") for s in body.split(";\n") if s.strip().rstrip(";").strip()]


def main() -> int:
    ttl = os.environ.get("RETENTION_TTL_STATEMENT", "").strip()
    if not ttl:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        s = chs.Session(tmp)

        def q(sql):
            try:
                return s.query(sql, "TSV").bytes().decode()
            except Exception as e:  # chDB raises its own error types
                raise SystemExit(f"{e}\n-- in --\n{sql}") from None

        q("CREATE DATABASE IF NOT EXISTS audit")
        q("USE audit")
        for f in MIGRATIONS:
            for stmt in statements(f.read_text()):
                q(stmt)
        values = ", ".join(
            f"(0, {seq}, '{seq:064x}', '{cat}', now() - toIntervalDay({age}), "
            f"toInt64(toUnixTimestamp(now() - toIntervalDay({age}))) * 1000000)"
            for seq, cat, age, _ in ROWS
        )
        q(
            "INSERT INTO audit_events (chain_partition, seq, hash, category, event_time, "
            f"event_time_us) VALUES {values}"
        )
        held = ", ".join(str(seq) for seq, _, _, h in ROWS if h)
        q(
            f"ALTER TABLE audit_events UPDATE legal_hold = 1 WHERE chain_partition = 0 "
            f"AND seq IN ({held}) SETTINGS mutations_sync = 1"
        )
        q(ttl)
        q("OPTIMIZE TABLE audit_events FINAL")
        left = [int(x) for x in q("SELECT seq FROM audit_events ORDER BY seq").split()]
        create = q(
            "SELECT create_table_query FROM system.tables "
            "WHERE database = 'audit' AND name = 'audit_events'"
        )
        q(
            "INSERT INTO audit_retention_policy VALUES "
            "(1, 'clickhouse', 'default=7y', 'x', 'retention-1', '26.9')"
        )
        policy = q(
            "SELECT policy FROM audit_retention_policy WHERE store = 'clickhouse' "
            "ORDER BY applied_at_us DESC LIMIT 1"
        ).strip()
        ttl_clause = create.split(" TTL ", 1)[1].split(" SETTINGS ")[0] if " TTL " in create else ""
        print(
            json.dumps(
                {
                    "left": left,
                    "ttl": ttl_clause,
                    "policy": policy,
                    "version": q("SELECT version()").strip(),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
