//! Durations as Istio manifests write them.
//!
//! Istio's duration fields are `google.protobuf.Duration`, whose JSON form is decimal
//! seconds with an `s` suffix (`"1.5s"`, `"0s"`). Manifests in the wild also use Go's
//! `time.ParseDuration` form (`"100ms"`, `"1m30s"`), which Istio's tooling accepts too, so
//! both are read here: one or more `<decimal><unit>` terms, added up. Written from the
//! protobuf JSON mapping of `Duration` and the Go `time` package documentation.

use std::time::Duration;

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Digits of a fraction beyond this are below a nanosecond even for hours (3.6e12 ns), so
/// they are checked but not used; this also keeps the arithmetic within `u128`.
const MAX_FRACTION_DIGITS: u32 = 18;

/// Parses `"1.5s"`, `"0s"`, `"100ms"`, `"1m30s"`, `"2h"`, `"250us"` (or `"250µs"`),
/// `"10ns"`. A bare `"0"` is accepted, as Go accepts it; any other number without a unit,
/// a sign, an empty string or anything else is an error, whose message quotes the text.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = |why: &str| format!("invalid duration {s:?} ({why})");
    if s.is_empty() {
        return Err(invalid("empty"));
    }
    if s.starts_with('-') {
        return Err(invalid("must not be negative"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }

    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (whole, after_whole) = split_digits(rest);
        let (fraction, after_number) = match after_whole.strip_prefix('.') {
            Some(after_dot) => split_digits(after_dot),
            None => ("", after_whole),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid(
                "expected a number followed by a unit: h, m, s, ms, us, ns",
            ));
        }
        let unit_end = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_end);
        let unit_nanos = match unit {
            "h" => 3_600 * NANOS_PER_SECOND,
            "m" => 60 * NANOS_PER_SECOND,
            "s" => NANOS_PER_SECOND,
            "ms" => 1_000_000,
            // Go accepts both the micro sign (U+00B5) and the Greek mu (U+03BC).
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            "" => {
                return Err(invalid(
                    "missing unit: write e.g. \"5s\" or \"500ms\"; units are h, m, s, ms, us, ns",
                ));
            }
            _ => {
                return Err(invalid(&format!(
                    "unknown unit {unit:?}; units are h, m, s, ms, us, ns"
                )));
            }
        };
        let term = term_nanos(whole, fraction, unit_nanos).ok_or_else(|| invalid("too large"))?;
        total = total
            .checked_add(term)
            .ok_or_else(|| invalid("too large"))?;
        rest = after_unit;
    }

    let seconds = u64::try_from(total / NANOS_PER_SECOND).map_err(|_| invalid("too large"))?;
    // The remainder is below 1e9, so it fits.
    let nanos = (total % NANOS_PER_SECOND) as u32;
    Ok(Duration::new(seconds, nanos))
}

/// Splits `s` after its leading ASCII digits.
fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// `whole.fraction` units, in nanoseconds, rounded down. `None` on overflow.
fn term_nanos(whole: &str, fraction: &str, unit_nanos: u128) -> Option<u128> {
    let mut nanos: u128 = 0;
    for digit in whole.bytes() {
        nanos = nanos
            .checked_mul(10)?
            .checked_add(u128::from(digit - b'0'))?;
    }
    nanos = nanos.checked_mul(unit_nanos)?;

    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for digit in fraction.bytes().take(MAX_FRACTION_DIGITS as usize) {
        numerator = numerator * 10 + u128::from(digit - b'0');
        denominator *= 10;
    }
    nanos.checked_add(numerator * unit_nanos / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn protobuf_json_form() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0.000000001s"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse_duration(".5s"), Ok(ms(500)));
        assert_eq!(parse_duration("3.s"), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn go_form() {
        assert_eq!(parse_duration("100ms"), Ok(ms(100)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250μs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("10ns"), Ok(Duration::from_nanos(10)));
        assert_eq!(
            parse_duration("1h2m3s4ms5us6ns"),
            Ok(Duration::new(3_723, 4_005_006))
        );
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn long_fractions_round_down() {
        assert_eq!(
            parse_duration("0.1234567891234567891234s"),
            Ok(Duration::from_nanos(123_456_789))
        );
    }

    #[test]
    fn rejects_with_the_text_and_the_reason() {
        for (text, why) in [
            ("", "empty"),
            ("-1s", "must not be negative"),
            ("5", "missing unit"),
            ("1.5", "missing unit"),
            ("1s5", "missing unit"),
            ("5 s", "unknown unit \" s\""),
            ("5sec", "unknown unit \"sec\""),
            ("5d", "unknown unit \"d\""),
            ("s", "expected a number"),
            ("1..5s", "missing unit"),
            ("+1s", "expected a number"),
            ("abc", "expected a number"),
            ("99999999999999999999999h", "too large"),
            ("18446744073709551616s", "too large"),
        ] {
            let err = parse_duration(text).expect_err(text);
            assert!(
                err.starts_with(&format!("invalid duration {text:?} (")) && err.contains(why),
                "{text:?}: {err}"
            );
        }
    }
}
