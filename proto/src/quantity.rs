//! Kubernetes resource quantities (`500m`, `.5`, `1e3`, `64Mi`, `1G`), parsed
//! exactly as Kubernetes' `resource.Quantity` does and normalised to the units
//! drover stores: CPU in millicores, memory in bytes.
//!
//! ```text
//! quantity ::= [+-] number suffix
//! number   ::= digits | digits "." [digits] | "." digits
//! suffix   ::= "" | n | u | m | k | M | G | T | P | E      (decimal SI)
//!            | Ki | Mi | Gi | Ti | Pi | Ei                 (binary SI)
//!            | (e | E) [+-] digits                         (decimal exponent)
//! ```
//!
//! Conversion rounds up, like Kubernetes' `MilliValue()` and `Value()`:
//! `0.0001` CPU is 1 millicore and `100m` of memory is 1 byte. Arithmetic is
//! exact (integers only), so `0.1` CPU is exactly 100 millicores.

use thiserror::Error;

/// Why a quantity string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum QuantityError {
    /// Not the Kubernetes quantity syntax (`12XB`, `1.2.3`, ``).
    #[error("invalid quantity")]
    Syntax,
    /// A negative amount of a resource.
    #[error("must not be negative")]
    Negative,
    /// Larger than Kubernetes can represent (2^63 - 1 in the target unit).
    #[error("too large")]
    TooLarge,
    /// More significant digits than drover keeps exactly (38).
    #[error("too many significant digits")]
    TooPrecise,
}

/// Parses a CPU quantity into millicores: `"250m"` → 250, `"0.5"` → 500, `"2"` → 2000.
pub fn parse_cpu_millis(text: &str) -> Result<u64, QuantityError> {
    Quantity::parse(text)?.ceil_scaled(3)
}

/// Parses a memory quantity into bytes: `"64Mi"` → 67108864, `"1G"` → 10^9,
/// `"100m"` → 1 (milli-bytes round up).
pub fn parse_memory_bytes(text: &str) -> Result<u64, QuantityError> {
    Quantity::parse(text)?.ceil_scaled(0)
}

/// Formats millicores the way Kubernetes prints them: `"250m"`, or `"2"` for whole cores.
pub fn format_cpu_millis(millis: u64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Formats bytes with the largest exact suffix: binary first (`"64Mi"`,
/// `"1Gi"`), then decimal (`"1G"`, `"500k"`), else plain bytes (`"1536"`).
/// The result parses back to the same number of bytes.
pub fn format_memory_bytes(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_string();
    }
    const BINARY: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    const DECIMAL: [(&str, u32); 6] = [
        ("E", 18),
        ("P", 15),
        ("T", 12),
        ("G", 9),
        ("M", 6),
        ("k", 3),
    ];
    for (suffix, shift) in BINARY {
        if bytes.trailing_zeros() >= shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    for (suffix, exponent) in DECIMAL {
        let unit = 10u64.pow(exponent);
        if bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Largest power of ten that fits in a `u128` (10^38 < 2^128 < 10^39).
const MAX_POW10: u32 = 38;

/// `mantissa × 10^exp10 × 2^exp2`, with the sign kept apart.
#[derive(Debug)]
struct Quantity {
    negative: bool,
    mantissa: u128,
    exp10: i64,
    exp2: u32,
}

impl Quantity {
    fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let (negative, unsigned) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_len = unsigned
            .bytes()
            .position(|b| !(b.is_ascii_digit() || b == b'.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(QuantityError::Syntax);
        }
        let (suffix_exp10, exp2) = parse_suffix(suffix)?;

        // Significant digits only: leading zeros carry nothing, trailing zeros
        // move into the exponent, so "500000000000000000000000000000000000000000"
        // still fits.
        let digits = whole.bytes().chain(fraction.bytes());
        let mut significant: Vec<u8> = digits.skip_while(|&d| d == b'0').collect();
        let mut exp10 = suffix_exp10 - fraction.len() as i64;
        while significant.last() == Some(&b'0') {
            significant.pop();
            exp10 += 1;
        }
        if significant.len() > MAX_POW10 as usize {
            return Err(QuantityError::TooPrecise);
        }
        let mantissa = significant
            .iter()
            .fold(0u128, |n, d| n * 10 + u128::from(d - b'0'));
        Ok(Quantity {
            negative: negative && mantissa != 0,
            mantissa,
            exp10,
            exp2,
        })
    }

    /// `ceil(self × 10^unit_exp10)` as a non-negative integer of at most 2^63 - 1.
    fn ceil_scaled(&self, unit_exp10: i64) -> Result<u64, QuantityError> {
        if self.negative {
            return Err(QuantityError::Negative);
        }
        if self.mantissa == 0 {
            return Ok(0);
        }
        let with_binary = self
            .mantissa
            .checked_mul(1u128 << self.exp2)
            .ok_or(QuantityError::TooLarge)?;
        let exp10 = self.exp10 + unit_exp10;
        let scaled = if exp10 >= 0 {
            u32::try_from(exp10)
                .ok()
                .and_then(|e| 10u128.checked_pow(e))
                .and_then(|p| with_binary.checked_mul(p))
                .ok_or(QuantityError::TooLarge)?
        } else {
            match u32::try_from(-exp10) {
                Ok(e) if e <= MAX_POW10 => {
                    let divisor = 10u128.pow(e);
                    with_binary / divisor + u128::from(with_binary % divisor != 0)
                }
                // A positive amount smaller than one unit rounds up to one.
                _ => 1,
            }
        };
        u64::try_from(scaled)
            .ok()
            .filter(|&n| i64::try_from(n).is_ok())
            .ok_or(QuantityError::TooLarge)
    }
}

/// The suffix as `(power of ten, power of two)`.
fn parse_suffix(suffix: &str) -> Result<(i64, u32), QuantityError> {
    Ok(match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => (parse_exponent(suffix)?, 0),
    })
}

/// `e3`, `E-2`, `e+10`: a decimal exponent.
fn parse_exponent(suffix: &str) -> Result<i64, QuantityError> {
    let rest = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))
        .ok_or(QuantityError::Syntax)?;
    let (negative, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::Syntax);
    }
    // Exponents beyond four digits are out of range either way; clamping
    // keeps the arithmetic in i64 and still gives "too large" or "rounds up to 1".
    let significant = digits.trim_start_matches('0');
    let magnitude = if significant.len() > 4 {
        10_000
    } else {
        significant.parse::<i64>().unwrap_or(0)
    };
    Ok(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponent_clamps_without_overflow() {
        assert_eq!(
            parse_cpu_millis("1e99999999999999999999"),
            Err(QuantityError::TooLarge)
        );
        assert_eq!(parse_cpu_millis("1e-99999999999999999999"), Ok(1));
        assert_eq!(parse_memory_bytes("0e99999"), Ok(0));
    }
}
