//! Masking: keep the last n characters, keep an email's domain, and find PII-looking pieces of
//! free text (emails, phone numbers, payment card numbers) to mask inside longer strings and
//! inside the JSON of `data`.
//!
//! Detection is deliberately simple and documented (docs/privacy.md), without a regex engine:
//! - **email**: `local@domain.tld` (local part `[A-Za-z0-9._%+-]`, domain with a dot and an
//!   alphabetic top label of 2+ characters) → `***@domain.tld`;
//! - **card**: 13–19 digits, optionally grouped by single spaces or dashes, passing the Luhn
//!   check → `****` + last 4 digits;
//! - **phone**: `+` then 8–15 digits, or 10–15 digits with at least one space, dash or
//!   parenthesis between them → `***` + last 2 digits. Dots are not phone separators, so IPv4
//!   addresses and version numbers are left alone; plain digit runs (ids, epoch times) too.

use serde_json::Value;

/// What is left of a masked value.
pub const MASK: &str = "***";

/// All but the last `n` characters replaced by [`MASK`] (a value of at most `n` characters
/// becomes [`MASK`] alone: nothing short is kept whole).
pub fn keep_last(value: &str, n: usize) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= n {
        return MASK.to_owned();
    }
    let tail: String = chars[chars.len() - n..].iter().collect();
    format!("{MASK}{tail}")
}

/// An email's domain kept (`***@example.com`); a value without `@` is masked whole.
pub fn email_domain(value: &str) -> String {
    match value.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => format!("{MASK}@{domain}"),
        _ => MASK.to_owned(),
    }
}

/// Which kinds of PII [`scan_text`] masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextScan {
    pub emails: bool,
    pub phones: bool,
    pub cards: bool,
}

impl TextScan {
    pub const ALL: TextScan = TextScan {
        emails: true,
        phones: true,
        cards: true,
    };

    fn any(self) -> bool {
        self.emails || self.phones || self.cards
    }
}

fn is_local(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-')
}

fn is_domain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-')
}

/// `s` with every email, card and phone number found masked; `None` when nothing was found.
pub fn scan_text(s: &str, scan: TextScan) -> Option<String> {
    if !scan.any() {
        return None;
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut i = 0;
    while i < chars.len() {
        if scan.emails {
            if let Some((start_back, end, domain)) = email_at(&chars, i) {
                // `start_back` chars already copied belong to the local part: take them back.
                for _ in 0..start_back {
                    out.pop();
                }
                out.push_str(MASK);
                out.push('@');
                out.push_str(&domain);
                i = end;
                changed = true;
                continue;
            }
        }
        if scan.phones || scan.cards {
            if let Some((end, masked)) = number_at(&chars, i, scan) {
                out.push_str(&masked);
                i = end;
                changed = true;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    changed.then_some(out)
}

/// At an `@` at `i`: (chars of the local part before it, end of the email, its domain).
fn email_at(chars: &[char], i: usize) -> Option<(usize, usize, String)> {
    if chars[i] != '@' {
        return None;
    }
    let mut start = i;
    while start > 0 && is_local(chars[start - 1]) {
        start -= 1;
    }
    let mut end = i + 1;
    while end < chars.len() && is_domain(chars[end]) {
        end += 1;
    }
    // A trailing dot or dash ends a sentence, not a domain.
    while end > i + 1 && matches!(chars[end - 1], '.' | '-') {
        end -= 1;
    }
    let domain: String = chars[i + 1..end].iter().collect();
    let top = domain.rsplit('.').next().unwrap_or("");
    let ok = start < i
        && domain.contains('.')
        && top.len() >= 2
        && top.chars().all(|c| c.is_ascii_alphabetic());
    ok.then_some((i - start, end, domain))
}

/// A card or phone number starting at `i` (at a word boundary): (its end, the masked text).
fn number_at(chars: &[char], i: usize, scan: TextScan) -> Option<(usize, String)> {
    let plus = chars[i] == '+';
    let first_digit = if plus || chars[i] == '(' { i + 1 } else { i };
    if first_digit >= chars.len() || !chars[first_digit].is_ascii_digit() {
        return None;
    }
    if i > 0 && (chars[i - 1].is_ascii_alphanumeric() || chars[i - 1] == '.') {
        return None;
    }
    let mut digits = String::new();
    let mut separators = 0;
    let mut card_shape = true; // only single spaces/dashes between digits
    let mut end = first_digit;
    let mut j = first_digit;
    while j < chars.len() {
        let c = chars[j];
        if c.is_ascii_digit() {
            digits.push(c);
            j += 1;
            end = j;
        } else if matches!(c, ' ' | '-' | '(' | ')')
            && j + 1 < chars.len()
            && (chars[j + 1].is_ascii_digit() || (c == ')' && chars[j + 1] == ' '))
        {
            if matches!(c, '(' | ')') {
                card_shape = false;
            }
            separators += 1;
            j += 1;
        } else {
            break;
        }
    }
    // A number glued to letters, or continued by a dot and a digit (IP, version), is not a
    // phone or card; a dot ending a sentence is fine.
    let glued = chars.get(end).is_some_and(|c| c.is_ascii_alphabetic())
        || (chars.get(end) == Some(&'.') && chars.get(end + 1).is_some_and(|c| c.is_ascii_digit()));
    if glued {
        return None;
    }
    let n = digits.len();
    if scan.cards && !plus && card_shape && (13..=19).contains(&n) && luhn(&digits) {
        return Some((end, format!("****{}", &digits[n - 4..])));
    }
    let phone = (plus && (8..=15).contains(&n)) || ((10..=15).contains(&n) && separators > 0);
    if scan.phones && phone {
        return Some((end, format!("{MASK}{}", &digits[n - 2..])));
    }
    None
}

fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// Masks PII-looking text in every string value of a JSON document (object keys are kept) and
/// returns it normalised (`schemas::json::normalized_json`), or `None` if nothing changed. Text
/// that is not JSON is scanned as plain text.
pub fn scan_json(text: &str, scan: TextScan) -> Option<String> {
    let Ok(mut v) = serde_json::from_str::<Value>(text) else {
        return scan_text(text, scan);
    };
    walk(&mut v, scan).then(|| schemas::json::normalized_json(&v))
}

fn walk(v: &mut Value, scan: TextScan) -> bool {
    match v {
        Value::String(s) => match scan_text(s, scan) {
            Some(masked) => {
                *s = masked;
                true
            }
            None => false,
        },
        Value::Array(items) => items.iter_mut().fold(false, |acc, x| walk(x, scan) | acc),
        Value::Object(map) => map
            .iter_mut()
            .fold(false, |acc, (_, x)| walk(x, scan) | acc),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(s: &str) -> String {
        scan_text(s, TextScan::ALL).unwrap_or_else(|| s.to_owned())
    }

    #[test]
    fn keeps_last_n_and_email_domains() {
        assert_eq!(keep_last("4111111111111111", 4), "***1111");
        assert_eq!(keep_last("abc", 4), "***");
        assert_eq!(email_domain("ada@example.com"), "***@example.com");
        assert_eq!(email_domain("no-at-sign"), "***");
    }

    #[test]
    fn finds_emails_cards_and_phones_in_text() {
        assert_eq!(
            scan("mail ada.l+x@corp.example.com, or bob@x.io."),
            "mail ***@corp.example.com, or ***@x.io."
        );
        assert_eq!(scan("card 4111 1111 1111 1111 ok"), "card ****1111 ok");
        assert_eq!(scan("card 4111-1111-1111-1111"), "card ****1111");
        assert_eq!(scan("call +44 20 7946 0958 now"), "call ***58 now");
        assert_eq!(scan("call (555) 123-4567"), "call ***67");
        assert_eq!(scan("tel 555-123-4567."), "tel ***67.");
    }

    #[test]
    fn leaves_ids_ips_dates_and_plain_numbers_alone() {
        for s in [
            "192.168.1.100",
            "2024-01-15T10:30:00Z",
            "v1.2.3",
            "user-123",
            "1705314600000000",
            "4111111111111112", // fails Luhn
            "order 1234567890",
            "a@b",
            "@handle",
            "evt-550e8400-e29b-41d4-a716-446655440000",
        ] {
            assert_eq!(scan_text(s, TextScan::ALL), None, "{s}");
        }
    }

    #[test]
    fn masks_inside_json_strings_only() {
        let json = r#"{"contact":{"email":"ada@example.com"},"count":4111111111111111,"note":"ring +1 415 555 0100","list":["x","card 4111111111111111"]}"#;
        let out = scan_json(json, TextScan::ALL).expect("changed");
        assert_eq!(
            out,
            r#"{"contact":{"email":"***@example.com"},"count":4111111111111111,"list":["x","card ****1111"],"note":"ring ***00"}"#
        );
        assert_eq!(scan_json(r#"{"confidence":0.95}"#, TextScan::ALL), None);
        let only_emails = TextScan {
            emails: true,
            phones: false,
            cards: false,
        };
        assert_eq!(
            scan_json(r#"{"n":"4111111111111111 a@b.cd"}"#, only_emails).as_deref(),
            Some(r#"{"n":"4111111111111111 ***@b.cd"}"#)
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// A Luhn-valid card number of `len` digits starting with `prefix`.
    fn card(prefix: &str, body: &[u8], len: usize) -> String {
        let mut d: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
        d.extend(body.iter().map(|b| b % 10));
        d.truncate(len - 1);
        while d.len() < len - 1 {
            d.push(0);
        }
        // Check digit: the one that makes the Luhn sum a multiple of 10.
        let s: String = d.iter().map(|x| char::from(b'0' + x)).collect();
        let check = (0..10u8).find(|c| luhn(&format!("{s}{c}"))).unwrap_or(0);
        format!("{s}{check}")
    }

    proptest! {
        #[test]
        fn emails_in_text_never_survive(
            local in "[a-z][a-z0-9._+-]{0,15}", domain in "[a-z][a-z0-9-]{0,10}",
            tld in "[a-z]{2,6}", before in "[ a-zA-Z,;:]{0,10}", after in "[ ,;:!?]{0,10}",
        ) {
            let email = format!("{local}@{domain}.{tld}");
            let masked = scan_text(&format!("{before} {email}{after}"), TextScan::ALL)
                .expect("found");
            prop_assert!(!masked.contains(&email), "{masked}");
            let domain_kept = format!("{MASK}@{domain}.{tld}");
            prop_assert!(masked.contains(&domain_kept), "{}", masked);
        }

        #[test]
        fn luhn_valid_cards_never_survive(
            body in proptest::collection::vec(any::<u8>(), 19), len in 13usize..=19,
            grouped in any::<bool>(),
        ) {
            let number = card("4", &body, len);
            let shown = if grouped {
                number.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>().join(" ")
            } else {
                number.clone()
            };
            let masked = scan_text(&format!("paid with {shown} today"), TextScan::ALL)
                .expect("found");
            prop_assert!(!masked.contains(&shown), "{}", masked);
            let tail = format!("****{}", &number[len - 4..]);
            prop_assert!(masked.contains(&tail), "{}", masked);
        }
    }
}
