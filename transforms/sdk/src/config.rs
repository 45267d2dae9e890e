//! The `config` map a transform gets from its pipeline config.

use std::str::FromStr;

use crate::error::Error;

/// A transform's own settings: the `config` table of its entry in the pipeline config, as
/// string keys and string values (weir turns numbers and booleans into their text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    pub fn new(pairs: Vec<(String, String)>) -> Config {
        Config { pairs }
    }

    /// A config from literal pairs (handy in tests).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Config {
        Config {
            pairs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an error naming the missing setting.
    pub fn require(&self, key: &str) -> Result<&str, Error> {
        self.get(key)
            .ok_or_else(|| Error::msg(format!("missing required setting `{key}`")))
    }

    /// The value of `key` parsed as `T`, `None` if unset, or an error naming the setting.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, Error>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| Error::msg(format!("setting `{key}`: cannot read {v:?}: {e}"))),
        }
    }

    /// An error for the first key that is not in `allowed` (catches typos in pipeline configs).
    pub fn check_keys(&self, allowed: &[&str]) -> Result<(), Error> {
        match self
            .pairs
            .iter()
            .find(|(k, _)| !allowed.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) if allowed.is_empty() => Err(Error::msg(format!(
                "unknown setting `{k}`; this transform takes no settings"
            ))),
            Some((k, _)) => Err(Error::msg(format!(
                "unknown setting `{k}`; expected one of {}",
                allowed
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// All pairs, in the order given.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

/// Reads a duration such as `"500ms"`, `"30s"`, `"10m"`, `"1h"`, `"1d"` or a number of
/// milliseconds, as milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, Error> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || Error::msg(format!("expected a duration such as \"10m\", found {s:?}"));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| Error::msg(format!("duration {s:?} is too long")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_durations() {
        let c = Config::from_pairs(&[("regex", "^a"), ("windw", "1m")]);
        assert_eq!(c.get("regex"), Some("^a"));
        assert!(c
            .check_keys(&["regex", "window"])
            .unwrap_err()
            .message()
            .contains("`windw`"));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert!(parse_duration_ms("ten").is_err());
    }
}
