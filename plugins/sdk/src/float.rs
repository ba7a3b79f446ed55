//! Decimal text to `f64`, correctly rounded, in little code.
//!
//! Why not `str::parse::<f64>`: core's parser (Eisel–Lemire) carries an
//! 11 KB table of 128-bit powers of five, a tenth of a small step's
//! component, to be fast on inputs a step config has a handful of. This
//! parser takes the two paths that need no table:
//!
//! - Clinger's fast path: a mantissa of at most 2^53 times a power of ten of
//!   at most 10^22 is exact in `f64`, so one multiplication or division is
//!   correctly rounded;
//! - otherwise the "simple decimal conversion" (Nigel Tao's, the slow path of
//!   core's `dec2flt`, from which the shifting code below is adapted): the
//!   decimal digits are shifted by powers of two until the value is in
//!   [1/2, 1), then the 53 bits are read off with round-half-to-even. It is
//!   exact for any input, slower (microseconds), and its powers of five are
//!   worked out when needed instead of read from a table.
//!
//! The caller has checked the JSON number grammar; the text here is
//! `-?digits(.digits)?([eE][+-]?digits)?`.

/// Digits kept; beyond them only "some digit was not zero" is recorded
/// (enough to round correctly: 767 significant digits decide any `f64`).
const MAX_DIGITS: usize = 768;
/// Where a decimal point so far out means zero or infinity.
const DECIMAL_POINT_RANGE: i32 = 2047;
/// The largest shift in one step (`n << 60` of a digit stays in a `u64`).
const MAX_SHIFT: usize = 60;
/// Bits of an `f64` mantissa after the hidden bit.
const MANTISSA_BITS: u32 = 52;
/// The smallest binary exponent of a normal `f64`.
const MIN_EXPONENT: i32 = -1023;
/// The biased exponent of infinity.
const INFINITE_POWER: i32 = 0x7FF;

/// Parses `text` (JSON number grammar) to the nearest `f64`; a magnitude
/// beyond `f64::MAX` is infinite, as with `str::parse`.
pub(crate) fn parse(text: &str) -> f64 {
    let (negative, digits) = match text.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let d = Decimal::parse(digits);
    let value = d.fast().unwrap_or_else(|| d.slow());
    if negative { -value } else { value }
}

/// A decimal number 0.d₁d₂d₃… × 10^`point`.
struct Decimal {
    /// Significant digits in use (no leading or trailing zeros once parsed).
    len: usize,
    /// The power of ten the digits are scaled by (digits before the point).
    point: i32,
    /// A non-zero digit was dropped past [`MAX_DIGITS`].
    truncated: bool,
    digits: [u8; MAX_DIGITS],
}

impl Decimal {
    fn parse(s: &[u8]) -> Decimal {
        let mut d = Decimal {
            len: 0,
            point: 0,
            truncated: false,
            digits: [0; MAX_DIGITS],
        };
        let mantissa_end = s
            .iter()
            .position(|b| matches!(b, b'e' | b'E'))
            .unwrap_or(s.len());
        // Every digit of the mantissa, the point's place among them.
        let mut before_point = 0i32;
        let mut seen_point = false;
        let mut leading = true;
        // Zeros read but not yet stored: they count only if a non-zero follows.
        let mut zeros = 0usize;
        for &b in &s[..mantissa_end] {
            if b == b'.' {
                seen_point = true;
                continue;
            }
            let digit = b - b'0';
            if leading {
                if digit == 0 {
                    if seen_point {
                        before_point -= 1;
                    }
                    continue;
                }
                leading = false;
            }
            if !seen_point {
                before_point += 1;
            }
            if digit == 0 {
                zeros += 1;
                continue;
            }
            for _ in 0..zeros {
                d.push(0);
            }
            zeros = 0;
            d.push(digit);
        }
        if d.len == 0 {
            return d;
        }
        let mut exponent = 0i32;
        if mantissa_end < s.len() {
            let mut rest = &s[mantissa_end + 1..];
            let negative = rest.first() == Some(&b'-');
            if let Some(b'+' | b'-') = rest.first() {
                rest = &rest[1..];
            }
            for &b in rest {
                // Beyond this the value is zero or infinite anyway.
                if exponent < 0x10000 {
                    exponent = exponent * 10 + i32::from(b - b'0');
                }
            }
            if negative {
                exponent = -exponent;
            }
        }
        d.point = before_point + exponent;
        d
    }

    fn push(&mut self, digit: u8) {
        if self.len < MAX_DIGITS {
            self.digits[self.len] = digit;
            self.len += 1;
        } else if digit != 0 {
            self.truncated = true;
        }
    }

    /// Clinger's fast path: exact when the mantissa and the power of ten
    /// are both exact in `f64`.
    fn fast(&self) -> Option<f64> {
        if self.len == 0 {
            return Some(0.0);
        }
        if self.len > 19 || self.truncated {
            return None;
        }
        let mantissa = self.digits[..self.len]
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d));
        let exponent = self.point - self.len as i32;
        if mantissa > 1 << 53 || !(-22..=22).contains(&exponent) {
            return None;
        }
        let mut power = 1.0f64;
        for _ in 0..exponent.unsigned_abs() {
            power *= 10.0;
        }
        let m = mantissa as f64;
        Some(if exponent < 0 { m / power } else { m * power })
    }

    /// The simple decimal conversion: exact for any input.
    fn slow(mut self) -> f64 {
        // Rounded shifts for a decimal point `n` places out: ⌊n·log₂10⌋.
        const POWERS: [u8; 19] = [
            0, 3, 6, 9, 13, 16, 19, 23, 26, 29, 33, 36, 39, 43, 46, 49, 53, 56, 59,
        ];
        let shift_for = |n: usize| POWERS.get(n).map_or(MAX_SHIFT, |&p| usize::from(p));
        if self.point < -324 {
            return 0.0;
        }
        if self.point >= 310 {
            return f64::INFINITY;
        }
        let mut exp2 = 0i32;
        // Toward [1/2, 1) from above.
        while self.point > 0 {
            let shift = shift_for(self.point as usize);
            self.right_shift(shift);
            if self.point < -DECIMAL_POINT_RANGE {
                return 0.0;
            }
            exp2 += shift as i32;
        }
        // … and from below.
        while self.point <= 0 {
            let shift = if self.point == 0 {
                match self.digits[0] {
                    5.. => break,
                    0 | 1 => 2,
                    _ => 1,
                }
            } else {
                shift_for(self.point.unsigned_abs() as usize)
            };
            self.left_shift(shift);
            if self.point > DECIMAL_POINT_RANGE {
                return f64::INFINITY;
            }
            exp2 -= shift as i32;
        }
        // In [1/2, 1); the binary format's mantissa is in [1, 2).
        exp2 -= 1;
        while MIN_EXPONENT + 1 > exp2 {
            let n = ((MIN_EXPONENT + 1 - exp2) as usize).min(MAX_SHIFT);
            self.right_shift(n);
            exp2 += n as i32;
        }
        if exp2 - MIN_EXPONENT >= INFINITE_POWER {
            return f64::INFINITY;
        }
        self.left_shift(MANTISSA_BITS as usize + 1);
        let mut mantissa = self.round();
        if mantissa >= 1 << (MANTISSA_BITS + 1) {
            // Rounding carried into a new bit.
            self.right_shift(1);
            exp2 += 1;
            mantissa = self.round();
            if exp2 - MIN_EXPONENT >= INFINITE_POWER {
                return f64::INFINITY;
            }
        }
        let mut power2 = exp2 - MIN_EXPONENT;
        if mantissa < 1 << MANTISSA_BITS {
            // Subnormal.
            power2 -= 1;
        }
        mantissa &= (1 << MANTISSA_BITS) - 1;
        f64::from_bits(((power2 as u64) << MANTISSA_BITS) | mantissa)
    }

    fn trim(&mut self) {
        while self.len != 0 && self.digits[self.len - 1] == 0 {
            self.len -= 1;
        }
    }

    /// The integer part, rounded half to even (the digits past the point
    /// and `truncated` decide).
    fn round(&self) -> u64 {
        if self.len == 0 || self.point < 0 {
            return 0;
        }
        if self.point > 18 {
            return u64::MAX;
        }
        let point = self.point as usize;
        let mut n = 0u64;
        for i in 0..point {
            n *= 10;
            if i < self.len {
                n += u64::from(self.digits[i]);
            }
        }
        if point < self.len {
            let mut up = self.digits[point] >= 5;
            if self.digits[point] == 5 && point + 1 == self.len {
                // Exactly half: up if anything was dropped, else to even.
                up = self.truncated || (point != 0 && self.digits[point - 1] % 2 == 1);
            }
            if up {
                n += 1;
            }
        }
        n
    }

    /// Multiplies by 2^`shift`.
    fn left_shift(&mut self, shift: usize) {
        if self.len == 0 {
            return;
        }
        let new_digits = self.new_digits_of_left_shift(shift);
        let mut read = self.len;
        let mut write = self.len + new_digits;
        let mut n = 0u64;
        while read != 0 {
            read -= 1;
            write -= 1;
            n += u64::from(self.digits[read]) << shift;
            self.put(write, n % 10);
            n /= 10;
        }
        while n > 0 {
            write -= 1;
            self.put(write, n % 10);
            n /= 10;
        }
        self.len = (self.len + new_digits).min(MAX_DIGITS);
        self.point += new_digits as i32;
        self.trim();
    }

    fn put(&mut self, at: usize, digit: u64) {
        if at < MAX_DIGITS {
            self.digits[at] = digit as u8;
        } else if digit > 0 {
            self.truncated = true;
        }
    }

    /// How many digits a left shift adds: the digits of 2^`shift`, one fewer
    /// when the number's leading digits are below those of 5^`shift` (then
    /// the product stays under the next power of ten).
    fn new_digits_of_left_shift(&self, shift: usize) -> usize {
        // 5^60 has 42 digits.
        let mut pow5 = [0u8; 48];
        let mut len = 1;
        pow5[0] = 1;
        for _ in 0..shift {
            let mut carry = 0;
            for d in &mut pow5[..len] {
                let v = *d * 5 + carry;
                *d = v % 10;
                carry = v / 10;
            }
            if carry > 0 {
                pow5[len] = carry;
                len += 1;
            }
        }
        let pow5 = &mut pow5[..len];
        pow5.reverse();
        let new_digits = (1u64 << shift).ilog10() as usize + 1;
        for (i, &p) in pow5.iter().enumerate() {
            if i >= self.len {
                return new_digits - 1;
            }
            match self.digits[i].cmp(&p) {
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Less => return new_digits - 1,
                std::cmp::Ordering::Greater => return new_digits,
            }
        }
        new_digits
    }

    /// Divides by 2^`shift`.
    fn right_shift(&mut self, shift: usize) {
        let mut read = 0;
        let mut write = 0;
        let mut n = 0u64;
        while n >> shift == 0 {
            if read < self.len {
                n = 10 * n + u64::from(self.digits[read]);
                read += 1;
            } else if n == 0 {
                return;
            } else {
                while n >> shift == 0 {
                    n *= 10;
                    read += 1;
                }
                break;
            }
        }
        self.point -= read as i32 - 1;
        if self.point < -DECIMAL_POINT_RANGE {
            self.len = 0;
            self.point = 0;
            self.truncated = false;
            return;
        }
        let mask = (1u64 << shift) - 1;
        while read < self.len {
            let digit = (n >> shift) as u8;
            n = 10 * (n & mask) + u64::from(self.digits[read]);
            read += 1;
            self.digits[write] = digit;
            write += 1;
        }
        while n > 0 {
            let digit = (n >> shift) as u8;
            n = 10 * (n & mask);
            if write < MAX_DIGITS {
                self.digits[write] = digit;
                write += 1;
            } else if digit > 0 {
                self.truncated = true;
            }
        }
        self.len = write;
        self.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn same(text: &str) {
        let want: f64 = text.parse().expect("std parses it");
        let got = parse(text);
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "{text}: got {got:e}, std gives {want:e}"
        );
    }

    #[test]
    fn hard_cases_round_as_std_does() {
        for text in [
            "0",
            "-0",
            "0.0",
            "-0.0e10",
            "1",
            "0.1",
            "0.30000000000000004",
            "1e23",
            "8.98846567431158e307",
            "9007199254740993",
            "9007199254740992.5",
            "9007199254740993.0000000000000000000000000001",
            "2.2250738585072011e-308",
            "2.2250738585072012e-308",
            "2.2250738585072014e-308",
            "4.9406564584124654e-324",
            "2.4703282292062327e-324",
            "2.4703282292062328e-324",
            "1e-400",
            "1.7976931348623157e308",
            "1.7976931348623158e308",
            "1.7976931348623159e308",
            "1e309",
            "123456789012345678901234567890",
            "0.000000000000000000000000000000000001234",
            "7.2057594037927933e16",
            "1448997445238699",
            "5e-324",
            "1e0",
            "1E+2",
            "100e-2",
            "0.0000e99999999",
            "1e99999999",
            "1e-99999999",
        ] {
            same(text);
        }
        // Past the digits kept: the dropped digit decides a tie.
        let half = format!("9007199254740992.5{}", "0".repeat(800));
        same(&half);
        same(&format!("{half}1"));
        same(&format!("0.{}1e10", "0".repeat(900)));
    }

    /// A small deterministic generator (no dependency for the tests).
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_doubles_printed_every_way_read_back_exactly() {
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
        for _ in 0..40_000 {
            let value = f64::from_bits(noise.next());
            if !value.is_finite() {
                continue;
            }
            same(&format!("{value:e}"));
            same(&format!("{value:.17e}"));
            same(&format!("{value:.5e}"));
            same(&format!("{value:.25e}"));
            if value.abs() < 1e30 && value.abs() > 1e-30 {
                same(&format!("{value}"));
            }
        }
    }

    #[test]
    fn random_digit_strings_round_as_std_does() {
        let mut noise = Noise(0xD1B5_4A32_D192_ED03);
        for _ in 0..40_000 {
            let digits = 1 + (noise.next() % 40) as usize;
            let mut text = String::new();
            for i in 0..digits {
                let d = (noise.next() % 10) as u8;
                // Runs of 0 and 9 and of 5 make ties and carries.
                let d = match noise.next() % 4 {
                    0 => 0,
                    1 => 9,
                    2 if i > 15 => 5,
                    _ => d,
                };
                text.push(char::from(b'0' + d));
            }
            let text = text.trim_start_matches('0');
            let text = if text.is_empty() { "0" } else { text };
            let exponent = (noise.next() % 700) as i64 - 350;
            let split = (noise.next() as usize) % (text.len() + 1);
            let with_point = if split == text.len() {
                text.to_string()
            } else {
                format!("{}.{}", &text[..split.max(1)], &text[split.max(1)..])
            };
            let with_point = with_point.trim_end_matches('.');
            same(&format!("{with_point}e{exponent}"));
            same(with_point);
        }
    }
}
