-- Columns analysts asked for that the event carries only inside other columns. Both are
-- MATERIALIZED: computed by the server from chained columns at insert (and on read for parts
-- written before this migration), never written by the sink, not in AuditRow and not part of
-- the chain. So they cannot disagree with what the verifier checks, and the sink's and the
-- verifier's column lists stay as they are.
--
-- `ADD COLUMN IF NOT EXISTS` is not understood by 18.16: on such servers the migration runner
-- checks system.columns and runs the statement without `IF NOT EXISTS` (see migrations.rs).
--
-- target_metadata: what the producer sent as `target.metadata` (seed 004's target_metadata).
-- Ingest keeps target keys it does not map under `_unmapped.target` of metadata_json
-- (schemas/src/json.rs), keys sorted. 18.16 has no JSON path functions, so this reads it with
-- visitParam* (first match at any depth: exact unless a producer nests another `target` key
-- inside an unmapped key sorting before `target`); upgrades/0105 switches current servers to
-- the exact JSON path.
ALTER TABLE audit_events
    ADD COLUMN IF NOT EXISTS target_metadata Nullable(String) MATERIALIZED nullIf(visitParamExtractRaw(visitParamExtractRaw(visitParamExtractRaw(ifNull(metadata_json, ''), '_unmapped'), 'target'), 'metadata'), '');
-- department: the user's department from identity sync. Enrich records it in the attribute
-- `audit.enrich.department` (schemas::context::DEPARTMENT_ATTRIBUTE; the event model has no
-- department field, and an attribute keeps the Avro schema unchanged).
ALTER TABLE audit_events
    ADD COLUMN IF NOT EXISTS department Nullable(String) MATERIALIZED if(indexOf(attribute_keys, 'audit.enrich.department') > 0, arrayElement(attribute_values, indexOf(attribute_keys, 'audit.enrich.department')), NULL);
