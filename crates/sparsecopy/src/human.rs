//! Sizes for people: the one function every summary line of the workspace uses.

/// `bytes` in the largest power-of-1024 unit that keeps the number at least 1, with one
/// decimal (`"1.5 KiB"`, `"2.0 PiB"`, `"16.0 EiB"` for `u64::MAX`); plain bytes below
/// 1 KiB (`"512 B"`). Rounded to the nearest tenth, halves up; a value that rounds to
/// 1024.0 of a unit is written as 1.0 of the next (`1048575` is `"1.0 MiB"`).
///
/// ```
/// assert_eq!(sparsecopy::human_size(1536), "1.5 KiB");
/// assert_eq!(sparsecopy::human_size(2 << 50), "2.0 PiB");
/// ```
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 2)) {
        unit += 1;
    }
    // Tenths of the unit, in integers: no float rounding at the boundaries.
    let tenths = |unit: usize| {
        let divisor = 1u128 << (10 * (unit + 1));
        (u128::from(bytes) * 10 + divisor / 2) / divisor
    };
    let mut t = tenths(unit);
    if t >= 10240 && unit + 1 < UNITS.len() {
        unit += 1;
        t = tenths(unit);
    }
    format!("{}.{} {}", t / 10, t % 10, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::human_size;

    /// Parses `"12.3 MiB"` back into (tenths, unit exponent).
    fn parse(s: &str) -> (u128, u32) {
        let (number, unit) = s.split_once(' ').unwrap();
        let exp = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
            .iter()
            .position(|u| *u == unit)
            .unwrap_or_else(|| panic!("unknown unit in {s:?}")) as u32;
        if exp == 0 {
            return (number.parse::<u128>().unwrap() * 10, 0);
        }
        let (whole, tenth) = number.split_once('.').unwrap();
        assert_eq!(tenth.len(), 1, "{s:?}");
        (
            whole.parse::<u128>().unwrap() * 10 + tenth.parse::<u128>().unwrap(),
            exp,
        )
    }

    /// The property, checked by an independent formula (f64 arithmetic on the parsed text):
    /// the number is within half a tenth of the unit of the size, at least 1 (unless bytes),
    /// and below 1024.
    fn check(bytes: u64) {
        let s = human_size(bytes);
        let (tenths, exp) = parse(&s);
        let unit = 1024f64.powi(exp as i32);
        let shown = tenths as f64 / 10.0 * unit;
        let error = (shown - bytes as f64).abs();
        if exp == 0 {
            assert_eq!(tenths / 10, u128::from(bytes), "{bytes}: {s}");
        } else {
            assert!(
                error <= unit * 0.05 * (1.0 + 1e-9),
                "{bytes}: {s} is off by {error}"
            );
            assert!(tenths >= 10, "{bytes}: {s} is below 1 of its unit");
        }
        assert!(
            tenths < 10240 || exp == 6,
            "{bytes}: {s} should use the next unit"
        );
    }

    #[test]
    fn right_at_every_unit_boundary() {
        for exp in 1..=6u32 {
            let unit = 1u64 << (10 * exp);
            for bytes in [
                unit - 1,
                unit,
                unit + 1,
                unit + unit / 20,
                unit + unit / 20 - 1,
                unit.saturating_mul(1023),
                unit.saturating_mul(1024).saturating_sub(1),
                unit.saturating_mul(1024).saturating_sub(unit / 20),
                unit.saturating_mul(1024).saturating_sub(unit / 20 + 1),
            ] {
                check(bytes);
            }
        }
        for bytes in [
            0,
            1,
            511,
            512,
            1023,
            1536,
            123_456_789,
            u64::MAX / 3,
            u64::MAX,
        ] {
            check(bytes);
        }
    }

    #[test]
    fn known_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(human_size(1 << 50), "1.0 PiB");
        assert_eq!(human_size(2 << 50), "2.0 PiB");
        assert_eq!(human_size(1023 << 50), "1023.0 PiB");
        assert_eq!(human_size(1 << 60), "1.0 EiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }
}
