//! A word-at-a-time `memcmp` for WebAssembly guests, and small copies without a call.
//!
//! Comparing byte slices or strings (`==`, `<`, `HashMap` lookups) calls `memcmp`. On
//! wasm32-unknown-unknown that symbol comes from Rust's compiler-builtins, which compares one
//! byte per loop turn: once wasmtime has compiled it, about 24 instructions per byte (measured
//! with callgrind: 859 instructions to compare a 36-byte Snowplow vendor, more than the rest of
//! media-filter's work on the event). Natively the C library's vectorised `memcmp` does it in
//! about 20. The SDK defines `memcmp` and `bcmp` for wasm32 (compiler-builtins' are weak
//! symbols, so these take their place in every guest that links the SDK), comparing 8 bytes
//! per turn.
//!
//! [`compare`] is the same code on every target, so its unit tests run natively.
//!
//! Copies go the other way: with bulk memory (on by default) every `memcpy` of a length not
//! known at compile time becomes a `memory.copy` instruction, which wasmtime runs as a call into
//! the host (about 60 instructions with the host's `memmove`, whatever the length). A profile
//! writer appending a dozen short strings and numbers made ~110 such calls per event.
//! [`extend`] appends up to 32 bytes with a few overlapping 8-byte (or 4-byte) loads and stores
//! and leaves longer copies to `memory.copy`.

/// `memcmp` on slices: negative, zero or positive as `a` sorts before, equal to or after `b`
/// (compared up to the shorter length, as `memcmp` over `min(a.len(), b.len())` bytes).
pub fn compare(a: &[u8], b: &[u8]) -> i32 {
    let n = a.len().min(b.len());
    // SAFETY: both slices are readable for `n = min(a.len(), b.len())` bytes.
    unsafe { compare_raw(a.as_ptr(), b.as_ptr(), n) }
}

/// # Safety
/// `a` and `b` must be readable for `n` bytes.
#[inline(always)]
unsafe fn compare_raw(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: bytes `i..i + 8` of both, within the `n` readable ones (`i + 8 <= n`);
        // `read_unaligned` has no alignment requirement.
        let (x, y) = unsafe {
            (
                a.add(i).cast::<u64>().read_unaligned(),
                b.add(i).cast::<u64>().read_unaligned(),
            )
        };
        if x != y {
            // The first differing byte decides; big-endian puts it in the high bits.
            return if u64::from_be(x) < u64::from_be(y) {
                -1
            } else {
                1
            };
        }
        i += 8;
    }
    // At most 7 bytes left: no loop, so the compiler cannot turn this back into a `memcmp` call.
    let rest = n - i;
    // SAFETY: `a + i` and `b + i` are readable for `rest = n - i < 8` bytes, `tail`'s contract.
    let (x, y) = unsafe { (tail(a.add(i), rest), tail(b.add(i), rest)) };
    match x.cmp(&y) {
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Equal => 0,
        std::cmp::Ordering::Greater => 1,
    }
}

/// Up to 7 bytes as a big-endian number (so that numbers compare as the bytes do).
///
/// # Safety
/// `p` must be readable for `n < 8` bytes.
#[inline(always)]
unsafe fn tail(p: *const u8, n: usize) -> u64 {
    let mut v = 0u64;
    let mut at = 0;
    // `at` counts the bytes read so far; each read takes a size bit of `n`, so `at + size <= n`.
    if n & 4 != 0 {
        // SAFETY: bytes 0..4 of `p`, within the `n >= 4` readable ones; unaligned read.
        v = u32::from_be(unsafe { p.cast::<u32>().read_unaligned() }) as u64;
        at = 4;
    }
    if n & 2 != 0 {
        // SAFETY: bytes `at..at + 2`, and `at + 2 <= n` (`at` is 4 only if bit 4 of `n` is set).
        v = (v << 16) | u16::from_be(unsafe { p.add(at).cast::<u16>().read_unaligned() }) as u64;
        at += 2;
    }
    if n & 1 != 0 {
        // SAFETY: byte `at`, the last of the `n` readable ones (`at == n - 1` here).
        v = (v << 8) | unsafe { *p.add(at) } as u64;
    }
    v
}

/// Appends `s` to `out`, as `out.extend_from_slice(s)` does, without a call for up to 32
/// bytes (see the module's documentation).
#[inline(always)]
pub fn extend(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n > 32 {
        out.extend_from_slice(s);
        return;
    }
    out.reserve(n);
    // SAFETY: `s` is readable for `n` bytes, and after `reserve(n)` the `n` bytes past `out`'s
    // length are writable; they are all written below (some twice), then made part of `out`.
    // The two never overlap (`out` is borrowed mutably, `s` shared).
    unsafe {
        copy_small(s.as_ptr(), out.as_mut_ptr().add(out.len()), n);
        out.set_len(out.len() + n);
    }
}

/// Copies `n <= 32` bytes with fixed-size moves, no loop (a loop could become a `memcpy` call
/// again): each range below lies within `0..n`, and together they cover it.
///
/// # Safety
/// `src` readable and `dst` writable for `n <= 32` bytes; the two do not overlap.
#[inline(always)]
unsafe fn copy_small(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY (all four helpers): `at + size <= n` at every use below.
    let c8 = |at: usize| unsafe {
        let v = src.add(at).cast::<u64>().read_unaligned();
        dst.add(at).cast::<u64>().write_unaligned(v);
    };
    let c4 = |at: usize| unsafe {
        let v = src.add(at).cast::<u32>().read_unaligned();
        dst.add(at).cast::<u32>().write_unaligned(v);
    };
    let c1 = |at: usize| unsafe { *dst.add(at) = *src.add(at) };
    if n >= 16 {
        c8(0);
        c8(8);
        c8(n - 16);
        c8(n - 8);
    } else if n >= 8 {
        c8(0);
        c8(n - 8);
    } else if n >= 4 {
        c4(0);
        c4(n - 4);
    } else if n > 0 {
        c1(0);
        c1(n / 2);
        c1(n - 1);
    }
}

#[cfg(target_arch = "wasm32")]
mod symbols {
    /// # Safety
    /// As C's `memcmp`.
    #[no_mangle]
    pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: C's `memcmp` contract, which the caller keeps: `a` and `b` are readable for
        // `n` bytes; that is `compare_raw`'s contract.
        unsafe { super::compare_raw(a, b, n) }
    }

    /// # Safety
    /// As C's `bcmp`.
    #[no_mangle]
    pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: C's `bcmp` contract, which the caller keeps: `a` and `b` are readable for
        // `n` bytes; that is `compare_raw`'s contract.
        unsafe { super::compare_raw(a, b, n) }
    }
}

#[cfg(test)]
mod tests {
    use super::{compare, extend};

    #[test]
    fn extend_appends_like_extend_from_slice() {
        let src: Vec<u8> = (1..=70).collect();
        for before in [0usize, 1, 7, 13] {
            for len in 0..=src.len() {
                for from in [0, 3] {
                    let s = &src[from..(from + len).min(src.len())];
                    let mut want: Vec<u8> = vec![0xee; before];
                    want.extend_from_slice(s);
                    // Little capacity, so that `reserve` has to grow it.
                    let mut got: Vec<u8> = vec![0xee; before];
                    got.shrink_to_fit();
                    extend(&mut got, s);
                    assert_eq!(got, want, "{before} then {} bytes", s.len());
                }
            }
        }
    }

    #[test]
    fn orders_like_slices() {
        let words: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"a".to_vec(),
            b"b".to_vec(),
            b"com.snowplowanalytics.snowplow".to_vec(),
            b"com.snowplowanalytics.snowplow.media".to_vec(),
            b"com.snowplowanalytics.snowplow.medib".to_vec(),
            b"com.snowplowanalytics.snowplox.media".to_vec(),
            vec![0xff; 17],
            vec![0x00; 17],
            (0u8..=40).collect(),
            (1u8..=41).collect(),
        ];
        for a in &words {
            for b in &words {
                let n = a.len().min(b.len());
                for len in 0..=n {
                    let (x, y) = (&a[..len], &b[..len]);
                    assert_eq!(compare(x, y).signum(), x.cmp(y) as i32, "{x:?} vs {y:?}");
                }
            }
        }
    }

    #[test]
    fn every_position_and_length() {
        for len in 0..40usize {
            let a: Vec<u8> = (0..len as u8).collect();
            assert_eq!(compare(&a, &a), 0);
            for at in 0..len {
                for d in [1u8, 0x80] {
                    let mut b = a.clone();
                    b[at] = b[at].wrapping_add(d);
                    assert_eq!(
                        compare(&a, &b).signum(),
                        a.cmp(&b) as i32,
                        "len {len} at {at}"
                    );
                    assert_eq!(
                        compare(&b, &a).signum(),
                        b.cmp(&a) as i32,
                        "len {len} at {at}"
                    );
                }
            }
        }
    }
}
