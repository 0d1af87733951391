#!/usr/bin/env python3
"""Checks the sink's DDL and query recipes against a CURRENT ClickHouse engine, in-process via
chDB (PyPI `chdb-core`, no server needed), complementing the Rust tests that run them on the
local 18.16 server.

    python3 sink-clickhouse/tests/chdb_check.py

Applies every migration (base + version-gated upgrades, which all apply on a current engine)
twice, inserts a few rows with the same column list the sink uses, and runs each recipe in
queries/ with its {name:Type} parameters bound server-side (SET param_…). Exits non-zero on
the first failure.
"""

import pathlib
import re
import sys
import tempfile

from chdb import session as chs

HERE = pathlib.Path(__file__).resolve().parent.parent
MIGRATIONS = sorted((HERE / "migrations").glob("*.sql")) + sorted(
    (HERE / "migrations" / "upgrades").glob("*.sql")
)
QUERIES = sorted((HERE / "queries").glob("*.sql"))

PARAMS = {
    "from": "2024-06-01 00:00:00",
    "to": "2024-06-02 00:00:00",
    "trace_id": "trace-A",
    "actor_id": "user-123",
    "limit": "100",
}


def statements(sql: str):
    body = "\n".join(l for l in sql.splitlines() if not l.strip().startswith("--"))
    return [s.strip() for s in body.split(";\n") if s.strip().rstrip(";").strip()]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        s = chs.Session(tmp)
        s.query("CREATE DATABASE IF NOT EXISTS audit")
        s.query("USE audit")
        for rnd in (1, 2):
            for f in MIGRATIONS:
                for stmt in statements(f.read_text()):
                    s.query(stmt.rstrip(";"))
            print(f"migrations round {rnd}: {len(MIGRATIONS)} files applied")

        # A few rows (only the columns the recipes look at; the rest take defaults).
        rows = []
        for seq in range(1, 7):
            t = 1_717_200_000 + seq * 3600
            outcome = "DENIED" if seq == 5 else "SUCCESS"
            trace = "trace-A" if seq <= 3 else "trace-B"
            rows.append(
                f"(0, {seq}, '{seq:064x}', {t * 1_000_000}, toDateTime({t}, 'UTC'), "
                f"'infrastructure_request', 'USER_INTERACTION', '{outcome}', 'user-123', "
                f"'team-456', '{trace}')"
            )
        s.query(
            "INSERT INTO audit_events (chain_partition, seq, hash, event_time_us, event_time, "
            "event_type, category, outcome, actor_id, team_id, trace_id) VALUES " + ", ".join(rows)
        )
        s.query(
            "INSERT INTO audit_checkpoints (chain_partition, seq, key_id, time_us, time) "
            "VALUES (0, 6, 'k', 0, toDateTime(0, 'UTC'))"
        )
        # The ALIAS column of the DateTime64 upgrade computes from event_time_us.
        got = s.query("SELECT toString(event_time64) FROM audit_events WHERE seq = 1", "CSV").bytes()
        assert got.decode().strip().strip('"').startswith("2024-06-01 01:00:00"), got

        for q in QUERIES:
            sql = q.read_text()
            names = dict.fromkeys(re.findall(r"\{(\w+):\w+\}", sql))
            settings = "".join(f"SET param_{n} = '{PARAMS[n]}';\n" for n in names)
            for n in names:
                s.query(f"SET param_{n} = '{PARAMS[n]}'")
            out = s.query(sql, "TSV").bytes().decode()
            print(f"{q.name}: {len(out.splitlines())} rows")
            if not out.strip():
                print(f"{q.name}: no rows ({settings!r})", file=sys.stderr)
                return 1
    print("chDB check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
