//! The field rules: which event field gets which treatment, read from a TOML file
//! (`--privacy-rules-file`) or the documented defaults ([`Rules::default`]).
//!
//! ```toml
//! [[field]]
//! field = "actor.ip"
//! action = "tokenize"          # drop | mask | tokenize | encrypt
//!
//! [[field]]
//! field = "actor.session_id"
//! action = "mask"
//! keep_last = 4                # or: email_domain = true
//!
//! [text]                       # PII-looking pieces of free text, masked in place
//! fields = ["data.payload_json", "data.result_json"]
//! emails = true
//! phones = true
//! cards = true
//! ```
//!
//! A file replaces the defaults entirely (so removing a default is possible and visible).

use std::path::Path;

use schemas::AuditEvent;
use serde::{Deserialize, Serialize};

use super::mask::TextScan;
use super::PrivacyError;

/// The rules file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub field: Vec<FieldRuleSpec>,
    #[serde(default)]
    pub text: Option<TextRuleSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRuleSpec {
    pub field: String,
    pub action: ActionKind,
    /// `mask`: characters kept at the end.
    #[serde(default)]
    pub keep_last: Option<usize>,
    /// `mask`: keep an email's domain (`***@example.com`).
    #[serde(default)]
    pub email_domain: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Drop,
    Mask,
    Tokenize,
    Encrypt,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextRuleSpec {
    pub fields: Vec<String>,
    #[serde(default = "yes")]
    pub emails: bool,
    #[serde(default = "yes")]
    pub phones: bool,
    #[serde(default = "yes")]
    pub cards: bool,
}

fn yes() -> bool {
    true
}

/// A field the rules can address. All are strings; `Required` ones cannot be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    ActorId,
    ActorName,
    ActorEmail,
    ActorIp,
    ActorUserAgent,
    ActorSessionId,
    TargetId,
    TargetName,
    ActionDescription,
    ActionError,
    Reason,
    RequestId,
    AiReasoning,
    PayloadJson,
    ResultJson,
    MetadataJson,
    BeforeJson,
    AfterJson,
    /// `attributes.<key>`
    Attribute(String),
}

const NAMES: &[(&str, Field)] = &[
    ("actor.id", Field::ActorId),
    ("actor.name", Field::ActorName),
    ("actor.email", Field::ActorEmail),
    ("actor.ip", Field::ActorIp),
    ("actor.user_agent", Field::ActorUserAgent),
    ("actor.session_id", Field::ActorSessionId),
    ("target.id", Field::TargetId),
    ("target.name", Field::TargetName),
    ("action.description", Field::ActionDescription),
    ("action.error", Field::ActionError),
    ("reason", Field::Reason),
    ("request_id", Field::RequestId),
    ("ai.reasoning", Field::AiReasoning),
    ("data.payload_json", Field::PayloadJson),
    ("data.result_json", Field::ResultJson),
    ("data.metadata_json", Field::MetadataJson),
    ("data.before_json", Field::BeforeJson),
    ("data.after_json", Field::AfterJson),
];

impl Field {
    pub fn parse(name: &str) -> Result<Field, PrivacyError> {
        if let Some(key) = name.strip_prefix("attributes.") {
            if key.is_empty() || key.starts_with("audit.") {
                return Err(PrivacyError::Rules(format!(
                    "field {name:?}: attribute keys under `audit.` are the pipeline's own"
                )));
            }
            return Ok(Field::Attribute(key.to_owned()));
        }
        NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f.clone())
            .ok_or_else(|| {
                PrivacyError::Rules(format!(
                    "unknown field {name:?}; known: {}, attributes.<key>",
                    NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ))
            })
    }

    /// Every named field (attributes aside), e.g. to find where an event holds ciphertexts.
    pub fn all() -> Vec<Field> {
        NAMES.iter().map(|(_, f)| f.clone()).collect()
    }

    /// The name used in rules, the ciphertext's associated data and docs.
    pub fn name(&self) -> String {
        match self {
            Field::Attribute(k) => format!("attributes.{k}"),
            f => NAMES
                .iter()
                .find(|(_, g)| g == f)
                .map(|(n, _)| (*n).to_owned())
                .unwrap_or_default(),
        }
    }

    fn required(&self) -> bool {
        matches!(self, Field::ActorId | Field::TargetId)
    }

    /// Holds normalised JSON text: only dropping and text masking keep it JSON.
    pub fn is_json(&self) -> bool {
        matches!(
            self,
            Field::PayloadJson
                | Field::ResultJson
                | Field::MetadataJson
                | Field::BeforeJson
                | Field::AfterJson
        )
    }

    /// The field's value (`None`: absent or empty).
    pub fn get(&self, e: &AuditEvent) -> Option<String> {
        let v = match self {
            Field::ActorId => Some(e.actor.id.clone()),
            Field::ActorName => e.actor.name.clone(),
            Field::ActorEmail => e.actor.email.clone(),
            Field::ActorIp => e.actor.ip.clone(),
            Field::ActorUserAgent => e.actor.user_agent.clone(),
            Field::ActorSessionId => e.actor.session_id.clone(),
            Field::TargetId => e.target.as_ref().map(|t| t.id.clone()),
            Field::TargetName => e.target.as_ref().and_then(|t| t.name.clone()),
            Field::ActionDescription => e.action.description.clone(),
            Field::ActionError => e.action.error.clone(),
            Field::Reason => e.reason.clone(),
            Field::RequestId => e.request_id.clone(),
            Field::AiReasoning => e.ai.as_ref().and_then(|a| a.reasoning.clone()),
            Field::PayloadJson => e.data.payload_json.clone(),
            Field::ResultJson => e.data.result_json.clone(),
            Field::MetadataJson => e.data.metadata_json.clone(),
            Field::BeforeJson => e.data.before_json.clone(),
            Field::AfterJson => e.data.after_json.clone(),
            Field::Attribute(k) => e
                .attributes
                .iter()
                .find(|kv| &kv.key == k)
                .map(|kv| kv.value.clone()),
        };
        v.filter(|s| !s.is_empty())
    }

    /// Sets the field (`None` drops it: an optional field becomes null, an attribute is
    /// removed). Only called on fields that exist ([`Field::get`] returned a value).
    pub fn set(&self, e: &mut AuditEvent, v: Option<String>) {
        let put = |slot: &mut Option<String>| *slot = v.clone();
        match self {
            Field::ActorId => e.actor.id = v.clone().unwrap_or_default(),
            Field::ActorName => put(&mut e.actor.name),
            Field::ActorEmail => put(&mut e.actor.email),
            Field::ActorIp => put(&mut e.actor.ip),
            Field::ActorUserAgent => put(&mut e.actor.user_agent),
            Field::ActorSessionId => put(&mut e.actor.session_id),
            Field::TargetId => {
                if let Some(t) = e.target.as_mut() {
                    t.id = v.clone().unwrap_or_default();
                }
            }
            Field::TargetName => {
                if let Some(t) = e.target.as_mut() {
                    put(&mut t.name);
                }
            }
            Field::ActionDescription => put(&mut e.action.description),
            Field::ActionError => put(&mut e.action.error),
            Field::Reason => put(&mut e.reason),
            Field::RequestId => put(&mut e.request_id),
            Field::AiReasoning => {
                if let Some(a) = e.ai.as_mut() {
                    put(&mut a.reasoning);
                }
            }
            Field::PayloadJson => put(&mut e.data.payload_json),
            Field::ResultJson => put(&mut e.data.result_json),
            Field::MetadataJson => put(&mut e.data.metadata_json),
            Field::BeforeJson => put(&mut e.data.before_json),
            Field::AfterJson => put(&mut e.data.after_json),
            Field::Attribute(k) => match v.clone() {
                Some(value) => {
                    if let Some(kv) = e.attributes.iter_mut().find(|kv| &kv.key == k) {
                        kv.value = value;
                    }
                }
                None => e.attributes.retain(|kv| &kv.key != k),
            },
        }
    }
}

/// What a rule does to its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Drop,
    MaskKeepLast(usize),
    MaskEmailDomain,
    Tokenize,
    Encrypt,
}

/// Validated rules, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub fields: Vec<(Field, Action)>,
    pub text_fields: Vec<Field>,
    pub text: TextScan,
}

impl Default for Rules {
    /// The documented defaults (docs/privacy.md): the actor's IP tokenized, the actor's email
    /// and name encrypted for the data subject, emails/phones/cards masked in `data`.
    fn default() -> Self {
        Rules {
            fields: vec![
                (Field::ActorIp, Action::Tokenize),
                (Field::ActorEmail, Action::Encrypt),
                (Field::ActorName, Action::Encrypt),
            ],
            text_fields: vec![
                Field::PayloadJson,
                Field::ResultJson,
                Field::MetadataJson,
                Field::BeforeJson,
                Field::AfterJson,
            ],
            text: TextScan::ALL,
        }
    }
}

impl Rules {
    pub fn from_file_spec(spec: RulesFile) -> Result<Rules, PrivacyError> {
        let mut fields: Vec<(Field, Action)> = Vec::new();
        for r in spec.field {
            let field = Field::parse(&r.field)?;
            if fields.iter().any(|(f, _)| *f == field) {
                return Err(PrivacyError::Rules(format!(
                    "field {:?} has two rules",
                    r.field
                )));
            }
            let bad = |why: &str| PrivacyError::Rules(format!("field {:?}: {why}", r.field));
            let mask_opts = r.keep_last.is_some() || r.email_domain.is_some();
            let action = match r.action {
                ActionKind::Drop if field.required() => {
                    return Err(bad("a required field cannot be dropped (tokenize it)"))
                }
                ActionKind::Drop => Action::Drop,
                ActionKind::Mask => match (r.keep_last, r.email_domain) {
                    (Some(n), None | Some(false)) => Action::MaskKeepLast(n),
                    (None, Some(true)) => Action::MaskEmailDomain,
                    (None, None | Some(false)) => Action::MaskKeepLast(0),
                    (Some(_), Some(true)) => {
                        return Err(bad("mask takes keep_last or email_domain, not both"))
                    }
                },
                ActionKind::Tokenize => Action::Tokenize,
                ActionKind::Encrypt => Action::Encrypt,
            };
            if mask_opts && r.action != ActionKind::Mask {
                return Err(bad("keep_last/email_domain only go with action = \"mask\""));
            }
            if field.is_json() && action != Action::Drop {
                return Err(bad(
                    "JSON fields can only be dropped or masked through [text] (a token or \
                     ciphertext would not be JSON)",
                ));
            }
            fields.push((field, action));
        }
        let (text_fields, text) = match spec.text {
            None => (Vec::new(), TextScan::ALL),
            Some(t) => (
                t.fields
                    .iter()
                    .map(|f| Field::parse(f))
                    .collect::<Result<Vec<_>, _>>()?,
                TextScan {
                    emails: t.emails,
                    phones: t.phones,
                    cards: t.cards,
                },
            ),
        };
        Ok(Rules {
            fields,
            text_fields,
            text,
        })
    }

    pub fn from_toml(text: &str) -> Result<Rules, PrivacyError> {
        let spec: RulesFile =
            toml::from_str(text).map_err(|e| PrivacyError::Rules(e.to_string()))?;
        Rules::from_file_spec(spec)
    }

    pub fn load(path: &Path) -> Result<Rules, PrivacyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PrivacyError::RulesFile {
            path: path.to_owned(),
            source,
        })?;
        Rules::from_toml(&text).map_err(|e| match e {
            PrivacyError::Rules(m) => PrivacyError::Rules(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Whether any rule encrypts for a subject (then the master key and key store are needed).
    pub fn encrypts(&self) -> bool {
        self.fields.iter().any(|(_, a)| *a == Action::Encrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_rules_file() {
        let r = Rules::from_toml(
            r#"
            [[field]]
            field = "actor.ip"
            action = "tokenize"
            [[field]]
            field = "actor.session_id"
            action = "mask"
            keep_last = 4
            [[field]]
            field = "actor.email"
            action = "mask"
            email_domain = true
            [[field]]
            field = "attributes.phone"
            action = "drop"
            [text]
            fields = ["data.payload_json", "reason"]
            phones = false
            "#,
        )
        .expect("rules");
        assert_eq!(r.fields.len(), 4);
        assert_eq!(
            r.fields[1],
            (Field::ActorSessionId, Action::MaskKeepLast(4))
        );
        assert_eq!(r.fields[2].1, Action::MaskEmailDomain);
        assert_eq!(r.fields[3].0, Field::Attribute("phone".into()));
        assert_eq!(r.text_fields, [Field::PayloadJson, Field::Reason]);
        assert!(r.text.emails && !r.text.phones && r.text.cards);
        assert!(!r.encrypts());
        assert!(Rules::default().encrypts());
    }

    #[test]
    fn refuses_unknown_keys_fields_and_nonsense() {
        for bad in [
            "[[field]]\nfield = \"actor.ip\"\naction = \"tokenize\"\ncolour = 1",
            "[[field]]\nfield = \"actor.shoe\"\naction = \"drop\"",
            "[[field]]\nfield = \"actor.id\"\naction = \"drop\"",
            "[[field]]\nfield = \"data.payload_json\"\naction = \"tokenize\"",
            "[[field]]\nfield = \"actor.ip\"\naction = \"tokenize\"\nkeep_last = 2",
            "[[field]]\nfield = \"actor.ip\"\naction = \"drop\"\n[[field]]\nfield = \"actor.ip\"\naction = \"tokenize\"",
            "[[field]]\nfield = \"attributes.audit.privacy.subject\"\naction = \"drop\"",
            "[other]\nx = 1",
        ] {
            assert!(Rules::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_names_round_trip() {
        for (n, f) in NAMES {
            assert_eq!(Field::parse(n).expect("known"), *f);
            assert_eq!(f.name(), *n);
        }
    }
}
