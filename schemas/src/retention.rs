//! The retention policy language shared by every store that deletes or locks by age
//! (sink-archive under S3 Object Lock, sink-clickhouse by TTL; docs/retention.md). One grammar,
//! one canonical text, one date arithmetic, so one string configures both sinks and the two
//! `audit.retention.policy_set` events of a bank name the same policy in the same words.
//!
//! Grammar: `default=<span>[,<class>=<span>]...`, where a class is an `EventCategory` in snake
//! case (`user_interaction`, `security`, ...; case, `-` and spaces around parts are tolerated)
//! and a span is `<n>y`, `<n>mo`, `<n>d`, `<n>h` (n ≥ 1) or `forever`. Without `default=`,
//! the default is seven years (seed 004). Pure: no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use time::{Date, Month, OffsetDateTime};

use crate::EventCategory;

/// Event type of a retention policy change, whichever store made it.
pub const POLICY_SET_EVENT_TYPE: &str = "audit.retention.policy_set";
/// Attributes every `audit.retention.policy_set` event carries (stores add their own extras).
/// `clickhouse` or `archive`.
pub const ATTR_STORE: &str = "audit.retention.store";
/// Canonical text of the policy replaced, or [`NO_POLICY`].
pub const ATTR_OLD_POLICY: &str = "audit.retention.old_policy";
/// Canonical text of the policy now in force.
pub const ATTR_NEW_POLICY: &str = "audit.retention.new_policy";
/// The old policy when none was ever recorded by that store.
pub const NO_POLICY: &str = "none";
/// The default policy of both sinks: seven years for every class (seed 004).
pub const DEFAULT_POLICY: &str = "default=7y";

/// Largest span accepted, in each unit: a thousand years (beyond that a typo is likelier than
/// intent, and dates stay far inside `time`'s range).
const MAX_YEARS: u32 = 1000;

/// How long an event is kept after its event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Span {
    Hours(u32),
    Days(u32),
    Months(u32),
    Years(u32),
    Forever,
}

impl Span {
    /// The same span in its largest whole unit (`24h` → `1d`, `24mo` → `2y`): equal spans
    /// have equal canonical text. Exact: a UTC day is 24 hours, and 12 calendar months are a
    /// calendar year under [`Span::after`].
    pub fn normalized(self) -> Span {
        match self {
            Span::Hours(n) if n % 24 == 0 => Span::Days(n / 24),
            Span::Months(n) if n % 12 == 0 => Span::Years(n / 12),
            s => s,
        }
    }

    /// `t` + this span; `None` for forever. Months and years are calendar ones (the same day
    /// and time, later); a day the target month lacks (31 April, 29 February) rolls to the
    /// first of the next month: never shorter than asked.
    pub fn after(self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        match self {
            Span::Hours(n) => Some(t + time::Duration::hours(i64::from(n))),
            Span::Days(n) => Some(t + time::Duration::days(i64::from(n))),
            Span::Months(n) => Some(add_months(t, n)),
            Span::Years(n) => Some(add_months(t, n.saturating_mul(12))),
            Span::Forever => None,
        }
    }
}

fn add_months(t: OffsetDateTime, n: u32) -> OffsetDateTime {
    let m0 = i64::from(t.month() as u8 - 1) + i64::from(n);
    let year = i64::from(t.year()) + m0 / 12;
    let Ok(year) = i32::try_from(year) else {
        return Date::MAX.midnight().assume_utc();
    };
    // m0 % 12 is 0..=11, so the month is valid.
    let month = Month::try_from((m0 % 12) as u8 + 1).unwrap_or(Month::December);
    let date = Date::from_calendar_date(year, month, t.day())
        .or_else(|_| {
            // Roll to the 1st of the next month.
            let (y, m) = if month == Month::December {
                (year + 1, Month::January)
            } else {
                (year, month.next())
            };
            Date::from_calendar_date(y, m, 1)
        })
        .unwrap_or(Date::MAX);
    t.replace_date(date)
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Span::Hours(n) => write!(f, "{n}h"),
            Span::Days(n) => write!(f, "{n}d"),
            Span::Months(n) => write!(f, "{n}mo"),
            Span::Years(n) => write!(f, "{n}y"),
            Span::Forever => f.write_str("forever"),
        }
    }
}

/// A policy text that does not parse; the message names the bad part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retention policy: {0}")]
pub struct PolicyError(pub String);

impl FromStr for Span {
    type Err = PolicyError;
    fn from_str(text: &str) -> Result<Self, PolicyError> {
        let s = text.trim().to_ascii_lowercase();
        if s == "forever" {
            return Ok(Span::Forever);
        }
        let bad = || {
            PolicyError(format!(
                "span {text:?}: expected a whole number n ≥ 1 then y (years), mo (months), \
                 d (days) or h (hours), e.g. 7y, or forever"
            ))
        };
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (digits, unit) = s.split_at(split);
        if digits.is_empty() {
            return Err(bad());
        }
        let too_long = || PolicyError(format!("span {text:?} is over {MAX_YEARS} years"));
        let n: u32 = digits.parse().map_err(|_| too_long())?;
        if n == 0 {
            return Err(bad());
        }
        let (span, limit) = match unit {
            "y" => (Span::Years(n), MAX_YEARS),
            "mo" => (Span::Months(n), MAX_YEARS * 12),
            "d" => (Span::Days(n), MAX_YEARS * 366),
            "h" => (Span::Hours(n), MAX_YEARS * 366 * 24),
            _ => return Err(bad()),
        };
        if n > limit {
            return Err(too_long());
        }
        Ok(span)
    }
}

/// The event classes a policy may name: `EventCategory` in snake case, in the enum's order.
pub const CLASSES: [(&str, EventCategory); 7] = [
    ("user_interaction", EventCategory::UserInteraction),
    ("system_processing", EventCategory::SystemProcessing),
    ("governance", EventCategory::Governance),
    ("infrastructure", EventCategory::Infrastructure),
    ("security", EventCategory::Security),
    ("telemetry", EventCategory::Telemetry),
    ("other", EventCategory::Other),
];

/// The policy name of a class (`security`).
pub fn class_name(c: EventCategory) -> &'static str {
    CLASSES
        .iter()
        .find(|(_, k)| *k == c)
        .map_or("other", |(n, _)| n)
}

/// The class a policy names (`Security`, `SECURITY`, `user-interaction` all accepted).
pub fn class_from_name(name: &str) -> Option<EventCategory> {
    let key = name.trim().to_ascii_lowercase().replace('-', "_");
    CLASSES.iter().find(|(n, _)| *n == key).map(|(_, c)| *c)
}

/// Retention spans: a default and per-class overrides (spans kept normalised).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub default: Span,
    /// Class name (from [`CLASSES`]) → span.
    pub overrides: BTreeMap<&'static str, Span>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default: Span::Years(7),
            overrides: BTreeMap::new(),
        }
    }
}

impl Policy {
    /// Parses the policy grammar (module docs). Errors name the entry at fault.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let mut default = None;
        let mut overrides = BTreeMap::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (key, value) = entry.split_once('=').ok_or_else(|| {
                PolicyError(format!(
                    "entry {entry:?}: expected <class>=<span>, e.g. security=10y"
                ))
            })?;
            let span = value
                .parse::<Span>()
                .map_err(|e| PolicyError(format!("entry {entry:?}: {}", e.0)))?
                .normalized();
            if key.trim().eq_ignore_ascii_case("default") {
                if default.replace(span).is_some() {
                    return Err(PolicyError(format!(
                        "entry {entry:?}: `default` given twice"
                    )));
                }
                continue;
            }
            let Some(class) = class_from_name(key) else {
                let names: Vec<&str> = CLASSES.iter().map(|(n, _)| *n).collect();
                return Err(PolicyError(format!(
                    "entry {entry:?}: unknown event class {:?} (default or one of {})",
                    key.trim(),
                    names.join(", ")
                )));
            };
            if overrides.insert(class_name(class), span).is_some() {
                return Err(PolicyError(format!(
                    "entry {entry:?}: class {} given twice",
                    class_name(class)
                )));
            }
        }
        Ok(Policy {
            default: default.unwrap_or(Span::Years(7)),
            overrides,
        })
    }

    /// The canonical text: `default=…` then the overrides sorted by class name, spans
    /// normalised, `,`-separated. Two policies are equal exactly when their canonical texts
    /// are; this is what the chained events and the stores' records carry.
    pub fn canonical(&self) -> String {
        // BTreeMap order: sorted by class name.
        let mut s = format!("default={}", self.default.normalized());
        for (k, v) in self.overrides.iter().map(|(k, v)| (k, v.normalized())) {
            s.push_str(&format!(",{k}={v}"));
        }
        s
    }

    /// The span of a class.
    pub fn span(&self, c: EventCategory) -> Span {
        self.overrides
            .get(class_name(c))
            .copied()
            .unwrap_or(self.default)
    }

    /// Every span the policy uses (default first).
    pub fn spans(&self) -> impl Iterator<Item = Span> + '_ {
        std::iter::once(self.default).chain(self.overrides.values().copied())
    }

    /// Whether some class is kept forever.
    pub fn has_forever(&self) -> bool {
        self.spans().any(|s| s == Span::Forever)
    }

    /// End of retention of an event of `class` at `event_time` (`None`: kept forever).
    pub fn retain_until(
        &self,
        class: EventCategory,
        event_time: OffsetDateTime,
    ) -> Option<OffsetDateTime> {
        self.span(class).after(event_time)
    }

    /// The latest end of retention of an event of any class at `t` (`None`: some class is
    /// kept forever).
    pub fn longest_after(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        self.spans()
            .map(|s| s.after(t))
            .try_fold(t, |acc, u| u.map(|u| acc.max(u)))
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        Policy::parse(s)
    }
}

/// Microseconds since the epoch as a UTC time (clamped to the representable range).
pub fn from_us(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).unwrap_or(if us < 0 {
        OffsetDateTime::UNIX_EPOCH
    } else {
        Date::MAX.midnight().assume_utc()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn spans_parse_print_and_normalise() {
        assert_eq!("7y".parse::<Span>(), Ok(Span::Years(7)));
        assert_eq!(" 30D".parse::<Span>(), Ok(Span::Days(30)));
        assert_eq!("13mo".parse::<Span>(), Ok(Span::Months(13)));
        assert_eq!("36h".parse::<Span>(), Ok(Span::Hours(36)));
        assert_eq!("Forever".parse::<Span>(), Ok(Span::Forever));
        for bad in [
            "",
            "y",
            "7",
            "7w",
            "7m",
            "-1d",
            "1.5y",
            "7 y",
            "0d",
            "99999999999y",
            "1001y",
            "12001mo",
            "never",
        ] {
            assert!(bad.parse::<Span>().is_err(), "{bad}");
        }
        assert_eq!(Span::Hours(48).normalized(), Span::Days(2));
        assert_eq!(Span::Months(24).normalized(), Span::Years(2));
        assert_eq!(Span::Months(18).normalized(), Span::Months(18));
        assert_eq!(Span::Days(7).normalized(), Span::Days(7));
        for s in ["7y", "90d", "13mo", "36h", "forever"] {
            assert_eq!(s.parse::<Span>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn calendar_arithmetic_is_never_shorter() {
        let after = |s: Span, at: &str| s.after(t(at)).unwrap();
        assert_eq!(
            after(Span::Years(7), "2024-06-01T12:30:00Z"),
            t("2031-06-01T12:30:00Z")
        );
        // 29 February + 1 year: 1 March, not 28 February.
        assert_eq!(
            after(Span::Years(1), "2024-02-29T10:00:00Z"),
            t("2025-03-01T10:00:00Z")
        );
        assert_eq!(
            after(Span::Years(4), "2024-02-29T10:00:00Z"),
            t("2028-02-29T10:00:00Z")
        );
        // 31 January + 1 month: 1 March; + 13 months crosses the year.
        assert_eq!(
            after(Span::Months(1), "2026-01-31T00:00:00Z"),
            t("2026-03-01T00:00:00Z")
        );
        assert_eq!(
            after(Span::Months(13), "2026-12-15T00:00:00Z"),
            t("2028-01-15T00:00:00Z")
        );
        assert_eq!(
            after(Span::Months(1), "2026-12-31T00:00:00Z"),
            t("2027-01-31T00:00:00Z")
        );
        assert_eq!(
            after(Span::Days(1), "2024-02-28T23:00:00Z"),
            t("2024-02-29T23:00:00Z")
        );
        assert_eq!(
            after(Span::Hours(25), "2024-01-01T00:00:00Z"),
            t("2024-01-02T01:00:00Z")
        );
        assert_eq!(Span::Forever.after(t("2024-01-01T00:00:00Z")), None);
    }

    #[test]
    fn policies_parse_canonically() {
        let p = Policy::parse("security=10y, default=84mo,User-Interaction=1y,TELEMETRY=2160h")
            .unwrap();
        assert_eq!(p.default, Span::Years(7));
        assert_eq!(p.span(EventCategory::Security), Span::Years(10));
        assert_eq!(p.span(EventCategory::Telemetry), Span::Days(90));
        assert_eq!(p.span(EventCategory::Other), Span::Years(7));
        assert_eq!(
            p.canonical(),
            "default=7y,security=10y,telemetry=90d,user_interaction=1y"
        );
        assert_eq!(Policy::parse("").unwrap().canonical(), DEFAULT_POLICY);
        assert_eq!(
            Policy::parse("security=1d").unwrap().default,
            Span::Years(7)
        );
        assert_eq!(
            Policy::parse("default=forever,governance=forever")
                .unwrap()
                .canonical(),
            "default=forever,governance=forever"
        );
        assert_eq!(Policy::default(), Policy::parse(DEFAULT_POLICY).unwrap());
        // Every error names the bad part.
        for (bad, part) in [
            ("default", "\"default\""),
            ("default=7y,default=8y", "default=8y"),
            ("secret=1y", "secret"),
            ("security=1y,SECURITY=2y", "SECURITY=2y"),
            ("default=7y,security=1w", "security=1w"),
            ("default=0d", "default=0d"),
        ] {
            let e = Policy::parse(bad).unwrap_err().to_string();
            assert!(e.contains(part), "{bad}: {e}");
        }
        let e = Policy::parse("secret=1y").unwrap_err().to_string();
        assert!(e.contains("security"), "lists the classes: {e}");
        for (name, c) in CLASSES {
            assert_eq!(class_name(c), name);
            assert_eq!(class_from_name(&name.to_ascii_uppercase()), Some(c));
        }
    }

    #[test]
    fn retain_until_and_the_longest_span() {
        let p = Policy::parse("default=1d,security=3d").unwrap();
        let at = t("2026-01-01T00:00:00Z");
        assert_eq!(
            p.retain_until(EventCategory::Security, at),
            Some(t("2026-01-04T00:00:00Z"))
        );
        assert_eq!(
            p.retain_until(EventCategory::Telemetry, at),
            Some(t("2026-01-02T00:00:00Z"))
        );
        assert_eq!(p.longest_after(at), Some(t("2026-01-04T00:00:00Z")));
        let f = Policy::parse("default=1d,governance=forever").unwrap();
        assert!(f.has_forever());
        assert_eq!(f.retain_until(EventCategory::Governance, at), None);
        assert_eq!(f.longest_after(at), None);
        assert_eq!(from_us(0), OffsetDateTime::UNIX_EPOCH);
    }

    fn span() -> impl Strategy<Value = Span> {
        prop_oneof![
            (1u32..=MAX_YEARS * 366 * 24).prop_map(Span::Hours),
            (1u32..=MAX_YEARS * 366).prop_map(Span::Days),
            (1u32..=MAX_YEARS * 12).prop_map(Span::Months),
            (1u32..=MAX_YEARS).prop_map(Span::Years),
            Just(Span::Forever),
        ]
    }

    fn policy() -> impl Strategy<Value = Policy> {
        (
            span(),
            proptest::collection::btree_map(0usize..CLASSES.len(), span(), 0..=CLASSES.len()),
        )
            .prop_map(|(default, o)| Policy {
                default: default.normalized(),
                overrides: o
                    .into_iter()
                    .map(|(i, s)| (CLASSES[i].0, s.normalized()))
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn parse_of_canonical_is_identity(p in policy()) {
            let text = p.canonical();
            prop_assert_eq!(Policy::parse(&text).unwrap(), p.clone());
            // And the canonical text is a fixed point.
            prop_assert_eq!(Policy::parse(&text).unwrap().canonical(), text);
        }

        #[test]
        fn normalising_keeps_the_date(s in span(), secs in 0i64..4_102_444_800) {
            let at = OffsetDateTime::from_unix_timestamp(secs).unwrap();
            prop_assert_eq!(s.after(at), s.normalized().after(at));
            if let Some(u) = s.after(at) {
                prop_assert!(u > at);
            }
        }
    }
}
