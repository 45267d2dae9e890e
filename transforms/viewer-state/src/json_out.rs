//! The profile as JSON, written straight into a reused buffer: the keys are literals, strings are
//! copied as they are unless they need escaping, numbers go through serde_json's own formatter.
//! The bytes are exactly what `serde_json::to_writer` writes for the same profile (a test holds
//! the two side by side), at a fraction of the cost: no serializer state machine, no per-byte
//! escape table lookups for the common string without escapes.

use serde_json::ser::{CompactFormatter, Formatter};
use weir_transform_sdk::{mem, words};

use crate::{Ad, AdBreak, App, Device, Media, Page, Session, Status, Stored, Str};

/// A JSON writer over a byte buffer, for objects with keys known in advance.
pub(crate) struct Out<'b> {
    buf: &'b mut Vec<u8>,
}

impl<'b> Out<'b> {
    pub(crate) fn new(buf: &'b mut Vec<u8>) -> Self {
        buf.clear();
        Out { buf }
    }

    /// Literal JSON: punctuation and keys (`,"key":`), spelled out where they are written.
    #[inline]
    fn raw(&mut self, json: &[u8]) {
        mem::extend(self.buf, json);
    }

    fn null(&mut self) {
        mem::extend(self.buf, b"null");
    }

    fn str(&mut self, s: &str) {
        self.buf.push(b'"');
        escape_into(s.as_bytes(), self.buf);
        self.buf.push(b'"');
    }

    fn opt_str(&mut self, s: &Option<Str<'_>>) {
        match s {
            Some(s) => self.str(s),
            None => self.null(),
        }
    }

    fn f64(&mut self, v: f64) {
        if v.is_finite() {
            if !short_decimal(v, self.buf) {
                // Writing into a Vec cannot fail.
                let _ = CompactFormatter.write_f64(self.buf, v);
            }
        } else {
            self.null(); // as serde_json writes NaN and infinities
        }
    }

    fn opt_f64(&mut self, v: Option<f64>) {
        match v {
            Some(v) => self.f64(v),
            None => self.null(),
        }
    }

    fn opt_bool(&mut self, v: Option<bool>) {
        mem::extend(
            self.buf,
            match v {
                Some(true) => b"true",
                Some(false) => b"false",
                None => b"null",
            },
        );
    }

    fn u64(&mut self, v: u64) {
        put_u64(self.buf, v, 1);
    }

    /// `0`-padded to `width` digits, as `format!("{v:0width$}")` for non-negative values.
    fn padded(&mut self, v: u64, width: usize) {
        put_u64(self.buf, v, width);
    }
}

/// Appends the decimal digits of `v`, `0`-padded to `width` (at most 20). In 32 bits while the
/// value fits: a wasm32 guest divides a u64 by 10 with a real division, a u32 by a multiply.
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    let mut n = v;
    while n > u64::from(u32::MAX) {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let mut n = n as u32;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(digits.len() - width.min(digits.len()));
    mem::extend(out, &digits[start..]);
}

/// Writes `v` if it is a number of at most three decimals under 2^30 (media positions,
/// durations, rates, volumes, counts) the way serde_json's shortest round-trip formatter does,
/// without its 128-bit arithmetic (which a wasm32 guest emulates): `12.5`, `3.0`, `-0.125`.
/// Returns false, writing nothing, for any other value.
///
/// Why the digits are the same: `m / 1000.0 == |v|` with a correctly rounded division means the
/// decimal `m / 1000` reads back as `v`; below 2^30 one ulp is under 2^-22, so no other decimal
/// of at most three places reads back as `v`, hence none shorter does.
pub(crate) fn short_decimal(v: f64, out: &mut Vec<u8>) -> bool {
    let a = v.abs();
    if a >= (1u64 << 30) as f64 || (v == 0.0 && v.is_sign_negative()) {
        return false;
    }
    // Ties to even: one WebAssembly instruction, where `round` is a libm call; the check below
    // holds the result to what it must be either way.
    let m = (a * 1000.0).round_ties_even();
    if m / 1000.0 != a {
        return false;
    }
    // `m / 1000` is exactly `a`, so the integer part is `a`'s; no 64-bit division.
    let int = a.trunc();
    let frac = (m - int * 1000.0) as u32;
    if v < 0.0 {
        out.push(b'-');
    }
    put_u64(out, int as u64, 1);
    if frac == 0 {
        mem::extend(out, b".0");
    } else {
        let f = [
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let len = if f[3] != b'0' {
            4
        } else if f[2] != b'0' {
            3
        } else {
            2
        };
        mem::extend(out, &f[..len]);
    }
    true
}

/// Appends `s` as the inside of a JSON string, escaped as serde_json escapes it: `"` and `\`,
/// the short forms `\b \f \n \r \t`, other control characters as `\u00xx`; nothing else.
pub(crate) fn escape_into(s: &[u8], out: &mut Vec<u8>) {
    // The usual string needs nothing: one pass says so.
    if !words::any(
        s,
        |w| words::below(w, 0x20) | words::eq(w, b'"') | words::eq(w, b'\\'),
        |c| c < 0x20 || c == b'"' || c == b'\\',
    ) {
        mem::extend(out, s);
        return;
    }
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Watching => "watching",
            Status::Paused => "paused",
            Status::Buffering => "buffering",
            Status::InAd => "in_ad",
            Status::Ended => "ended",
        }
    }
}

fn ad(o: &mut Out<'_>, a: &Ad) {
    o.raw(b"{\"creative_id\":");
    o.opt_str(&a.creative_id);
    o.raw(b",\"duration\":");
    o.opt_f64(a.duration);
    o.raw(b",\"id\":");
    o.opt_str(&a.id);
    o.raw(b",\"name\":");
    o.opt_str(&a.name);
    o.raw(b",\"pod_position\":");
    o.opt_f64(a.pod_position);
    o.raw(b",\"skippable\":");
    o.opt_bool(a.skippable);
    o.buf.push(b'}');
}

fn ad_break(o: &mut Out<'_>, a: &AdBreak) {
    o.raw(b"{\"id\":");
    o.opt_str(&a.id);
    o.raw(b",\"name\":");
    o.opt_str(&a.name);
    o.raw(b",\"pod_size\":");
    o.opt_f64(a.pod_size);
    o.raw(b",\"type\":");
    o.opt_str(&a.kind);
    o.buf.push(b'}');
}

fn app(o: &mut Out<'_>, a: &App) {
    o.raw(b"{\"build\":");
    o.opt_str(&a.build);
    o.raw(b",\"version\":");
    o.opt_str(&a.version);
    o.buf.push(b'}');
}

fn device(o: &mut Out<'_>, d: &Device) {
    o.raw(b"{\"manufacturer\":");
    o.opt_str(&d.manufacturer);
    o.raw(b",\"model\":");
    o.opt_str(&d.model);
    o.raw(b",\"os\":");
    o.opt_str(&d.os);
    o.raw(b",\"os_version\":");
    o.opt_str(&d.os_version);
    o.buf.push(b'}');
}

fn media(o: &mut Out<'_>, m: &Media) {
    o.raw(b"{\"duration\":");
    o.opt_f64(m.duration);
    o.raw(b",\"fullscreen\":");
    o.opt_bool(m.fullscreen);
    o.raw(b",\"muted\":");
    o.opt_bool(m.muted);
    o.raw(b",\"percent\":");
    o.opt_f64(m.percent);
    o.raw(b",\"player_type\":");
    o.opt_str(&m.player_type);
    o.raw(b",\"position\":");
    o.opt_f64(m.position);
    o.raw(b",\"quality\":");
    o.opt_str(&m.quality);
    o.raw(b",\"rate\":");
    o.opt_f64(m.rate);
    o.raw(b",\"title\":");
    o.opt_str(&m.title);
    o.raw(b",\"type\":");
    o.opt_str(&m.kind);
    o.raw(b",\"volume\":");
    o.opt_f64(m.volume);
    o.buf.push(b'}');
}

fn page(o: &mut Out<'_>, p: &Page) {
    o.raw(b"{\"title\":");
    o.opt_str(&p.title);
    o.raw(b",\"url\":");
    o.opt_str(&p.url);
    o.buf.push(b'}');
}

fn session(o: &mut Out<'_>, s: &Session) {
    o.raw(b"{\"ad_breaks\":");
    o.opt_f64(s.ad_breaks);
    o.raw(b",\"ads\":");
    o.opt_f64(s.ads);
    o.raw(b",\"ads_clicked\":");
    o.opt_f64(s.ads_clicked);
    o.raw(b",\"ads_skipped\":");
    o.opt_f64(s.ads_skipped);
    o.raw(b",\"avg_playback_rate\":");
    o.opt_f64(s.avg_playback_rate);
    o.raw(b",\"content_watched\":");
    o.opt_f64(s.content_watched);
    o.raw(b",\"id\":");
    o.opt_str(&s.id);
    o.raw(b",\"started_at\":");
    o.opt_str(&s.started_at);
    o.raw(b",\"time_buffering\":");
    o.opt_f64(s.time_buffering);
    o.raw(b",\"time_in_ads\":");
    o.opt_f64(s.time_in_ads);
    o.raw(b",\"time_paused\":");
    o.opt_f64(s.time_paused);
    o.raw(b",\"time_played\":");
    o.opt_f64(s.time_played);
    o.raw(b",\"time_played_muted\":");
    o.opt_f64(s.time_played_muted);
    o.buf.push(b'}');
}

/// The profile of `viewer` (keys in alphabetical order; `session` only when known).
pub(crate) fn profile(stored: &Stored, viewer: &str, buf: &mut Vec<u8>) {
    let c = &stored.current;
    let mut o = Out::new(buf);
    o.raw(b"{\"ad\":");
    match &c.ad {
        Some(a) => ad(&mut o, a),
        None => o.null(),
    }
    o.raw(b",\"ad_break\":");
    match &c.ad_break {
        Some(a) => ad_break(&mut o, a),
        None => o.null(),
    }
    o.raw(b",\"app\":");
    match &stored.client.app {
        Some(a) => app(&mut o, a),
        None => o.null(),
    }
    o.raw(b",\"app_id\":");
    o.opt_str(&c.app_id);
    o.raw(b",\"device\":");
    match &stored.client.device {
        Some(d) => device(&mut o, d),
        None => o.null(),
    }
    o.raw(b",\"events\":");
    o.u64(stored.events);
    o.raw(b",\"first_seen\":");
    o.str(&stored.first_seen);
    o.raw(b",\"last_event\":");
    o.str(&c.last_event);
    o.raw(b",\"last_seen\":");
    o.str(&stored.last_seen);
    o.raw(b",\"media\":");
    media(&mut o, &c.media);
    o.raw(b",\"page\":");
    page(&mut o, &c.page);
    o.raw(b",\"platform\":");
    o.opt_str(&stored.client.platform);
    if let Some(s) = &stored.session {
        o.raw(b",\"session\":");
        session(&mut o, s);
    }
    o.raw(b",\"status\":");
    o.str(c.status.as_str());
    // The version: newest device time (ms, 13 digits) and the event count (9 digits), so that
    // a later profile of a viewer sorts after an earlier one.
    o.raw(b",\"version\":");
    o.buf.push(b'"');
    o.padded(stored.newest_ms.max(0) as u64, 13);
    o.buf.push(b'-');
    o.padded(stored.events, 9);
    o.buf.push(b'"');
    o.raw(b",\"viewer_id\":");
    o.str(viewer);
    o.buf.push(b'}');
}
