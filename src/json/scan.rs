//! Byte scans the parser's hot paths rest on: finding the next `"`, `\` or
//! control character (SSE2 on x86_64, eight bytes at a time elsewhere) and
//! comparing short keys without a call to `memcmp`.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bytes of `x` that are zero, as their high bit (exact for the lowest one).
#[inline]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Bits set for the bytes of `chunk` that are `"`, `\` or control
/// characters, with SSE2 (part of every x86_64 CPU).
#[cfg(target_arch = "x86_64")]
#[inline]
fn special_mask16(chunk: [u8; 16]) -> u32 {
    use safe_arch::{bitor_m128i, cmp_eq_mask_i8_m128i, m128i, min_u8_m128i, move_mask_i8_m128i, set_splat_i8_m128i};
    let v = m128i::from(chunk);
    let quote = cmp_eq_mask_i8_m128i(v, set_splat_i8_m128i(b'"' as i8));
    let backslash = cmp_eq_mask_i8_m128i(v, set_splat_i8_m128i(b'\\' as i8));
    // c <= 0x1f exactly when min(c, 0x1f) == c (unsigned).
    let control = cmp_eq_mask_i8_m128i(min_u8_m128i(v, set_splat_i8_m128i(0x1f)), v);
    move_mask_i8_m128i(bitor_m128i(bitor_m128i(quote, backslash), control)) as u32
}

/// Offset of the first `"`, `\` or control character at or after `from`
/// (or the length of `b`), sixteen bytes at a time on x86_64, then eight.
#[inline]
pub(super) fn special_byte(b: &[u8], from: usize) -> usize {
    let mut i = from;
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = b.get(i..i + 16) {
        let mask = special_mask16(chunk.try_into().expect("16 bytes"));
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
    }
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let mask = zero_bytes(x ^ (ONES * u64::from(b'"')))
            | zero_bytes(x ^ (ONES * u64::from(b'\\')))
            // Bytes below 0x20: subtracting 0x20 borrows into their high bit.
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS);
        if mask != 0 {
            return i + (mask.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

/// Equality of short byte strings without a call to `memcmp`: keys are
/// compared for every field of every record.
#[inline]
pub fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n >= 8 {
        let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
        return match n {
            8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
            17..=32 => {
                word(a, 0) == word(b, 0)
                    && word(a, 8) == word(b, 8)
                    && word(a, n - 16) == word(b, n - 16)
                    && word(a, n - 8) == word(b, n - 8)
            }
            _ => a == b,
        };
    }
    if n >= 4 {
        let word = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
        return word(a, 0) == word(b, 0) && word(a, n - 4) == word(b, n - 4);
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}
