-- Legal hold flag of a row: 1 while `auditctl hold on` holds its (chain_partition, seq), set
-- and cleared by ALTER TABLE … UPDATE mutations (which 18.16 has). Every retention TTL rule
-- (sink-clickhouse's retention policy, on servers with TTL) requires legal_hold = 0, so a held
-- row is never deleted. Sink bookkeeping like inserted_at: not part of the chain, not in
-- AuditRow, read by no verifier. One clause per statement: the migration runner adds
-- IF NOT EXISTS by hand on 18.16.
ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS legal_hold UInt8 DEFAULT 0;
