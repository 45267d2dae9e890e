//! [`Error`]: what a transform's functions return when a record (or the config) is refused.

use std::fmt;

/// The error of a transform's functions: weir shows its message, with the causes after it, as
/// the reason a record failed (or, from `new`, as a config error).
///
/// `?` converts into it from any error type (`std::str::Utf8Error`, `std::num::ParseIntError`,
/// `serde_json::Error`, your own `std::error::Error` types, …) and from a `String` or `&str`
/// message, so a transform can write:
///
/// ```
/// use weir_transform_sdk::Error;
///
/// fn viewer(id: &[u8]) -> Result<u64, Error> {
///     let text = std::str::from_utf8(id)?; // a Utf8Error
///     let n: u64 = text.parse()?; // a ParseIntError
///     if n == 0 {
///         return Err("viewer 0 is reserved".into()); // a message
///     }
///     Ok(n)
/// }
///
/// assert_eq!(viewer(b"42").unwrap(), 42);
/// assert_eq!(
///     viewer(b"x").unwrap_err().to_string(),
///     "invalid digit found in string"
/// );
/// assert_eq!(viewer(b"0").unwrap_err().to_string(), "viewer 0 is reserved");
/// assert!(viewer(b"\xff").is_err());
/// ```
///
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself (that would clash with
/// the conversion from every error type).
pub struct Error(Box<dyn std::error::Error + Send + Sync + 'static>);

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Error {
        Error(message.to_string().into())
    }

    /// The message followed by the chain of causes, as weir reports it.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The underlying error (to inspect its type with `downcast_ref`).
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

/// Adds what was being done to an error, as `anyhow::Context` does: `"setting `window`: …"`.
///
/// ```
/// use weir_transform_sdk::{Context, Error};
///
/// fn window(text: &str) -> Result<u64, Error> {
///     text.parse::<u64>().context("setting `window`")
/// }
/// fn first(items: &[u64]) -> Result<u64, Error> {
///     items.first().copied().context("no items")
/// }
///
/// assert_eq!(
///     window("soon").unwrap_err().to_string(),
///     "setting `window`: invalid digit found in string"
/// );
/// assert_eq!(first(&[]).unwrap_err().to_string(), "no items");
/// ```
pub trait Context<T> {
    /// The error, or `None`, becomes `message` (followed by the error as its cause).
    fn context(self, message: impl fmt::Display) -> Result<T, Error>;
    /// Like [`Context::context`], with the message built only on error.
    fn with_context<M: fmt::Display>(self, message: impl FnOnce() -> M) -> Result<T, Error>;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context(self, message: impl fmt::Display) -> Result<T, Error> {
        self.map_err(|e| Error::caused_by(message.to_string(), e.into()))
    }
    fn with_context<M: fmt::Display>(self, message: impl FnOnce() -> M) -> Result<T, Error> {
        self.map_err(|e| Error::caused_by(message().to_string(), e.into()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, message: impl fmt::Display) -> Result<T, Error> {
        self.ok_or_else(|| Error::msg(message))
    }
    fn with_context<M: fmt::Display>(self, message: impl FnOnce() -> M) -> Result<T, Error> {
        self.ok_or_else(|| Error::msg(message()))
    }
}

/// A message with the error that caused it.
#[derive(Debug)]
struct Caused {
    message: String,
    cause: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl fmt::Display for Caused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Caused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.cause)
    }
}

impl Error {
    fn caused_by(message: String, cause: Error) -> Error {
        Error(Box::new(Caused {
            message,
            cause: cause.0,
        }))
    }
}

impl<E> From<E> for Error
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    fn from(e: E) -> Error {
        Error(e.into())
    }
}

/// The message, then each cause: `outer: cause: root cause`.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PartialEq for Error {
    /// Errors are equal when their messages are (handy in tests).
    fn eq(&self, other: &Error) -> bool {
        self.to_string() == other.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[derive(Debug)]
    struct Outer(std::num::ParseIntError);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("setting `n`")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn question_mark_on(input: &[u8]) -> Result<i32, Error> {
        let s = std::str::from_utf8(input)?;
        let n = s.parse::<i32>().map_err(Outer)?;
        if n < 0 {
            return Err(format!("{n} is negative").into());
        }
        if n == 0 {
            Err("zero")?;
        }
        Ok(n)
    }

    #[test]
    fn converts_errors_and_messages_and_keeps_the_causes() {
        assert_eq!(question_mark_on(b"7"), Ok(7));
        assert_eq!(
            question_mark_on(b"\xffx").unwrap_err().to_string(),
            "invalid utf-8 sequence of 1 bytes from index 0"
        );
        assert_eq!(
            question_mark_on(b"x").unwrap_err().message(),
            "setting `n`: invalid digit found in string"
        );
        assert_eq!(
            question_mark_on(b"-2").unwrap_err(),
            Error::msg("-2 is negative")
        );
        assert_eq!(format!("{:?}", question_mark_on(b"0").unwrap_err()), "zero");
        let e = question_mark_on(b"x").unwrap_err();
        assert!(e.inner().downcast_ref::<Outer>().is_some());
    }

    #[test]
    fn context_goes_before_the_cause() {
        use super::Context;
        let r: Result<i32, Error> = "x".parse::<i32>().context("setting `n`");
        let r = r.with_context(|| format!("transform {}", 3));
        assert_eq!(
            r.unwrap_err().to_string(),
            "transform 3: setting `n`: invalid digit found in string"
        );
        assert_eq!(
            None::<u8>.context("no event_id").unwrap_err().to_string(),
            "no event_id"
        );
        assert_eq!(Some(1).context("unused"), Ok(1));
    }
}
