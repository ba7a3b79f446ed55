//! Byte sizes on the command line: `64MiB`, `512KiB`, `1GB`, `1048576`.

/// Parses a byte size: a number with an optional unit (`B`, `KB`/`KiB`, `MB`/`MiB`,
/// `GB`/`GiB`, case-insensitive; `K`/`M`/`G` mean the binary units).
pub fn parse(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let bad = || {
        format!(
            "`{text}` is not a size: write a number of bytes with an optional unit, like `64MiB`, `512KiB` or `1048576`"
        )
    };
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1_000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    number.checked_mul(factor).ok_or_else(bad)
}

/// A size for messages: `64 MiB`, `1.5 KiB`, `12 bytes`.
pub fn display(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse("64MiB"), Ok(64 << 20));
        assert_eq!(parse("64 mib"), Ok(64 << 20));
        assert_eq!(parse("1kb"), Ok(1000));
        assert_eq!(parse("2K"), Ok(2048));
        assert_eq!(parse("1048576"), Ok(1 << 20));
        assert!(parse("lots").unwrap_err().contains("64MiB"));
        assert!(parse("12 parsecs").is_err());
        assert!(parse("99999999999999999999GiB").is_err());
    }

    #[test]
    fn sizes_display_in_the_largest_whole_unit() {
        assert_eq!(display(64 << 20), "64 MiB");
        assert_eq!(display(1536), "1.5 KiB");
        assert_eq!(display(12), "12 bytes");
    }
}
