//! Profile fields that borrow their bytes: strings from the stored profile or the event, the
//! dedup fingerprints from the stored profile. A profile decoded from state and updated by an
//! event allocates nothing; only strings with JSON escapes in the event are copied.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Error, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string borrowed from the bytes it was read from when it can be (serde's own `Cow<str>` is
/// always decoded owned when it sits inside an `Option`).
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Str<'a>(pub(crate) Cow<'a, str>);

impl Str<'_> {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Str<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl<'a> From<&'a str> for Str<'a> {
    fn from(s: &'a str) -> Self {
        Str(Cow::Borrowed(s))
    }
}

impl From<String> for Str<'_> {
    fn from(s: String) -> Self {
        Str(Cow::Owned(s))
    }
}

impl<'a> From<Cow<'a, str>> for Str<'a> {
    fn from(s: Cow<'a, str>) -> Self {
        Str(s)
    }
}

impl Serialize for Str<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    /// Read as bytes (postcard and serde_json give a string's bytes, unescaped, as they give
    /// its text) and checked with the SDK's ASCII fast path instead of `str::from_utf8`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: Error>(self, s: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: Error>(self, s: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: Error>(self, s: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s)))
            }
            fn visit_borrowed_bytes<E: Error>(self, b: &'de [u8]) -> Result<Str<'de>, E> {
                text(b).map(|s| Str(Cow::Borrowed(s)))
            }
            fn visit_bytes<E: Error>(self, b: &[u8]) -> Result<Str<'de>, E> {
                text(b).map(|s| Str(Cow::Owned(s.to_owned())))
            }
        }
        fn text<E: Error>(b: &[u8]) -> Result<&str, E> {
            weir_transform_sdk::utf8(b)
                .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Bytes(b), &"UTF-8 text"))
        }
        d.deserialize_bytes(V)
    }
}

/// The fingerprints of a viewer's last events, oldest first: a byte string of 8-byte
/// little-endian words (format 3), borrowed from the stored profile or from the buffer the
/// event's update was written into.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Seen<'a>(Cow<'a, [u8]>);

impl<'a> Seen<'a> {
    /// From fingerprints (profiles of formats 1 and 2 held them as numbers).
    pub(crate) fn from_words(words: &[u64]) -> Seen<'static> {
        Seen(Cow::Owned(
            words.iter().flat_map(|w| w.to_le_bytes()).collect(),
        ))
    }

    /// The number of fingerprints.
    pub(crate) fn len(&self) -> usize {
        self.0.len() / 8
    }

    pub(crate) fn words(&self) -> impl Iterator<Item = u64> + '_ {
        self.0
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
    }

    pub(crate) fn contains(&self, fp: u64) -> bool {
        self.words().any(|w| w == fp)
    }

    /// These fingerprints and `fp`, keeping the newest `max` (none when `max` is 0), written
    /// into `buf`.
    pub(crate) fn pushed<'b>(&self, fp: u64, max: usize, buf: &'b mut Vec<u8>) -> Seen<'b> {
        buf.clear();
        if max > 0 {
            let keep = self.len().min(max - 1);
            buf.extend_from_slice(&self.0[self.0.len() - keep * 8..]);
            buf.extend_from_slice(&fp.to_le_bytes());
        }
        Seen(Cow::Borrowed(buf))
    }
}

impl fmt::Debug for Seen<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.words()).finish()
    }
}

impl Serialize for Seen<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Seen<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Seen<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("bytes, a multiple of 8")
            }
            fn visit_borrowed_bytes<E: Error>(self, b: &'de [u8]) -> Result<Seen<'de>, E> {
                whole_words(b.len(), &self)?;
                Ok(Seen(Cow::Borrowed(b)))
            }
            fn visit_bytes<E: Error>(self, b: &[u8]) -> Result<Seen<'de>, E> {
                whole_words(b.len(), &self)?;
                Ok(Seen(Cow::Owned(b.to_vec())))
            }
        }
        fn whole_words<E: Error>(len: usize, v: &V) -> Result<(), E> {
            if len.is_multiple_of(8) {
                Ok(())
            } else {
                Err(E::invalid_length(len, v))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_decoded_from_postcard_borrow_their_bytes() {
        let bytes = postcard::to_allocvec(&(Some(Str::from("abc")), Str::from("é"))).unwrap();
        let (a, b): (Option<Str<'_>>, Str<'_>) = postcard::from_bytes(&bytes).unwrap();
        assert!(matches!(a.unwrap().0, Cow::Borrowed("abc")));
        assert!(matches!(b.0, Cow::Borrowed("é")));
        // From JSON: borrowed without escapes, owned (unescaped) with them.
        let (x, y): (Str<'_>, Str<'_>) = serde_json::from_str(r#"["plain", "a\"b"]"#).unwrap();
        assert!(matches!(x.0, Cow::Borrowed("plain")));
        assert_eq!((&*y, matches!(y.0, Cow::Owned(_))), ("a\"b", true));
        // Not UTF-8: refused.
        let bad = postcard::to_allocvec(&serde_bytes_of(&[b'a', 0xff])).unwrap();
        assert!(postcard::from_bytes::<Str<'_>>(&bad).is_err());
    }

    #[test]
    fn pushing_keeps_the_newest_fingerprints() {
        let s = Seen::from_words(&[1, 2, 3]);
        let mut buf = Vec::new();
        let words = |s: &Seen<'_>| s.words().collect::<Vec<_>>();
        assert_eq!(words(&s.pushed(4, 8, &mut buf)), [1, 2, 3, 4]);
        assert_eq!(words(&s.pushed(4, 3, &mut buf)), [2, 3, 4]);
        assert_eq!(words(&s.pushed(4, 1, &mut buf)), [4]);
        assert_eq!(words(&s.pushed(4, 0, &mut buf)), [0u64; 0]);
        assert!(s.contains(2) && !s.contains(4));
        // Not whole words: refused.
        let bytes = postcard::to_allocvec(&serde_bytes_of(&[0u8; 7])).unwrap();
        assert!(postcard::from_bytes::<Seen<'_>>(&bytes).is_err());
    }

    fn serde_bytes_of(b: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(b)
    }
}
