//! Sizes on the command line: plain bytes or a number with a suffix K, M, G, T, P, E (powers
//! of 1024, as dd and bmaptool read them; `KiB`, `MiB`… and `B` also accepted, any case).

/// Parses `"4096"`, `"1M"`, `"2GiB"`, `"512k"` into bytes; an error that says what was wrong
/// for anything else, including values that overflow `u64`.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.strip_prefix('-')
        .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
    {
        return Err(format!(
            "{text:?}: negative sizes are not allowed (expected bytes, or a number with K, M, G, T, P or E)"
        ));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a size (expected bytes, or a number with K, M, G, T, P or E)"
        ));
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "p" | "pib" => 50,
        "e" | "eib" => 60,
        _ => {
            return Err(format!(
                "{text:?}: unknown size suffix {suffix:?} (expected K, M, G, T, P or E)"
            ));
        }
    };
    let too_big = || format!("{text:?} is too large (more than 2^64-1 bytes)");
    let n: u64 = digits.parse().map_err(|_| too_big())?;
    n.checked_mul(1u64 << shift).ok_or_else(too_big)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn suffixes_are_powers_of_1024() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("3M"), Ok(3 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("15E"), Ok(15 << 60));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn nonsense_and_overflow_are_errors() {
        for bad in ["", "K", "-1", "1.5M", "1X", "12 34", "0x10", "1MB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_size("18446744073709551616")
                .unwrap_err()
                .contains("too large")
        );
        assert!(parse_size("16E").unwrap_err().contains("too large"));
        for negative in ["-1", "-0", "-4K"] {
            assert!(
                parse_size(negative)
                    .unwrap_err()
                    .contains("negative sizes are not allowed"),
                "{negative:?}"
            );
        }
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
    }
}
