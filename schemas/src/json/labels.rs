//! Closed vocabularies of an event (category, severity, outcome, actor type): how a producer's
//! label maps to the enum, and where the producer's own text is kept when the enum cannot say it.
//!
//! The same rule for every label kind, whatever the encoding the event came in:
//!
//! | producer's text | enum value | kept in `attributes` |
//! |---|---|---|
//! | an enum name, any case, `_`/`-`/space insensitive (`Governance`, `AI-AGENT`) | that value | nothing |
//! | a listed synonym (`warn`, `fatal`, `succeeded`, `blocked`, …) | its value | `audit.original.<field>` = the text |
//! | anything else (`ai_processing`, `""`, `🙂`) | the kind's fallback | `audit.original.<field>` = the text |
//!
//! (The JSON mapping hands a label that is not a JSON string over as its normalised JSON text,
//! `17` or `{"level":3}`, so it is an unknown label like any other.)
//!
//! Fallbacks are the symbols the Avro schema's enums already name as the reading of an unknown
//! symbol, so a value means the same whichever way it was unknown: category → `OTHER`,
//! severity → `INFO`, outcome → `UNKNOWN`, actor type → `SYSTEM` (an actor the producer did not
//! call a user, a service or an AI agent; the original says what it is). In strict label mode an
//! unknown text is rejected `invalid_value` instead (synonyms are still accepted).
//!
//! The original is stored in the sorted `attributes` list, not in a new field: the Avro schema,
//! and so the chain's canonical bytes, stay as they are. `<field>` is `category`, `severity`,
//! `outcome` or `actor_type` (the ClickHouse column names).
//!
//! **The `audit.original.` namespace belongs to the pipeline.** A producer's own attribute whose
//! key starts with it is kept, renamed with the prefix `producer.` (repeated until the key is
//! free), so no producer can make an event look as if it had said something else. The one
//! exception is an already-normalised Avro event (e.g. a validated event replayed into the raw
//! topic): an `audit.original.<field>` attribute that the mapping itself would have written for
//! that event (not an enum name, and mapping it gives the event's value) is kept as is, so
//! ingesting an event twice gives the same event. Every other key in the namespace is renamed.

use crate::event::{ActorType, AuditEvent, EventCategory, KeyValue, Outcome, Severity};

use super::{JsonError, JsonErrorCode};

/// Attributes with keys under this prefix hold producers' original labels (module docs).
pub const ORIGINAL_PREFIX: &str = "audit.original.";

/// Attributes enrich writes (e.g. `audit.enrich.department`): never a producer's. A producer's
/// key here is renamed like one under [`ORIGINAL_PREFIX`], so it cannot pose as enrichment.
pub const ENRICH_PREFIX: &str = "audit.enrich.";

/// Prepended to a producer's own attribute key that falls in [`ORIGINAL_PREFIX`] or
/// [`ENRICH_PREFIX`].
pub const PRODUCER_PREFIX: &str = "producer.";

/// One closed vocabulary of [`AuditEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelKind {
    Category,
    Severity,
    Outcome,
    ActorType,
}

/// How a producer's text relates to a vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelMatch {
    /// An enum name (case and `_`/`-`/space insensitive): nothing to keep.
    Name,
    /// A listed synonym: mapped, and the text is kept.
    Synonym,
    /// Not in the vocabulary: the fallback, and the text is kept (rejected in strict mode).
    Unknown,
}

impl LabelKind {
    pub const ALL: [LabelKind; 4] = [
        LabelKind::Category,
        LabelKind::Severity,
        LabelKind::Outcome,
        LabelKind::ActorType,
    ];

    /// The field's name in the ClickHouse row and in the attribute key.
    pub fn field(self) -> &'static str {
        match self {
            LabelKind::Category => "category",
            LabelKind::Severity => "severity",
            LabelKind::Outcome => "outcome",
            LabelKind::ActorType => "actor_type",
        }
    }

    /// `audit.original.<field>`.
    pub fn attribute_key(self) -> &'static str {
        match self {
            LabelKind::Category => "audit.original.category",
            LabelKind::Severity => "audit.original.severity",
            LabelKind::Outcome => "audit.original.outcome",
            LabelKind::ActorType => "audit.original.actor_type",
        }
    }

    /// The label kind whose original `key` holds, if `key` is one of the four.
    pub fn from_attribute_key(key: &str) -> Option<LabelKind> {
        LabelKind::ALL
            .into_iter()
            .find(|k| k.attribute_key() == key)
    }

    /// The canonical JSON path of the label (what error messages name for non-JSON input).
    pub fn json_path(self) -> &'static str {
        match self {
            LabelKind::Category => "event.category",
            LabelKind::Severity => "event.severity",
            LabelKind::Outcome => "event.outcome",
            LabelKind::ActorType => "event.actor.type",
        }
    }

    /// The enum names, lowercase snake_case (the JSON spelling).
    pub fn names(self) -> Vec<&'static str> {
        match self {
            LabelKind::Category => CATEGORY.names.iter().map(|(n, _)| *n).collect(),
            LabelKind::Severity => SEVERITY.names.iter().map(|(n, _)| *n).collect(),
            LabelKind::Outcome => OUTCOME.names.iter().map(|(n, _)| *n).collect(),
            LabelKind::ActorType => ACTOR_TYPE.names.iter().map(|(n, _)| *n).collect(),
        }
    }

    /// How `text` relates to this vocabulary.
    pub fn classify(self, text: &str) -> LabelMatch {
        match self {
            LabelKind::Category => CATEGORY.classify(text).0,
            LabelKind::Severity => SEVERITY.classify(text).0,
            LabelKind::Outcome => OUTCOME.classify(text).0,
            LabelKind::ActorType => ACTOR_TYPE.classify(text).0,
        }
    }

    /// The name of the value `text` maps to (non-strict: the fallback for unknown text).
    pub fn normalized_name(self, text: &str) -> &'static str {
        match self {
            LabelKind::Category => category_name(CATEGORY.resolve(text).0),
            LabelKind::Severity => severity_name(SEVERITY.resolve(text).0),
            LabelKind::Outcome => outcome_name(OUTCOME.resolve(text).0),
            LabelKind::ActorType => actor_type_name(ACTOR_TYPE.resolve(text).0),
        }
    }

    /// The name of this label's value in `event`.
    pub fn name_in(self, event: &AuditEvent) -> &'static str {
        match self {
            LabelKind::Category => category_name(event.category),
            LabelKind::Severity => severity_name(event.severity),
            LabelKind::Outcome => outcome_name(event.outcome),
            LabelKind::ActorType => actor_type_name(event.actor.actor_type),
        }
    }
}

/// The producer's original text for `kind`, when the mapping kept one.
pub fn original(event: &AuditEvent, kind: LabelKind) -> Option<&str> {
    let key = kind.attribute_key();
    event
        .attributes
        .binary_search_by(|kv| kv.key.as_str().cmp(key))
        .ok()
        .and_then(|i| event.attributes.get(i))
        .map(|kv| kv.value.as_str())
}

/// What the producer said for `kind`: the kept original, else the value's enum name (the
/// producer wrote that name, in some case and spelling, or nothing at all).
pub fn producer_text(event: &AuditEvent, kind: LabelKind) -> &str {
    original(event, kind).unwrap_or_else(|| kind.name_in(event))
}

/// Whether `text` is what the mapping would have kept as the original of `kind` for `event`:
/// not an enum name, and mapping it gives the event's value.
pub fn is_consistent_original(event: &AuditEvent, kind: LabelKind, text: &str) -> bool {
    kind.classify(text) != LabelMatch::Name && kind.normalized_name(text) == kind.name_in(event)
}

/// Renames every attribute under [`ENRICH_PREFIX`], and under [`ORIGINAL_PREFIX`] for which
/// `keep` is false, to
/// `producer.<key>` (prefixing again while the key is taken), then sorts by key. Deterministic:
/// reserved keys are renamed in key order.
pub fn protect_reserved(attributes: &mut Vec<KeyValue>, keep: impl Fn(&KeyValue) -> bool) {
    let (reserved, mut out): (Vec<KeyValue>, Vec<KeyValue>) =
        std::mem::take(attributes).into_iter().partition(|kv| {
            (kv.key.starts_with(ORIGINAL_PREFIX) && !keep(kv)) || kv.key.starts_with(ENRICH_PREFIX)
        });
    if !reserved.is_empty() {
        let mut taken: std::collections::BTreeSet<String> =
            out.iter().map(|kv| kv.key.clone()).collect();
        let mut reserved = reserved;
        reserved.sort_by(|a, b| a.key.cmp(&b.key));
        for kv in reserved {
            let mut key = format!("{PRODUCER_PREFIX}{}", kv.key);
            while taken.contains(&key) {
                key.insert_str(0, PRODUCER_PREFIX);
            }
            taken.insert(key.clone());
            out.push(KeyValue {
                key,
                value: kv.value,
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    *attributes = out;
}

/// [`protect_reserved`] for a decoded event (Avro input): keeps the originals the mapping would
/// have written for it (module docs), renames the rest.
pub fn protect_reserved_in_event(event: &mut AuditEvent) {
    let mut attributes = std::mem::take(&mut event.attributes);
    protect_reserved(&mut attributes, |kv| {
        LabelKind::from_attribute_key(&kv.key)
            .is_some_and(|kind| is_consistent_original(event, kind, &kv.value))
    });
    event.attributes = attributes;
}

/// The semantic rule of the reserved namespace for a built event: every key under
/// [`ORIGINAL_PREFIX`] is one of the four label keys and holds a consistent original.
pub fn check_reserved(event: &AuditEvent) -> Result<(), JsonError> {
    for kv in event
        .attributes
        .iter()
        .filter(|kv| kv.key.starts_with(ORIGINAL_PREFIX))
    {
        let ok = LabelKind::from_attribute_key(&kv.key)
            .is_some_and(|kind| is_consistent_original(event, kind, &kv.value));
        if !ok {
            return Err(JsonError::new(
                JsonErrorCode::InvalidValue,
                format!("event.attributes.{}", kv.key),
                format!(
                    "the {ORIGINAL_PREFIX} namespace is the pipeline's: {:?} is not the \
                     original of the event's label",
                    kv.value
                ),
            ));
        }
    }
    Ok(())
}

/// Strict label mode for a built event (Avro input): a kept original that is not a synonym (the
/// event's value is a fallback) is rejected, as the JSON mapping rejects the text itself.
pub fn check_strict(event: &AuditEvent) -> Result<(), JsonError> {
    for kind in LabelKind::ALL {
        if let Some(text) = original(event, kind) {
            if kind.classify(text) == LabelMatch::Unknown {
                return Err(unknown_error(kind, kind.json_path(), text));
            }
        }
    }
    Ok(())
}

/// How many attributes count against `max_attributes`: the kept originals do not (at most four,
/// written by the pipeline, never the producer's).
pub fn producer_attribute_count(event: &AuditEvent) -> usize {
    event
        .attributes
        .iter()
        .filter(|kv| LabelKind::from_attribute_key(&kv.key).is_none())
        .count()
}

/// Adds the kept originals to an attribute list that holds none (the producer's, protected) and
/// sorts it.
pub(crate) fn add_originals(
    attributes: &mut Vec<KeyValue>,
    originals: impl IntoIterator<Item = (LabelKind, Option<String>)>,
) {
    for (kind, text) in originals {
        if let Some(value) = text {
            attributes.push(KeyValue {
                key: kind.attribute_key().to_owned(),
                value,
            });
        }
    }
    attributes.sort_by(|a, b| a.key.cmp(&b.key));
}

/// The text `event_to_json` writes for `kind`: the kept original when it is consistent (so the
/// JSON maps back to the same event), else the enum name.
pub(crate) fn json_text(event: &AuditEvent, kind: LabelKind) -> &str {
    match original(event, kind) {
        Some(text) if is_consistent_original(event, kind, text) => text,
        _ => kind.name_in(event),
    }
}

// ---- mapping producer text ---------------------------------------------------------------------

/// A mapped label: the value and the text to keep (`None` for an enum name).
pub(crate) type Mapped<T> = (T, Option<String>);

pub(crate) fn map_category(
    text: String,
    path: &str,
    strict: bool,
) -> Result<Mapped<EventCategory>, JsonError> {
    CATEGORY.map(LabelKind::Category, text, path, strict)
}

pub(crate) fn map_severity(
    text: String,
    path: &str,
    strict: bool,
) -> Result<Mapped<Severity>, JsonError> {
    SEVERITY.map(LabelKind::Severity, text, path, strict)
}

pub(crate) fn map_outcome(
    text: String,
    path: &str,
    strict: bool,
) -> Result<Mapped<Outcome>, JsonError> {
    OUTCOME.map(LabelKind::Outcome, text, path, strict)
}

pub(crate) fn map_actor_type(
    text: String,
    path: &str,
    strict: bool,
) -> Result<Mapped<ActorType>, JsonError> {
    ACTOR_TYPE.map(LabelKind::ActorType, text, path, strict)
}

/// Outcome from a producer's free-form status string (`result.status`, `action.status`): the
/// outcome vocabulary with its synonyms, else UNKNOWN. A status is kept verbatim elsewhere
/// (`action.status`, `result_json`), so no original is stored for it.
pub(crate) fn derive_outcome(status: &str) -> Outcome {
    OUTCOME.resolve(status).0
}

pub(crate) fn category_name(c: EventCategory) -> &'static str {
    CATEGORY.name(c)
}

pub(crate) fn severity_name(s: Severity) -> &'static str {
    SEVERITY.name(s)
}

pub(crate) fn outcome_name(o: Outcome) -> &'static str {
    OUTCOME.name(o)
}

pub(crate) fn actor_type_name(a: ActorType) -> &'static str {
    ACTOR_TYPE.name(a)
}

fn unknown_error(kind: LabelKind, path: &str, text: &str) -> JsonError {
    JsonError::new(
        JsonErrorCode::InvalidValue,
        path,
        format!(
            "{text:?} is not one of: {} (strict label mode; without it the event is kept as \
             {} with the original in attributes.{})",
            kind.names().join(", "),
            kind.normalized_name(text).to_uppercase(),
            kind.attribute_key()
        ),
    )
}

/// Lowercase, without `_`, `-` and spaces: `USER_INTERACTION`, `user-interaction` and
/// `UserInteraction` all compare equal.
fn squashed(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
}

struct Vocab<T: 'static> {
    /// `(JSON name, value)`, one per enum symbol.
    names: &'static [(&'static str, T)],
    /// `(squashed synonym, value)`.
    synonyms: &'static [(&'static str, T)],
    /// The value of an unknown text: the symbol the Avro schema reads unknown symbols as.
    fallback: T,
}

impl<T: Copy + PartialEq + 'static> Vocab<T> {
    fn classify(&self, text: &str) -> (LabelMatch, T) {
        // The usual text first: a name as the schema spells it, in any ASCII case, compared
        // byte for byte (the squashed comparison below, char by char, was 2.4% of ingest's
        // samples). No two names squash alike (tested), so this finds the name the squashed
        // search would.
        if let Some((_, v)) = self
            .names
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(text))
        {
            return (LabelMatch::Name, *v);
        }
        self.classify_squashed(text)
    }

    /// Names, then synonyms, compared squashed (case and separators ignored), char by char,
    /// nothing allocated: every event has four labels, and each is classified when mapped and
    /// again when the event is validated.
    fn classify_squashed(&self, text: &str) -> (LabelMatch, T) {
        if let Some((_, v)) = self
            .names
            .iter()
            .find(|(n, _)| squashed(n).eq(squashed(text)))
        {
            return (LabelMatch::Name, *v);
        }
        if let Some((_, v)) = self
            .synonyms
            .iter()
            .find(|(n, _)| n.chars().eq(squashed(text)))
        {
            return (LabelMatch::Synonym, *v);
        }
        (LabelMatch::Unknown, self.fallback)
    }

    fn resolve(&self, text: &str) -> (T, LabelMatch) {
        let (m, v) = self.classify(text);
        (v, m)
    }

    fn map(
        &self,
        kind: LabelKind,
        text: String,
        path: &str,
        strict: bool,
    ) -> Result<Mapped<T>, JsonError> {
        match self.classify(&text) {
            (LabelMatch::Name, v) => Ok((v, None)),
            (LabelMatch::Synonym, v) => Ok((v, Some(text))),
            (LabelMatch::Unknown, _) if strict => Err(unknown_error(kind, path, &text)),
            (LabelMatch::Unknown, v) => Ok((v, Some(text))),
        }
    }

    fn name(&self, v: T) -> &'static str {
        self.names
            .iter()
            .find(|(_, x)| *x == v)
            .map_or("", |(n, _)| *n)
    }
}

const CATEGORY: Vocab<EventCategory> = Vocab {
    names: &[
        ("user_interaction", EventCategory::UserInteraction),
        ("system_processing", EventCategory::SystemProcessing),
        ("governance", EventCategory::Governance),
        ("infrastructure", EventCategory::Infrastructure),
        ("security", EventCategory::Security),
        ("telemetry", EventCategory::Telemetry),
        ("other", EventCategory::Other),
    ],
    // None on purpose: `approval` or `deployment` could be governance or infrastructure
    // depending on the producer; the original says it, an analyst groups it.
    synonyms: &[],
    fallback: EventCategory::Other,
};

const SEVERITY: Vocab<Severity> = Vocab {
    names: &[
        ("debug", Severity::Debug),
        ("info", Severity::Info),
        ("notice", Severity::Notice),
        ("warning", Severity::Warning),
        ("error", Severity::Error),
        ("critical", Severity::Critical),
    ],
    // Syslog (RFC 5424) and OpenTelemetry severity texts, so a fatal event is not filed as INFO.
    synonyms: &[
        ("warn", Severity::Warning),
        ("trace", Severity::Debug),
        ("information", Severity::Info),
        ("informational", Severity::Info),
        ("err", Severity::Error),
        ("crit", Severity::Critical),
        ("fatal", Severity::Critical),
        ("alert", Severity::Critical),
        ("emerg", Severity::Critical),
        ("emergency", Severity::Critical),
    ],
    fallback: Severity::Info,
};

const OUTCOME: Vocab<Outcome> = Vocab {
    names: &[
        ("success", Outcome::Success),
        ("failure", Outcome::Failure),
        ("denied", Outcome::Denied),
        ("pending", Outcome::Pending),
        ("unknown", Outcome::Unknown),
    ],
    // The status words the mapping already derived outcomes from (`result.status`).
    synonyms: &[
        ("succeeded", Outcome::Success),
        ("successful", Outcome::Success),
        ("ok", Outcome::Success),
        ("completed", Outcome::Success),
        ("failed", Outcome::Failure),
        ("error", Outcome::Failure),
        ("blocked", Outcome::Denied),
        ("rejected", Outcome::Denied),
        ("forbidden", Outcome::Denied),
        ("inprogress", Outcome::Pending),
        ("awaitingapproval", Outcome::Pending),
    ],
    fallback: Outcome::Unknown,
};

const ACTOR_TYPE: Vocab<ActorType> = Vocab {
    names: &[
        ("user", ActorType::User),
        ("service", ActorType::Service),
        ("system", ActorType::System),
        ("ai_agent", ActorType::AiAgent),
    ],
    synonyms: &[],
    fallback: ActorType::System,
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.into(),
        }
    }

    fn distinct_squashed<T>(v: &Vocab<T>) -> bool {
        let all: Vec<String> = v.names.iter().map(|(n, _)| squashed(n).collect()).collect();
        let set: std::collections::HashSet<&String> = all.iter().collect();
        set.len() == all.len()
    }

    #[test]
    fn no_two_names_squash_alike() {
        assert!(distinct_squashed(&CATEGORY));
        assert!(distinct_squashed(&SEVERITY));
        assert!(distinct_squashed(&OUTCOME));
        assert!(distinct_squashed(&ACTOR_TYPE));
    }

    /// Every vocabulary word, as named and as synonym, respelled: case flipped per letter and
    /// separators added, removed or changed.
    fn respelled() -> impl Strategy<Value = String> {
        let words: Vec<&'static str> = [
            CATEGORY.names.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            CATEGORY.synonyms.iter().map(|(n, _)| *n).collect(),
            SEVERITY.names.iter().map(|(n, _)| *n).collect(),
            SEVERITY.synonyms.iter().map(|(n, _)| *n).collect(),
            OUTCOME.names.iter().map(|(n, _)| *n).collect(),
            OUTCOME.synonyms.iter().map(|(n, _)| *n).collect(),
            ACTOR_TYPE.names.iter().map(|(n, _)| *n).collect(),
            ACTOR_TYPE.synonyms.iter().map(|(n, _)| *n).collect(),
        ]
        .concat();
        (
            proptest::sample::select(words),
            proptest::collection::vec(0u8..8, 32),
        )
            .prop_map(|(w, dice)| {
                let mut out = String::new();
                for (c, d) in w.chars().zip(dice.iter().cycle()) {
                    match (c, d) {
                        ('_', 0) => {}
                        ('_', 1) => out.push('-'),
                        ('_', 2) => out.push(' '),
                        (c, 3 | 4) => out.push(c.to_ascii_uppercase()),
                        (c, 5) => {
                            out.push(c);
                            out.push('_');
                        }
                        (c, _) => out.push(c),
                    }
                }
                out
            })
    }

    proptest! {
        /// The byte-for-byte first step answers as the squashed search alone would.
        #[test]
        fn classify_answers_as_the_squashed_search(text in prop_oneof![respelled(), ".{0,12}"]) {
            prop_assert_eq!(CATEGORY.classify(&text), CATEGORY.classify_squashed(&text));
            prop_assert_eq!(SEVERITY.classify(&text), SEVERITY.classify_squashed(&text));
            prop_assert_eq!(OUTCOME.classify(&text), OUTCOME.classify_squashed(&text));
            prop_assert_eq!(ACTOR_TYPE.classify(&text), ACTOR_TYPE.classify_squashed(&text));
        }
    }

    #[test]
    fn names_synonyms_and_fallbacks() {
        use LabelKind::*;
        assert_eq!(Category.classify("USER-INTERACTION"), LabelMatch::Name);
        assert_eq!(Category.classify("ai_processing"), LabelMatch::Unknown);
        assert_eq!(Category.normalized_name("ai_processing"), "other");
        assert_eq!(Severity.classify("Warn"), LabelMatch::Synonym);
        assert_eq!(Severity.normalized_name("FATAL"), "critical");
        assert_eq!(Severity.normalized_name("loud"), "info");
        assert_eq!(Outcome.normalized_name("blocked"), "denied");
        assert_eq!(Outcome.normalized_name("partial"), "unknown");
        assert_eq!(ActorType.classify("AI Agent"), LabelMatch::Name);
        assert_eq!(ActorType.normalized_name("robot"), "system");
        for kind in LabelKind::ALL {
            assert_eq!(
                LabelKind::from_attribute_key(kind.attribute_key()),
                Some(kind)
            );
            assert!(kind.attribute_key().starts_with(ORIGINAL_PREFIX));
            assert!(kind.attribute_key().ends_with(kind.field()));
        }
    }

    #[test]
    fn reserved_keys_are_renamed_deterministically() {
        let mut a = vec![
            kv("z", "1"),
            kv("audit.original.category", "spoof"),
            kv("producer.audit.original.category", "mine"),
            kv("audit.original.x", "y"),
        ];
        protect_reserved(&mut a, |_| false);
        assert_eq!(
            a,
            vec![
                kv("producer.audit.original.category", "mine"),
                kv("producer.audit.original.x", "y"),
                kv("producer.producer.audit.original.category", "spoof"),
                kv("z", "1"),
            ]
        );
    }

    #[test]
    fn a_producer_cannot_pose_as_enrichment() {
        let mut a = vec![kv("audit.enrich.department", "finance"), kv("team", "x")];
        // Even when the caller would keep it (the rule is the namespace's, not the caller's).
        protect_reserved(&mut a, |_| true);
        assert_eq!(
            a,
            vec![
                kv("producer.audit.enrich.department", "finance"),
                kv("team", "x")
            ]
        );
    }
}
