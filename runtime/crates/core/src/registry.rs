//! Maps a config `type` to the code that parses and builds that component.
//!
//! Each role (sources, transforms, sinks) keeps a static table of [`Registration`]s in its
//! `mod.rs`; adding a component is one file with its config struct and code, plus one line there.

use crate::config::{kind_name, suggest, take_key, ConfigError, Origin};

/// One entry of a role's registry: a `type` name and the function that parses its settings.
pub struct Registration<B: ?Sized> {
    pub name: &'static str,
    pub parse: fn(config::Value, &Origin) -> Result<Box<B>, ConfigError>,
}

/// Read `type` from a component's settings, find it in `registry` and parse the rest.
pub fn parse<B: ?Sized>(
    registry: &[Registration<B>],
    role: &str,
    mut value: config::Value,
    origin: &Origin,
) -> Result<(&'static str, Box<B>), ConfigError> {
    let names = || registry.iter().map(|r| r.name);
    let ty = match take_key(&mut value, "type", origin)? {
        None => {
            return Err(origin.error(
                "type",
                format!(
                    "missing required key `type`; expected the {role} type, one of {}",
                    quoted(names())
                ),
            ))
        }
        Some(v) => match v.kind {
            config::ValueKind::String(s) => s,
            other => {
                return Err(origin.error(
                    "type",
                    format!(
                        "expected a string naming the {role} type, found {}",
                        kind_name(&other)
                    ),
                ))
            }
        },
    };
    let Some(reg) = registry.iter().find(|r| r.name == ty) else {
        let mut m = format!(
            "unknown {role} type `{ty}`; expected one of {}",
            quoted(names())
        );
        if let Some(s) = suggest(&ty, names()) {
            m.push_str(&format!("; did you mean `{s}`?"));
        }
        return Err(origin.error("type", m));
    };
    Ok((reg.name, (reg.parse)(value, origin)?))
}

fn quoted<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
