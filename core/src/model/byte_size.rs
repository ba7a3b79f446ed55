//! Byte sizes as people write them: `64MiB`, `512 KiB`, `1GB`, `1048576`.
//!
//! One parser for every size flag and setting (`arkline serve --max-upload`,
//! `cargo ark run --memory`, …), so they all accept the same spellings and
//! refuse bad ones with the same messages.

use std::fmt;
use std::str::FromStr;

/// A number of bytes, read and shown the way people write sizes.
///
/// Parsing takes a number with an optional unit, case-insensitive, with or
/// without a space between them, surrounding whitespace ignored:
///
/// | unit | bytes |
/// |------|-------|
/// | none, `B`, `byte`, `bytes` | 1 |
/// | `K`, `KiB` | 1024 |
/// | `M`, `MiB` | 1024² |
/// | `G`, `GiB` | 1024³ |
/// | `KB`, `MB`, `GB` | 1000, 1000², 1000³ |
///
/// A fraction is accepted when it comes to a whole number of bytes (`1.5KiB` is
/// 1536). [`Display`](fmt::Display) uses the largest binary unit the size
/// reaches, with one decimal when it is not a whole number of that unit (`64 MiB`,
/// `1.5 KiB`, `12 bytes`); what it prints parses back (to the same size when no
/// rounding was needed). With serde a size is written as its number of bytes and
/// read from a number or a string.
///
/// ```
/// use arkline::model::ByteSize;
///
/// let size: ByteSize = " 64mib ".parse()?;
/// assert_eq!(size.bytes(), 64 << 20);
/// assert_eq!(size.to_string(), "64 MiB");
/// assert_eq!(ByteSize::new(1536).to_string(), "1.5 KiB");
/// assert_eq!("2MB".parse::<ByteSize>()?.bytes(), 2_000_000);
///
/// let err = "64 parsecs".parse::<ByteSize>().unwrap_err();
/// assert!(err.to_string().contains("unknown unit `parsecs`"));
/// # Ok::<(), arkline::model::ByteSizeError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(u64);

impl ByteSize {
    /// One kibibyte (1024 bytes).
    pub const KIB: ByteSize = ByteSize(1 << 10);
    /// One mebibyte.
    pub const MIB: ByteSize = ByteSize(1 << 20);
    /// One gibibyte.
    pub const GIB: ByteSize = ByteSize(1 << 30);

    /// A size of `bytes` bytes.
    pub const fn new(bytes: u64) -> ByteSize {
        ByteSize(bytes)
    }

    /// `n` kibibytes (saturating).
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n.saturating_mul(1 << 10))
    }

    /// `n` mebibytes (saturating).
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n.saturating_mul(1 << 20))
    }

    /// `n` gibibytes (saturating).
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n.saturating_mul(1 << 30))
    }

    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Whether the size is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl From<u64> for ByteSize {
    fn from(bytes: u64) -> ByteSize {
        ByteSize(bytes)
    }
}

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> u64 {
        size.0
    }
}

/// Why a text is not a [`ByteSize`]. Every message quotes the text and shows
/// how to write a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ByteSizeError {
    /// Nothing (or only whitespace) was given.
    #[error(
        "an empty value is not a size: write a number of bytes with an optional unit, like `64MiB`, `512KiB` or `1048576`"
    )]
    Empty,
    /// The text does not start with a number.
    #[error(
        "`{text}` is not a size: write a number of bytes with an optional unit, like `64MiB`, `512KiB` or `1048576`"
    )]
    NotANumber {
        /// The text as given (trimmed).
        text: String,
    },
    /// The number is followed by something that is not a unit.
    #[error(
        "`{text}` has an unknown unit `{unit}`: use B, K or KiB, M or MiB, G or GiB (powers of 1024), or KB, MB, GB (powers of 1000), like `64MiB`"
    )]
    UnknownUnit {
        /// The text as given (trimmed).
        text: String,
        /// The part after the number.
        unit: String,
    },
    /// The size does not fit in 64 bits.
    #[error("`{text}` is too large: a size is at most 2^64 - 1 bytes (about 16 EiB)")]
    TooLarge {
        /// The text as given (trimmed).
        text: String,
    },
    /// A fraction that does not come to a whole number of bytes.
    #[error(
        "`{text}` is not a whole number of bytes: give whole bytes, or a fraction of a larger unit that comes to whole bytes, like `1.5KiB` (1536 bytes)"
    )]
    Fractional {
        /// The text as given (trimmed).
        text: String,
    },
}

/// The unit of a size, as written after its number.
fn unit_factor(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" | "byte" | "bytes" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return None,
    })
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(text: &str) -> Result<ByteSize, ByteSizeError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ByteSizeError::Empty);
        }
        let number_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(number_end);
        let unit = unit.trim_start();
        let owned = || text.to_owned();
        let (whole, fraction) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        // `5`, `1.5`, `.5` and `5.` are numbers; `.`, `1.2.3` and `` are not.
        if !(digits(whole) || digits(fraction)) || fraction.contains('.') {
            return Err(ByteSizeError::NotANumber { text: owned() });
        }
        let factor = unit_factor(unit).ok_or_else(|| ByteSizeError::UnknownUnit {
            text: owned(),
            unit: unit.to_owned(),
        })?;
        let too_large = || ByteSizeError::TooLarge { text: owned() };
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let mut bytes = whole.checked_mul(factor).ok_or_else(too_large)?;
        let fraction = fraction.trim_end_matches('0');
        if !fraction.is_empty() {
            // factor × 0.fraction must be whole: factor × digits / 10^len, exactly.
            let scale = u32::try_from(fraction.len())
                .ok()
                .and_then(|len| 10u128.checked_pow(len))
                .ok_or_else(|| ByteSizeError::Fractional { text: owned() })?;
            let numerator: u128 = fraction
                .parse()
                .map_err(|_| ByteSizeError::Fractional { text: owned() })?;
            let product = numerator
                .checked_mul(u128::from(factor))
                .ok_or_else(|| ByteSizeError::Fractional { text: owned() })?;
            if product % scale != 0 {
                return Err(ByteSizeError::Fractional { text: owned() });
            }
            let part = u64::try_from(product / scale).map_err(|_| too_large())?;
            bytes = bytes.checked_add(part).ok_or_else(too_large)?;
        }
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        let bytes = self.0;
        for (unit, size) in UNITS {
            if bytes >= size {
                return if bytes.is_multiple_of(size) {
                    write!(f, "{} {unit}", bytes / size)
                } else {
                    // Precision loss past 2^53 bytes does not matter for one decimal.
                    write!(f, "{:.1} {unit}", bytes as f64 / size as f64)
                };
            }
        }
        if bytes == 1 {
            f.write_str("1 byte")
        } else {
            write!(f, "{bytes} bytes")
        }
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes, or a size like \"64MiB\"")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is not a size: a size cannot be negative")))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<u64, ByteSizeError> {
        text.parse::<ByteSize>().map(ByteSize::bytes)
    }

    #[test]
    fn numbers_with_and_without_units() {
        assert_eq!(parse("1048576"), Ok(1 << 20));
        assert_eq!(parse("12B"), Ok(12));
        assert_eq!(parse("12 bytes"), Ok(12));
        assert_eq!(parse("64MiB"), Ok(64 << 20));
        assert_eq!(parse("  64 mib\n"), Ok(64 << 20));
        assert_eq!(parse("2K"), Ok(2048));
        assert_eq!(parse("2kib"), Ok(2048));
        assert_eq!(parse("3M"), Ok(3 << 20));
        assert_eq!(parse("1G"), Ok(1 << 30));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("1kb"), Ok(1_000));
        assert_eq!(parse("2MB"), Ok(2_000_000));
        assert_eq!(parse("1 GB"), Ok(1_000_000_000));
        assert_eq!(parse("0"), Ok(0));
    }

    #[test]
    fn fractions_that_come_to_whole_bytes() {
        assert_eq!(parse("1.5KiB"), Ok(1536));
        assert_eq!(parse("1.5 MB"), Ok(1_500_000));
        assert_eq!(parse(".5K"), Ok(512));
        assert_eq!(parse("2.0GiB"), Ok(2 << 30));
        assert_eq!(parse("7."), Ok(7));
        assert_eq!(
            parse("0.3KiB"),
            Err(ByteSizeError::Fractional {
                text: "0.3KiB".into()
            })
        );
        assert!(matches!(
            parse("1.5"),
            Err(ByteSizeError::Fractional { .. })
        ));
    }

    #[test]
    fn errors_say_what_is_wrong_and_show_a_size() {
        let message = |text: &str| parse(text).expect_err(text).to_string();
        assert_eq!(parse(""), Err(ByteSizeError::Empty));
        assert!(message("   ").contains("empty"));

        let lots = message("lots");
        assert!(lots.contains("`lots` is not a size"), "{lots}");
        assert!(lots.contains("`64MiB`"), "{lots}");
        for bad in ["-5MiB", "MiB", ".", "1.2.3K", "0x10"] {
            assert!(
                matches!(
                    parse(bad),
                    Err(ByteSizeError::NotANumber { .. } | ByteSizeError::UnknownUnit { .. })
                ),
                "{bad}: {:?}",
                parse(bad)
            );
        }

        assert_eq!(
            parse("12 parsecs"),
            Err(ByteSizeError::UnknownUnit {
                text: "12 parsecs".into(),
                unit: "parsecs".into()
            })
        );
        let unit = message("64 TiB");
        assert!(unit.contains("unknown unit `TiB`"), "{unit}");
        assert!(unit.contains("KiB") && unit.contains("`64MiB`"), "{unit}");

        assert!(matches!(
            parse("99999999999999999999GiB"),
            Err(ByteSizeError::TooLarge { .. })
        ));
        assert!(matches!(
            parse("17179869184GiB"),
            Err(ByteSizeError::TooLarge { .. })
        ));
        assert!(message("18446744073709551616").contains("too large"));
        assert_eq!(parse("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn display_uses_the_largest_whole_unit() {
        assert_eq!(ByteSize::new(64 << 20).to_string(), "64 MiB");
        assert_eq!(ByteSize::new(1536).to_string(), "1.5 KiB");
        assert_eq!(ByteSize::new(12).to_string(), "12 bytes");
        assert_eq!(ByteSize::new(1).to_string(), "1 byte");
        assert_eq!(ByteSize::new(0).to_string(), "0 bytes");
        assert_eq!(ByteSize::new(1023).to_string(), "1023 bytes");
        assert_eq!(ByteSize::new(1024).to_string(), "1 KiB");
        assert_eq!(ByteSize::gib(3).to_string(), "3 GiB");
        assert_eq!(ByteSize::new(1_000_000).to_string(), "976.6 KiB");
    }

    #[test]
    fn display_parses_back() {
        for bytes in [
            0,
            1,
            12,
            1024,
            1536,
            64 << 20,
            3 << 30,
            (5 << 30) + (1 << 29),
        ] {
            let size = ByteSize::new(bytes);
            assert_eq!(size.to_string().parse(), Ok(size), "{size}");
        }
    }

    #[test]
    fn serde_writes_bytes_and_reads_numbers_or_strings() {
        let size = ByteSize::mib(64);
        assert_eq!(serde_json::to_string(&size).expect("json"), "67108864");
        let read = |json: &str| serde_json::from_str::<ByteSize>(json);
        assert_eq!(read("67108864").expect("number"), size);
        assert_eq!(read("\"64MiB\"").expect("string"), size);
        let err = read("\"64 parsecs\"").expect_err("refused").to_string();
        assert!(err.contains("unknown unit `parsecs`"), "{err}");
        let err = read("-1").expect_err("refused").to_string();
        assert!(err.contains("cannot be negative"), "{err}");
        assert!(read("true").is_err());
    }
}
