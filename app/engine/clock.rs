//! Dates from the system clock without a date crate: run-folder names and templates' `strftime_now`.

/// Seconds since 1970-01-01 UTC, now (0 for a clock set before 1970).
pub fn unix_seconds() -> u64 {
    #[cfg(test)]
    if let Some(fixed) = FIXED_NOW.with(|f| f.get()) {
        return fixed;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
thread_local! {
    static FIXED_NOW: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Run `f` with this thread's clock stopped at `secs`, so that a test can expect a literal date.
#[cfg(test)]
pub(crate) fn with_fixed_now<T>(secs: u64, f: impl FnOnce() -> T) -> T {
    let previous = FIXED_NOW.with(|c| c.replace(Some(secs)));
    let out = f();
    FIXED_NOW.with(|c| c.set(previous));
    out
}

/// (year, month, day, hour, minute, second) in UTC, now.
pub fn utc_now() -> (i64, u32, u32, u64, u64, u64) {
    let secs = unix_seconds();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
