//! Quantities as people read them. One formatter for byte counts serves the engine's messages, the
//! CLI and the window, so the same amount reads the same everywhere.

/// A byte count in binary units, as memory and file limits are sized: "512 bytes", "1.5 KiB",
/// "16.0 MiB", "5.12 GiB". Gigabytes and up get two decimals, because a tenth of a GiB is enough
/// to decide whether a model fits in memory.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 | 1 => format!("{value:.1} {}", UNITS[unit]),
        _ => format!("{value:.2} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(1023), "1023 bytes");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1_500), "1.5 KiB");
        assert_eq!(bytes(5_000_000), "4.8 MiB");
        assert_eq!(bytes(16 << 20), "16.0 MiB");
        assert_eq!(bytes(5_500_000_000), "5.12 GiB");
        assert_eq!(bytes(3 << 40), "3.00 TiB");
        assert_eq!(bytes(u64::MAX), "16384.00 PiB");
    }
}
