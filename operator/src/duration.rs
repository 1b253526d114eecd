//! Durations as users write them: `30s`, `5m`, `1h30m`, `250ms`.
//!
//! The string a user wrote is kept as is (so a server-side apply round trip never rewrites it);
//! the schema pattern admits only what [`Duration::to_std`] can parse, and CEL rules compare
//! values with `duration(...)`, which reads the same syntax.

use std::borrow::Cow;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The pattern every duration in the CRD must match.
pub const PATTERN: &str = r"^([0-9]{1,9}(ms|s|m|h))+$";

/// A duration string such as `30s`, `5m` or `1h30m`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(Cow<'static, str>);

/// A duration string that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration {value:?}: {reason} (write it like 30s, 5m or 1h30m)")]
pub struct ParseError {
    value: String,
    reason: String,
}

impl Duration {
    /// A duration known at compile time (defaults).
    pub const fn from_static(s: &'static str) -> Self {
        Self(Cow::Borrowed(s))
    }

    /// Formats a std duration in the same syntax, whole milliseconds at most.
    pub fn from_std(d: std::time::Duration) -> Self {
        let mut ms = d.as_millis();
        let mut out = String::new();
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                out.push_str(&format!("{}{unit}", ms / size));
                ms %= size;
            }
        }
        if out.is_empty() {
            out.push_str("0s");
        }
        Self(Cow::Owned(out))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the string (units `h`, `m`, `s`, `ms`, concatenated).
    pub fn to_std(&self) -> Result<std::time::Duration, ParseError> {
        let err = |reason: &str| ParseError {
            value: self.0.to_string(),
            reason: reason.to_owned(),
        };
        let s = self.as_str();
        if s.is_empty() {
            return Err(err("empty"));
        }
        let mut total = std::time::Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err("expected a number"));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| err("number too large"))?;
            rest = &rest[digits..];
            let (unit, len) = if rest.starts_with("ms") {
                (std::time::Duration::from_millis(1), 2)
            } else if rest.starts_with('h') {
                (std::time::Duration::from_secs(3600), 1)
            } else if rest.starts_with('m') {
                (std::time::Duration::from_secs(60), 1)
            } else if rest.starts_with('s') {
                (std::time::Duration::from_secs(1), 1)
            } else {
                return Err(err("expected a unit: h, m, s or ms"));
            };
            rest = &rest[len..];
            let part = unit
                .checked_mul(u32::try_from(n).map_err(|_| err("number too large"))?)
                .ok_or_else(|| err("too long"))?;
            total = total.checked_add(part).ok_or_else(|| err("too long"))?;
        }
        Ok(total)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": PATTERN,
            "maxLength": 64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    fn parse(s: &str) -> Result<Std, ParseError> {
        Duration(Cow::Owned(s.to_owned())).to_std()
    }

    #[test]
    fn parses_every_unit_and_combinations() {
        assert_eq!(parse("30s").ok(), Some(Std::from_secs(30)));
        assert_eq!(parse("5m").ok(), Some(Std::from_secs(300)));
        assert_eq!(parse("1h30m").ok(), Some(Std::from_secs(5400)));
        assert_eq!(parse("250ms").ok(), Some(Std::from_millis(250)));
        assert_eq!(parse("2160h").ok(), Some(Std::from_secs(2160 * 3600)));
        assert_eq!(parse("1m1s1ms").ok(), Some(Std::from_millis(61_001)));
    }

    #[test]
    fn refuses_what_the_schema_pattern_refuses() {
        for bad in ["", "5", "m", "1.5h", "5 m", "1d", "-1s", "10us"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.to_string().contains("30s, 5m or 1h30m"), "{err}");
        }
    }

    #[test]
    fn formats_back_in_the_same_syntax() {
        assert_eq!(Duration::from_std(Std::from_secs(5400)).as_str(), "1h30m");
        assert_eq!(
            Duration::from_std(Std::from_millis(1500)).as_str(),
            "1s500ms"
        );
        assert_eq!(Duration::from_std(Std::ZERO).as_str(), "0s");
        let round = Duration::from_std(Std::from_secs(7322));
        assert_eq!(round.to_std().ok(), Some(Std::from_secs(7322)));
    }
}
