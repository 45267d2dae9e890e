//! A minimal, allocation-free JSON reader: finds a value inside raw JSON text without parsing
//! the rest. Malformed input gives `None`, never a panic.

use crate::words;
use std::borrow::Cow;

/// A JSON value as raw text (`{"a":1}`, `"x"`, `3.5`, ...), read lazily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Json<'a>(pub &'a [u8]);

impl<'a> Json<'a> {
    /// The raw JSON text.
    pub fn raw(&self) -> &'a [u8] {
        self.0
    }

    /// The value of member `key` of an object.
    pub fn get(&self, key: &str) -> Option<Json<'a>> {
        self.members()
            .find(|(k, _)| *k == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// The members of an object, keys as raw (still escaped) bytes. Empty if not an object.
    pub fn members(&self) -> Members<'a> {
        let b = self.0;
        let i = skip_ws(b, 0);
        let pos = if b.get(i) == Some(&b'{') {
            Some(i + 1)
        } else {
            None
        };
        Members { b, pos }
    }

    /// Calls `f` with each member of an object, keys as raw (still escaped) bytes: what
    /// [`Json::members`] yields, read in one inlined loop (no iterator state between members),
    /// the cheaper way to pick a few members out of a small object. Nothing if not an object.
    #[inline(always)]
    pub fn for_each_member(&self, f: impl FnMut(&'a [u8], Json<'a>)) {
        let b = self.0;
        let i = skip_ws(b, 0);
        if b.get(i) == Some(&b'{') {
            each_member(b, i, f);
        }
    }

    /// The elements of an array. Empty if not an array.
    pub fn elements(&self) -> Elements<'a> {
        let b = self.0;
        let i = skip_ws(b, 0);
        let pos = if b.get(i) == Some(&b'[') {
            Some(i + 1)
        } else {
            None
        };
        Elements { b, pos }
    }

    /// The text of a string value (unescaped; borrowed when it has no escapes).
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        let b = trim(self.0);
        if b.len() < 2 || b[0] != b'"' || b[b.len() - 1] != b'"' {
            return None;
        }
        let inner = &b[1..b.len() - 1];
        if words::any(inner, |w| words::eq(w, b'\\'), |c| c == b'\\') {
            unescape(inner).map(Cow::Owned)
        } else if words::is_ascii(inner) {
            // SAFETY: ASCII is UTF-8.
            Some(Cow::Borrowed(unsafe {
                std::str::from_utf8_unchecked(inner)
            }))
        } else {
            std::str::from_utf8(inner).ok().map(Cow::Borrowed)
        }
    }

    /// A number value.
    pub fn as_f64(&self) -> Option<f64> {
        let t = trim(self.0);
        match fast_f64(t) {
            Some(v) => Some(v),
            None => std::str::from_utf8(t).ok()?.parse().ok(),
        }
    }

    /// A boolean value.
    pub fn as_bool(&self) -> Option<bool> {
        match trim(self.0) {
            b"true" => Some(true),
            b"false" => Some(false),
            _ => None,
        }
    }

    /// Whether the value is `null`.
    pub fn is_null(&self) -> bool {
        trim(self.0) == b"null"
    }
}

/// Iterator over an object's members.
pub struct Members<'a> {
    b: &'a [u8],
    pos: Option<usize>,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a [u8], Json<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        match member_at(self.b, self.pos?) {
            Step::Member(key, value, next) => {
                self.pos = Some(next);
                Some((key, value))
            }
            Step::End(_) | Step::Bad => {
                self.pos = None;
                None
            }
        }
    }
}

/// What an object holds at a position after its `{` or after one of its members.
enum Step<'a> {
    /// A member, and where the text after it starts.
    Member(&'a [u8], Json<'a>, usize),
    /// The closing `}`: the index just past it.
    End(usize),
    /// Not JSON.
    Bad,
}

/// Reads the member (or the end) at `b[i]`, after an optional comma.
#[inline(always)]
fn member_at(b: &[u8], i: usize) -> Step<'_> {
    let mut i = skip_ws(b, i);
    if b.get(i) == Some(&b',') {
        i = skip_ws(b, i + 1);
    }
    match b.get(i) {
        Some(b'"') => {}
        Some(b'}') => return Step::End(i + 1),
        _ => return Step::Bad,
    }
    let Some(key_end) = skip_string(b, i) else {
        return Step::Bad;
    };
    let key = &b[i + 1..key_end - 1];
    i = skip_ws(b, key_end);
    if b.get(i) != Some(&b':') {
        return Step::Bad;
    }
    let start = skip_ws(b, i + 1);
    match skip_value(b, start) {
        Some(end) => Step::Member(key, Json(&b[start..end]), end),
        None => Step::Bad,
    }
}

/// Calls `f` with each member of the object whose `{` is at `b[open]`, as [`Members`] yields
/// them; returns the index just past the closing `}` (`None` if the object is malformed, after
/// the members before the fault).
#[inline(always)]
pub(crate) fn each_member<'a>(
    b: &'a [u8],
    open: usize,
    mut f: impl FnMut(&'a [u8], Json<'a>),
) -> Option<usize> {
    let mut i = open + 1;
    loop {
        match member_at(b, i) {
            Step::Member(key, value, next) => {
                f(key, value);
                i = next;
            }
            Step::End(end) => return Some(end),
            Step::Bad => return None,
        }
    }
}

/// Iterator over an array's elements.
pub struct Elements<'a> {
    b: &'a [u8],
    pos: Option<usize>,
}

impl<'a> Iterator for Elements<'a> {
    type Item = Json<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        let b = self.b;
        let mut i = skip_ws(b, self.pos?);
        if b.get(i) == Some(&b',') {
            i = skip_ws(b, i + 1);
        }
        if matches!(b.get(i), None | Some(b']')) {
            self.pos = None;
            return None;
        }
        let Some(end) = skip_value(b, i) else {
            self.pos = None;
            return None;
        };
        self.pos = Some(end);
        Some(Json(&b[i..end]))
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let s = skip_ws(b, 0);
    let mut e = b.len();
    while e > s && b[e - 1].is_ascii_whitespace() {
        e -= 1;
    }
    &b[s..e]
}

/// The index where the value of member `key` of the object at `b[open]` starts, found without
/// scanning that value (nor anything after it).
pub(crate) fn member_start(b: &[u8], open: usize, key: &[u8]) -> Option<usize> {
    let mut i = open + 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) == Some(&b',') {
            i = skip_ws(b, i + 1);
        }
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(b, i)?;
        let k = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        if k == key {
            return Some(start);
        }
        i = skip_value(b, start)?;
    }
}

pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    // One comparison for the usual byte (no whitespace between tokens): a four-way `matches!`
    // alone becomes a jump table in a WebAssembly guest.
    while i < b.len() && b[i] <= b' ' && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// `-?[0-9]+(.[0-9]+)?` with at most 15 digits, the common number in events, without the
/// general parser: the digits are exact as an integer below 2^53 and so is 10^k for k <= 15,
/// so one division gives the correctly rounded value, as `str::parse` does (Clinger's fast
/// path). Anything else is `None`, for the general parser.
fn fast_f64(t: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (neg, digits) = match t.first()? {
        b'-' => (true, &t[1..]),
        _ => (false, t),
    };
    let (mut m, mut n, mut frac, mut dot) = (0u64, 0usize, 0usize, false);
    for &c in digits {
        match c {
            b'0'..=b'9' => {
                m = m * 10 + u64::from(c - b'0');
                n += 1;
                frac += usize::from(dot);
            }
            b'.' if !dot => dot = true,
            _ => return None,
        }
    }
    // At least one digit on each side of a dot, at most 15 in all.
    if n == 0 || n > 15 || (dot && (frac == 0 || frac == n)) {
        return None;
    }
    let v = m as f64 / POW10[frac];
    Some(if neg { -v } else { v })
}

/// Bit `k` set where `block[k]` is `"` or a backslash.
#[inline(always)]
fn quote_or_escape(block: &[u8; 16]) -> u32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::{u8x16_bitmask, u8x16_eq, u8x16_splat, v128_or};
        let v = simd::load(block);
        u32::from(u8x16_bitmask(v128_or(
            u8x16_eq(v, u8x16_splat(b'"')),
            u8x16_eq(v, u8x16_splat(b'\\')),
        )))
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        mask(block, |c| c == b'"' || c == b'\\')
    }
}

/// Whether `c` ends a scalar (a number, `true`, `false`, `null`): a comma, whitespace or a
/// closing bracket.
#[inline(always)]
fn is_scalar_end(c: u8) -> bool {
    // Digits, signs, dots and letters are all above `,`: one comparison for each of them.
    c <= b',' && matches!(c, b',' | b' ' | b'\t' | b'\n' | b'\r') || c | 0x20 == b'}'
}

/// Bit `k` set where `block[k]` ends a scalar ([`is_scalar_end`]).
#[inline(always)]
fn scalar_end(block: &[u8; 16]) -> u32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::{u8x16_bitmask, u8x16_eq, u8x16_splat, v128_or};
        let v = simd::load(block);
        let eq = |c: u8| u8x16_eq(v, u8x16_splat(c));
        // `]` is `}` without bit 5; no other byte is.
        let close = u8x16_eq(v128_or(v, u8x16_splat(0x20)), u8x16_splat(b'}'));
        u32::from(u8x16_bitmask(v128_or(
            v128_or(v128_or(eq(b','), eq(b' ')), v128_or(eq(b'\t'), eq(b'\n'))),
            v128_or(eq(b'\r'), close),
        )))
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        mask(block, is_scalar_end)
    }
}

/// Bit `k` set where `block[k]` is `"` or a bracket (`{`, `}`, `[`, `]`).
#[inline(always)]
fn quote_or_bracket(block: &[u8; 16]) -> u32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::{u8x16_bitmask, u8x16_eq, u8x16_splat, v128_or};
        let v = simd::load(block);
        // `[` and `]` are `{` and `}` without bit 5; no other byte is.
        let folded = v128_or(v, u8x16_splat(0x20));
        u32::from(u8x16_bitmask(v128_or(
            u8x16_eq(v, u8x16_splat(b'"')),
            v128_or(
                u8x16_eq(folded, u8x16_splat(b'{')),
                u8x16_eq(folded, u8x16_splat(b'}')),
            ),
        )))
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        // The same folding as the SIMD version, so that native tests check it.
        mask(block, |c| c == b'"' || c | 0x20 == b'{' || c | 0x20 == b'}')
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use core::arch::wasm32::v128;

    #[inline(always)]
    pub(super) fn load(block: &[u8; 16]) -> v128 {
        // SAFETY: `block` is 16 readable bytes; v128 loads need no alignment.
        unsafe { core::arch::wasm32::v128_load(block.as_ptr().cast()) }
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
#[inline(always)]
fn mask(block: &[u8; 16], hit: impl Fn(u8) -> bool) -> u32 {
    block
        .iter()
        .enumerate()
        .fold(0, |m, (k, &c)| m | (u32::from(hit(c)) << k))
}

/// The 16 bytes at `b[j..]`, if there are 16.
#[inline(always)]
fn block_at(b: &[u8], j: usize) -> Option<&[u8; 16]> {
    b.get(j..j + 16).map(|s| s.try_into().expect("16 bytes"))
}

/// The first index at or after `j` of a byte that `mask` marks in a 16-byte block (`hit`
/// byte by byte in the last few bytes), 16 bytes per step.
#[inline(always)]
fn find_from(
    b: &[u8],
    mut j: usize,
    mask: impl Fn(&[u8; 16]) -> u32,
    hit: impl Fn(u8) -> bool,
) -> Option<usize> {
    loop {
        match block_at(b, j) {
            Some(block) => match mask(block) {
                0 => j += 16,
                m => return Some(j + m.trailing_zeros() as usize),
            },
            None => return Some(j + b.get(j..)?.iter().position(|&c| hit(c))?),
        }
    }
}

/// `b[i]` is `"`: the index just past the closing quote. Sixteen bytes at a time: one test
/// finds the quote of a short string (most keys and values).
#[inline(always)]
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    string_end(b, i + 1)
}

/// The index just past the closing quote of the string whose text goes on at `b[j]`.
#[inline(always)]
pub(crate) fn string_end(b: &[u8], mut j: usize) -> Option<usize> {
    loop {
        let k = find_from(b, j, quote_or_escape, |c| c == b'"' || c == b'\\')?;
        if b[k] == b'"' {
            return Some(k + 1);
        }
        j = k + 2; // past the escaped character
    }
}

/// The index just past the value starting at `b[i]`.
#[inline(always)]
pub(crate) fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => skip_container(b, i),
        _ => {
            // Numbers, `true`, `false`, `null`: up to the next delimiter, 16 bytes per test.
            let j = find_from(b, i, scalar_end, is_scalar_end).unwrap_or(b.len());
            (j > i).then_some(j)
        }
    }
}

/// The masks of a 64-byte chunk: bit `k` for byte `k`.
struct Chunk {
    quote: u64,
    backslash: u64,
    open: u64,
    close: u64,
}

#[inline(always)]
fn chunk_masks(c: &[u8; 64]) -> Chunk {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::{u8x16_bitmask, u8x16_eq, u8x16_splat, v128_or};
        let mut m = Chunk {
            quote: 0,
            backslash: 0,
            open: 0,
            close: 0,
        };
        for (n, block) in c.chunks_exact(16).enumerate() {
            let v = simd::load(block.try_into().expect("16 bytes"));
            let folded = v128_or(v, u8x16_splat(0x20));
            let at = 16 * n;
            m.quote |= u64::from(u8x16_bitmask(u8x16_eq(v, u8x16_splat(b'"')))) << at;
            m.backslash |= u64::from(u8x16_bitmask(u8x16_eq(v, u8x16_splat(b'\\')))) << at;
            m.open |= u64::from(u8x16_bitmask(u8x16_eq(folded, u8x16_splat(b'{')))) << at;
            m.close |= u64::from(u8x16_bitmask(u8x16_eq(folded, u8x16_splat(b'}')))) << at;
        }
        m
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        let bits = |hit: &dyn Fn(u8) -> bool| {
            c.iter()
                .enumerate()
                .fold(0u64, |m, (k, &b)| m | (u64::from(hit(b)) << k))
        };
        Chunk {
            quote: bits(&|b| b == b'"'),
            backslash: bits(&|b| b == b'\\'),
            open: bits(&|b| b | 0x20 == b'{'),
            close: bits(&|b| b | 0x20 == b'}'),
        }
    }
}

/// Bit `k` set when an odd number of bits `0..=k` of `m` are set: with `m` the quotes of a
/// chunk without escapes, the bytes inside strings (from an opening quote up to, not
/// including, its closing one).
#[inline(always)]
fn prefix_xor(mut m: u64) -> u64 {
    m ^= m << 1;
    m ^= m << 2;
    m ^= m << 4;
    m ^= m << 8;
    m ^= m << 16;
    m ^= m << 32;
    m
}

/// `b[i]` opens an object or array: the index just past its end. Sixty-four bytes at a time:
/// the chunk's quotes say which bytes are inside strings, and only the brackets outside them
/// are looked at, so a chunk costs the same however many strings it holds. A chunk with a
/// backslash (an escape) is left to [`skip_container_from`], which reads string by string.
#[inline(never)]
fn skip_container(b: &[u8], i: usize) -> Option<usize> {
    let mut depth = 0usize;
    // All ones when the chunk before ended inside a string.
    let mut in_string = 0u64;
    let mut j = i;
    while let Some(c) = b.get(j..j + 64) {
        let m = chunk_masks(c.try_into().expect("64 bytes"));
        if m.backslash != 0 {
            break;
        }
        let inside = prefix_xor(m.quote) ^ in_string;
        in_string = ((inside as i64) >> 63) as u64;
        let mut brackets = (m.open | m.close) & !inside;
        while brackets != 0 {
            let k = brackets.trailing_zeros();
            if m.open >> k & 1 == 1 {
                depth += 1;
            } else {
                depth -= 1;
                if depth == 0 {
                    return Some(j + k as usize + 1);
                }
            }
            brackets &= brackets - 1;
        }
        j += 64;
    }
    skip_container_from(b, j, depth, in_string != 0)
}

/// [`skip_container`] from `b[j]`, `depth` brackets deep, inside a string or not: string by
/// string, sixteen bytes at a time.
fn skip_container_from(b: &[u8], mut j: usize, mut depth: usize, in_string: bool) -> Option<usize> {
    if in_string {
        j = string_end(b, j)?;
    }
    loop {
        let k = find_from(b, j, quote_or_bracket, |c| {
            matches!(c, b'"' | b'{' | b'}' | b'[' | b']')
        })?;
        match b[k] {
            b'"' => {
                j = skip_string(b, k)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            _ => {
                depth -= 1;
                if depth == 0 {
                    return Some(k + 1);
                }
            }
        }
        j = k + 1;
    }
}

fn unescape(s: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let text = std::str::from_utf8(s).ok()?;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '/' => out.push('/'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hex = |chars: &mut std::str::Chars| -> Option<u32> {
                    let h: String = chars.by_ref().take(4).collect();
                    u32::from_str_radix(&h, 16).ok()
                };
                let hi = hex(&mut chars)?;
                let cp = if (0xD800..0xDC00).contains(&hi) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let lo = hex(&mut chars)?;
                    0x10000 + ((hi - 0xD800) << 10) + (lo.checked_sub(0xDC00)?)
                } else {
                    hi
                };
                out.push(char::from_u32(cp)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_members_without_parsing_everything() {
        let j = Json(
            br#" {"a": [1, {"x": "}"}], "b\"c": "d\u00e9\n", "n": -1.5e2, "t": true, "z": null} "#,
        );
        assert_eq!(j.get("a").unwrap().elements().count(), 2);
        assert_eq!(j.members().nth(1).unwrap().0, br#"b\"c"#);
        assert_eq!(j.members().nth(1).unwrap().1.as_str().unwrap(), "dé\n");
        // Strings as they are (borrowed) when ASCII or valid UTF-8 without escapes; not UTF-8:
        // none.
        for (raw, text) in [
            (&b"\"plain\""[..], Some("plain")),
            ("\"d\u{e9}j\u{e0}\"".as_bytes(), Some("d\u{e9}j\u{e0}")),
            (b"\"a\xffb\"", None),
            (b"\"a\\\"\xffb\"", None),
        ] {
            let got = Json(raw).as_str();
            assert_eq!(got.as_deref(), text, "{raw:?}");
            if text.is_some_and(|t| !t.contains('"')) {
                assert!(matches!(got, Some(Cow::Borrowed(_))));
            }
        }
        assert_eq!(j.get("n").unwrap().as_f64(), Some(-150.0));
        assert_eq!(j.get("t").unwrap().as_bool(), Some(true));
        assert!(j.get("z").unwrap().is_null());
        assert!(j.get("missing").is_none());
    }

    #[test]
    fn malformed_input_is_none_not_a_panic() {
        for bad in [
            &b"{"[..],
            b"{\"a",
            b"{\"a\":",
            b"[1,",
            b"\"abc",
            b"{\"a\":\"\\",
            b"",
        ] {
            let j = Json(bad);
            let _ = j.get("a");
            let _ = j.elements().count();
            let _ = j.as_str();
        }
    }

    #[test]
    fn numbers_read_as_the_standard_parser_reads_them() {
        let cases = [
            "0",
            "-0",
            "1",
            "-1",
            "12",
            "596.474195",
            "-596.474195",
            "0.1",
            "0.2",
            "0.3",
            "1.0",
            "100",
            "999999999999999",
            "9999999999999999",
            "123456789012345.6",
            "1.23456789012345",
            "0.000000000000001",
            "0.0000000000000001",
            "1e5",
            "1E-3",
            "-1.5e2",
            "+5",
            ".5",
            "5.",
            "-",
            "-.",
            ".",
            "",
            "1.2.3",
            "00.5",
            "007",
            "1_0",
            "60.69049",
            "19.407",
            "0.007",
            "3.141592653589793",
            "2.5",
            "-0.0",
        ];
        for c in cases {
            let want = c.parse::<f64>().ok();
            let got = Json(c.as_bytes()).as_f64();
            assert_eq!(
                got.map(f64::to_bits),
                want.map(f64::to_bits),
                "{c}: {got:?} vs {want:?}"
            );
        }
        // Every decimal with up to 15 digits in a sweep of magnitudes and dot positions.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = 1 + (x % 15) as usize;
            let m = x % 10u64.pow(digits as u32);
            let s = format!("{m:0digits$}");
            let dot = (x >> 40) as usize % (digits + 1);
            let c = if dot == 0 || dot == digits {
                s
            } else {
                format!("{}.{}", &s[..dot], &s[dot..])
            };
            let c = if x & 1 == 1 { format!("-{c}") } else { c };
            assert_eq!(
                Json(c.as_bytes()).as_f64().map(f64::to_bits),
                c.parse::<f64>().ok().map(f64::to_bits),
                "{c}"
            );
        }
    }

    #[test]
    fn strings_short_and_long_with_escapes_are_skipped_whole() {
        for inner in [
            "",
            "a",
            "\\\"",
            "abc\\\\",
            "0123456789abcde\\\"x",
            "0123456789abcdef",
            "0123456789abcdefghij\\\"klmnopqrstuvwxyz\\\\",
            "\\u00e9xxxxxxxxxxxxxxxxxxxxxxx",
        ] {
            let text = format!("{{\"k\":\"{inner}\",\"n\":1}}");
            let j = Json(text.as_bytes());
            let got: Vec<_> = j
                .members()
                .map(|(k, v)| (k.to_vec(), v.0.to_vec()))
                .collect();
            assert_eq!(got.len(), 2, "{text}");
            assert_eq!(got[0].1, format!("\"{inner}\"").into_bytes(), "{text}");
            assert_eq!(j.get("n").unwrap().as_f64(), Some(1.0));
        }
    }

    /// The byte-at-a-time scanner the block scanner replaced: the reference.
    fn skip_value_bytewise(b: &[u8], i: usize) -> Option<usize> {
        fn string(b: &[u8], i: usize) -> Option<usize> {
            let mut j = i + 1;
            loop {
                let k = j + b.get(j..)?.iter().position(|&c| c == b'"' || c == b'\\')?;
                if b[k] == b'"' {
                    return Some(k + 1);
                }
                j = k + 2;
            }
        }
        match *b.get(i)? {
            b'"' => string(b, i),
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut j = i;
                while j < b.len() {
                    match b[j] {
                        b'"' => {
                            j = string(b, j)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(j + 1);
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                None
            }
            _ => {
                let end = |c: u8| matches!(c, b',' | b' ' | b'\t' | b'\n' | b'\r' | b'}' | b']');
                let j = i + b[i..].iter().position(|&c| end(c)).unwrap_or(b.len() - i);
                (j > i).then_some(j)
            }
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A random JSON value: nested objects and arrays, strings with escapes (in some only).
    fn random_json(r: &mut Rng, depth: usize, escapes: bool, out: &mut Vec<u8>) {
        let string = |r: &mut Rng, out: &mut Vec<u8>| {
            out.push(b'"');
            for _ in 0..r.below(30) {
                match r.below(12) {
                    0 if escapes => out.extend_from_slice(b"\\\""),
                    1 if escapes => out.extend_from_slice(b"\\\\"),
                    2 => out.extend_from_slice(b"{[}]"),
                    _ => out.push(b'a' + r.below(26) as u8),
                }
            }
            out.push(b'"');
        };
        match if depth > 3 { r.below(2) } else { r.below(4) } {
            0 => string(r, out),
            1 => out.extend_from_slice(r.below(1_000_000).to_string().as_bytes()),
            2 => {
                out.push(b'{');
                for n in 0..r.below(8) {
                    if n > 0 {
                        out.push(b',');
                    }
                    string(r, out);
                    out.push(b':');
                    random_json(r, depth + 1, escapes, out);
                }
                out.push(b'}');
            }
            _ => {
                out.push(b'[');
                for n in 0..r.below(8) {
                    if n > 0 {
                        out.extend_from_slice(b", ");
                    }
                    random_json(r, depth + 1, escapes, out);
                }
                out.push(b']');
            }
        }
    }

    #[test]
    fn the_block_scanner_agrees_with_the_bytewise_one() {
        // Random texts over the bytes that matter and bytes one bit away from them (`;`, `=`,
        // ESC, DEL, 0xfb: the brackets are found by folding bit 5; `|`, `-`, 0x08, 0x0b, 0x0c
        // beside the delimiters that end a number), and random JSON documents (strings spanning
        // 64-byte chunks, escapes in half of them), whole and with bytes changed, compared at
        // every start.
        let alphabet = b"{}[]\"\\a ,:;=0\x1b\x7f\xfb\x7b\x5d\t\n\r|-\x08\x0b\x0c";
        let mut r = Rng(0x2545_f491_4f6c_dd1d);
        let (mut compared, mut long, mut objects) = (0, 0, 0);
        for round in 0..3000 {
            let mut text = Vec::new();
            if round % 3 == 0 {
                text = (0..r.below(200))
                    .map(|_| alphabet[r.below(alphabet.len())])
                    .collect();
            } else {
                random_json(&mut r, 0, round % 2 == 0, &mut text);
                if round % 3 == 2 && !text.is_empty() {
                    for _ in 0..3 {
                        let at = r.below(text.len());
                        text[at] = alphabet[r.below(alphabet.len())];
                    }
                }
            }
            for i in 0..text.len() {
                let want = skip_value_bytewise(&text, i);
                assert_eq!(
                    skip_value(&text, i),
                    want,
                    "{:?} at {i}",
                    text.escape_ascii().to_string()
                );
                compared += usize::from(want.is_some());
                long += usize::from(want.is_some_and(|e| e - i > 128));
                if text[i] == b'{' {
                    // The inlined member loop reads what the iterator reads.
                    let want: Vec<_> = Json(&text[i..]).members().collect();
                    let mut got = Vec::new();
                    let end = each_member(&text, i, |k, v| got.push((k, v)));
                    let doc = text.escape_ascii().to_string();
                    assert_eq!(got, want, "{doc:?} at {i}");
                    // A valid document that is an object ends where skipping it ends.
                    if round % 3 == 1 && i == 0 {
                        assert_eq!(end, skip_value(&text, i), "{doc:?} at {i}");
                    }
                    objects += 1;
                }
            }
        }
        assert!(compared > 100_000 && long > 3_000, "{compared} {long}");
        assert!(objects > 10_000, "{objects}");
    }
}
