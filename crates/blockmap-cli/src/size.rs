//! Sizes on the command line, read as GNU dd reads its `bs=`, `skip=`, `seek=` and `count=`:
//! bytes, or a number with one of dd's suffixes, optionally times a second such number
//! (`2x512`). [`SIZE_HELP`] says which words mean what; the tests hold it to what `dd` itself
//! makes of each word.

/// What `--help` says about sizes: every word [`parse_size`] accepts, and its meaning.
pub(crate) const SIZE_HELP: &str = "Sizes are read as dd reads them: bytes, or a number with a \
    suffix: c = 1, w = 2, b = 512 (blocks of 512, as dd; not bytes), kB = 1000, K = KiB = 1024 \
    (k too), MB = 1000^2, M = MiB = 1024^2, and so on for G, T, P, E (GB = 1000^3, G = GiB = \
    1024^3); a trailing B counts bytes (4096B = 4096). N x M multiplies (2x512 = 1024, \
    1Kx4 = 4096). Lower-case m, g, t, p, e, a decimal point and 0x10 (hexadecimal, or dd's \
    zero multiplier) are refused, as is anything above 2^63-1 (the largest file offset; Z and \
    Y always are).";

/// The largest size: the largest file offset (`off_t`), and the largest number dd takes.
const LARGEST: u128 = i64::MAX as u128;

/// Parses a size as GNU dd does (see [`SIZE_HELP`]): `"4096"`, `"1M"`, `"2GiB"`, `"1kB"`,
/// `"2b"`, `"1Kx4"`; an error that says what was wrong for anything else, including a
/// negative number and a value above 2^63-1.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.as_bytes();
    let first = s.iter().position(|&c| !is_c_space(c));
    if first.is_some_and(|i| s[i] == b'-' && s.get(i + 1).is_some_and(u8::is_ascii_digit)) {
        return Err(format!("{text:?}: negative sizes are not allowed"));
    }
    let not_a_size = || {
        format!(
            "{text:?} is not a size (expected bytes, or a number with one of dd's suffixes: \
             c, w, b, kB, K, KiB, MB, M, MiB, … E, EiB; see --help)"
        )
    };
    let (mut value, mut at) = factor(s).ok_or_else(not_a_size)?;
    // dd's own extension of the suffixes: one `B` after them counts bytes (`4096B`, `1bB`),
    // unless it would be a second one (`1KBB`).
    if s.get(at) == Some(&b'B') && s[at - 1] != b'B' {
        at += 1;
    }
    if s.get(at) == Some(&b'x') {
        let rest = &s[at + 1..];
        // dd refuses a `B` on both sides of the `x` (`1KBx1B`).
        if s[at - 1] == b'B' && rest.contains(&b'B') {
            return Err(not_a_size());
        }
        let (times, used) = factor(rest).ok_or_else(not_a_size)?;
        if used != rest.len() {
            return Err(not_a_size());
        }
        value = value.saturating_mul(times);
        if value == 0 && text.starts_with("0x") {
            // dd reads it as zero times N (and warns): surely a hexadecimal number meant.
            return Err(format!(
                "{text:?}: hexadecimal numbers are not accepted (dd would read it as 0 x {}; \
                 write 00x… if zero is meant)",
                String::from_utf8_lossy(rest)
            ));
        }
        at = s.len();
    }
    if at != s.len() {
        return Err(match s[..at].iter().rposition(u8::is_ascii_digit) {
            Some(_) if s[at..].iter().all(u8::is_ascii_alphanumeric) => format!(
                "{text:?}: unknown size suffix {:?} (expected c, w, b, kB, K, KiB, MB, M, MiB, \
                 … E, EiB; see --help)",
                String::from_utf8_lossy(&s[at..])
            ),
            _ => not_a_size(),
        });
    }
    if value > LARGEST {
        return Err(format!(
            "{text:?} is too large (more than 2^63-1 bytes, the largest file offset)"
        ));
    }
    Ok(value as u64)
}

/// dd's number (gnulib's `xstrtoumax` with dd's suffixes): C white space, an optional `+`,
/// decimal digits (none: the suffix alone, `M`, means one of it), then at most one suffix.
/// The value (saturated: anything above 2^63-1 is refused later, whatever the digits) and
/// where it stopped; `None` if there is no number at all.
fn factor(s: &[u8]) -> Option<(u128, usize)> {
    let mut at = s.iter().position(|&c| !is_c_space(c)).unwrap_or(s.len());
    if s.get(at) == Some(&b'+') {
        at += 1;
    }
    let digits = s[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    let value = if digits == 0 {
        // Only a bare suffix: no space or sign before it.
        s.first().and_then(|&c| suffix(s, c))?;
        at = 0;
        1
    } else {
        let n = s[at..at + digits].iter().fold(0u128, |n, &d| {
            n.saturating_mul(10).saturating_add(u128::from(d - b'0'))
        });
        at += digits;
        n
    };
    match s.get(at).and_then(|&c| suffix(&s[at..], c)) {
        Some((multiplier, used)) => Some((value.saturating_mul(multiplier), at + used)),
        None => Some((value, at)),
    }
}

/// The suffix at the start of `s` (whose first byte is `c`): its multiplier and length.
/// The powers (k, K, M, G, T, P, E, Z, Y) are of 1024, or of 1000 when followed by `B` (or
/// `D`, dd's obsolete spelling); `KiB`… are powers of 1024 too.
fn suffix(s: &[u8], c: u8) -> Option<(u128, usize)> {
    let power = match c {
        b'c' => return Some((1, 1)),
        b'w' => return Some((2, 1)),
        b'b' => return Some((512, 1)),
        b'k' | b'K' => 1,
        b'M' => 2,
        b'G' => 3,
        b'T' => 4,
        b'P' => 5,
        b'E' => 6,
        b'Z' => 7,
        b'Y' => 8,
        _ => return None,
    };
    let (base, used): (u128, usize) = match s.get(1..3) {
        Some(b"iB") => (1024, 3),
        _ if matches!(s.get(1), Some(b'B' | b'D')) => (1000, 2),
        _ => (1024, 1),
    };
    Some((base.pow(power), used))
}

/// C's `isspace` in the C locale, which dd's number reader skips before a number.
fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn dd_suffixes_and_their_meanings() {
        let k = 1024u64;
        for (word, bytes) in [
            ("0", 0),
            ("4096", 4096),
            ("1c", 1),
            ("3w", 6),
            ("1b", 512),
            ("7B", 7),
            ("1bB", 512),
            ("1k", k),
            ("1K", k),
            ("1KiB", k),
            ("1kB", 1000),
            ("1KB", 1000),
            ("3M", 3 * k * k),
            ("3MB", 3_000_000),
            ("2GiB", 2 * k * k * k),
            ("2GB", 2_000_000_000),
            ("1T", k.pow(4)),
            ("1PB", 1000u64.pow(5)),
            ("7E", 7 * k.pow(6)),
            ("M", k * k),
            ("2x512", 1024),
            ("1Kx4", 4096),
            ("2xkB", 2000),
            ("00x10", 0),
            (" +1", 1),
            ("9223372036854775807", i64::MAX as u64),
        ] {
            assert_eq!(parse_size(word), Ok(bytes), "{word:?}");
        }
    }

    #[test]
    fn each_refusal_says_why() {
        for (word, says) in [
            ("-1", "negative sizes are not allowed"),
            ("-0", "negative sizes are not allowed"),
            ("-4K", "negative sizes are not allowed"),
            ("8E", "too large (more than 2^63-1 bytes"),
            ("9223372036854775808", "too large"),
            ("18446744073709551616", "too large"),
            ("99999999999T", "too large"),
            ("1Z", "too large"),
            ("4Ex2", "too large"),
            ("1X", "unknown size suffix \"X\""),
            ("1m", "unknown size suffix \"m\""),
            ("12Q", "unknown size suffix \"Q\""),
            ("1MiBB", "unknown size suffix \"B\""),
            ("0x10", "hexadecimal numbers are not accepted"),
            ("0xK", "hexadecimal numbers are not accepted"),
            ("", "is not a size"),
            ("B", "is not a size"),
            ("--seek", "is not a size"),
            ("1.5M", "is not a size"),
            ("12 34", "is not a size"),
            ("1 ", "is not a size"),
            ("1x2x3", "is not a size"),
            ("2x1B", "is not a size"),
            ("1KBx1B", "is not a size"),
        ] {
            let error = parse_size(word).expect_err(word);
            assert!(error.contains(says), "{word:?}: {error:?} lacks {says:?}");
            assert!(error.starts_with(&format!("{word:?}")), "{error:?}");
        }
    }
}
