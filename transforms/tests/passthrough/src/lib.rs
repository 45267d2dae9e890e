//! Keeps every record: what is left is the cost of crossing the boundary.

#![deny(unsafe_op_in_unsafe_fn)]

use weir_transform_sdk::{Config, Error, Filter, Record};

pub struct Passthrough;

impl Filter for Passthrough {
    fn new(config: &Config) -> Result<Self, Error> {
        config.check_keys(&[])?;
        Ok(Passthrough)
    }

    fn keep(&mut self, _: &Record<'_>) -> Result<bool, Error> {
        Ok(true)
    }
}

weir_transform_sdk::export_filter!(Passthrough);
