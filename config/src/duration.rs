//! Durations written the way people read them: `3s`, `500ms`, `1m30s`, `1.5s`.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::fmt;
use std::time::Duration;

const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("min", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

const UNIT_LIST: &str = "ns, us, ms, s, m, h or d";

/// Parses a duration: one or more `<number><unit>` groups (`3s`, `500ms`, `1m30s`,
/// `1.5s`), units `ns`, `us`, `ms`, `s`, `m` (or `min`), `h`, `d`; a bare `0` is zero.
/// The error text is the problem only (the caller adds the file and the key).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration: write e.g. `3s` or `500ms`".to_string());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if int_len == 0 {
            return Err(format!(
                "invalid duration `{s}`: expected a number, e.g. `3s` or `500ms`"
            ));
        }
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
                if n == 0 {
                    return Err(format!("invalid duration `{s}`: no digits after `.`"));
                }
                f.split_at(n)
            }
            None => ("", after),
        };
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!(
                "invalid duration `{s}`: `{int_part}{}{frac_part}` has no unit (use {UNIT_LIST}, e.g. `3s`)",
                if frac_part.is_empty() { "" } else { "." }
            ));
        }
        let Some(&(_, nanos)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!(
                "invalid duration `{s}`: unknown unit `{unit}` (use {UNIT_LIST})"
            ));
        };
        let too_long = || format!("invalid duration `{s}`: too long");
        let whole: u128 = int_part.parse().map_err(|_| too_long())?;
        let mut value = whole.checked_mul(nanos).ok_or_else(too_long)?;
        if !frac_part.is_empty() {
            // Fractions finer than a nanosecond are dropped.
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().map_err(|_| too_long())?;
            let scale = 10u128.pow(digits.len() as u32);
            value = value
                .checked_add(frac * nanos / scale)
                .ok_or_else(too_long)?;
        }
        total = total.checked_add(value).ok_or_else(too_long)?;
        rest = after.trim_start();
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| format!("invalid duration `{s}`: too long"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// A duration field of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `3s`, `500ms` or `1m30s`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                if v == 0 {
                    return Ok(HumanDuration(Duration::ZERO));
                }
                Err(E::custom(format!(
                    "`{v}` has no unit: write e.g. `{v}s` or `{v}ms`"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("`{v}`: a duration cannot be negative"))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    "`{v}` has no unit: write e.g. `{v}s` or `{v}ms`"
                )))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn parses_common_forms() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("3s"), Duration::from_secs(3));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1m 30s"), Duration::from_secs(90));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.25s"), Duration::from_millis(250));
        assert_eq!(ok("2h"), Duration::from_secs(7200));
        assert_eq!(ok("1d"), Duration::from_secs(86_400));
        assert_eq!(ok("10min"), Duration::from_secs(600));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok(" 3s "), Duration::from_secs(3));
        assert_eq!(ok("3 s"), Duration::from_secs(3));
    }

    #[test]
    fn rejects_bad_forms_with_reasons() {
        let err = |s: &str| parse_duration(s).unwrap_err();
        assert!(err("3").contains("has no unit"), "{}", err("3"));
        assert!(err("3x").contains("unknown unit `x`"), "{}", err("3x"));
        assert!(err("3 parsecs").contains("unknown unit `parsecs`"));
        assert!(err("3s 4").contains("has no unit"));
        assert!(err("s").contains("expected a number"));
        assert!(err("").contains("empty duration"));
        assert!(err("1.s").contains("no digits after"));
        assert!(err("-3s").contains("expected a number"));
        assert!(err("99999999999999999999999999999999999999999d").contains("too long"));
    }
}
