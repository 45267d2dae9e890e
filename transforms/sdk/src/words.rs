//! Tests over the bytes of a short string, eight at a time in a 64-bit word.
//!
//! Most strings an event holds are short (ids, names, timestamps: 5–40 bytes). A byte loop costs
//! several instructions per byte in a WebAssembly guest, and the loops the compiler vectorizes
//! only start vectorizing past 32 or 64 bytes, so a 36-byte id went through the scalar remainder
//! a byte at a time. Here a string of `n >= 8` bytes is covered by `ceil(n / 8)` word loads (the
//! last one overlapping the one before it), 4..8 bytes by two overlapping 32-bit loads, and
//! fewer by a word padded with a byte no test looks for. The tests are the classic bit tricks:
//! exact as an "any byte?" answer (a false hit can only appear above a true one).

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bits where a byte of `w` is `c` (the lowest one exactly).
#[inline(always)]
pub fn eq(w: u64, c: u8) -> u64 {
    let x = w ^ (LO * u64::from(c));
    x.wrapping_sub(LO) & !x & HI
}

/// High bits where a byte of `w` is below `n` (`n <= 0x80`; the lowest one exactly).
#[inline(always)]
pub fn below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(LO * u64::from(n)) & !w & HI
}

/// High bits where a byte of `w` is 0x80 or above.
#[inline(always)]
pub fn non_ascii(w: u64) -> u64 {
    w & HI
}

/// Calls `f` on words that together hold every byte of `s` (some bytes twice, and for strings
/// under four bytes, `a` in the rest of the word: a byte none of the tests above looks for).
#[inline(always)]
fn each(s: &[u8], mut f: impl FnMut(u64)) {
    let n = s.len();
    if n >= 8 {
        let mut i = 0;
        while i + 8 < n {
            f(u64_at(s, i));
            i += 8;
        }
        f(u64_at(s, n - 8));
    } else if n >= 4 {
        f(u64::from(u32_at(s, 0)) | u64::from(u32_at(s, n - 4)) << 32);
    } else if n > 0 {
        let mut w = LO * u64::from(b'a');
        for (k, &c) in s.iter().enumerate() {
            w = w & !(0xff << (8 * k)) | u64::from(c) << (8 * k);
        }
        f(w);
    }
}

/// Whether any byte of `s` passes a test, given twice: `word` as the bit test above (for
/// strings under [`LONG`] bytes, word by word) and `byte` one byte at a time (for longer ones,
/// in a fold without an early exit, which the compiler vectorizes 16 bytes per instruction).
#[inline(always)]
pub fn any(s: &[u8], word: impl Fn(u64) -> u64, byte: impl Fn(u8) -> bool) -> bool {
    if s.len() >= LONG {
        s.iter().fold(false, |a, &c| a | byte(c))
    } else {
        let mut acc = 0;
        each(s, |w| acc |= word(w));
        acc != 0
    }
}

/// From this length on, [`any`] folds byte by byte (vectorized) instead of testing words.
pub const LONG: usize = 64;

/// Whether every byte of `s` is ASCII.
#[inline(always)]
pub fn is_ascii(s: &[u8]) -> bool {
    !any(s, non_ascii, |c| c >= 0x80)
}

#[inline(always)]
fn u64_at(s: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(s[i..i + 8].try_into().expect("8 bytes"))
}

#[inline(always)]
fn u32_at(s: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(s[i..i + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length [`any`] tests word by word, the interesting byte at every position and
    /// absent, against the byte-by-byte answer.
    #[test]
    fn word_tests_agree_with_byte_tests() {
        type Case = (fn(u64) -> u64, fn(u8) -> bool);
        let cases: [Case; 4] = [
            (|w| eq(w, b'\\'), |c| c == b'\\'),
            (|w| eq(w, b'"') | eq(w, b'\\'), |c| c == b'"' || c == b'\\'),
            (|w| below(w, 0x20), |c| c < 0x20),
            (non_ascii, |c| c >= 0x80),
        ];
        let specials = [
            0u8, 0x1f, 0x20, b'"', b'\\', b'[', 0x7f, 0x80, 0xc3, 0xff, b'a',
        ];
        for len in 0..LONG {
            for pos in 0..=len {
                for &sp in &specials {
                    // Neighbours one bit away from the special byte, around it.
                    let mut s: Vec<u8> = (0..len).map(|i| b"x]!#0~"[i % 6]).collect();
                    if pos < len {
                        s[pos] = sp;
                        if pos + 1 < len {
                            s[pos + 1] = sp ^ 1;
                        }
                    }
                    for (word, byte) in cases {
                        assert_eq!(
                            any(&s, word, |_| unreachable!("tested by words")),
                            s.iter().any(|&c| byte(c)),
                            "{s:?} (len {len}, {sp:#x} at {pos})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn is_ascii_at_every_length_and_position() {
        for len in 0..200 {
            let s = vec![b'x'; len];
            assert!(is_ascii(&s));
            for pos in 0..len {
                let mut t = s.clone();
                t[pos] = 0x80;
                assert!(!is_ascii(&t), "{len} {pos}");
            }
        }
    }

    #[test]
    fn each_covers_every_byte() {
        for len in 0..40usize {
            let s: Vec<u8> = (0..len as u8).map(|i| i + 1).collect();
            let mut seen = [false; 41];
            each(&s, |w| {
                for b in w.to_le_bytes() {
                    if b != b'a' {
                        seen[b as usize] = true;
                    }
                }
            });
            let missing: Vec<usize> = (1..=len).filter(|&i| !seen[i]).collect();
            assert!(missing.is_empty(), "bytes {missing:?} of {len} not covered");
        }
    }
}
