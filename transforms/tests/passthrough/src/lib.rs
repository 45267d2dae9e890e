//! Keeps every record: what is left is the cost of crossing the boundary.

use weir_transform_sdk::{Config, Filter, Record};

pub struct Passthrough;

impl Filter for Passthrough {
    fn new(config: &Config) -> Result<Self, String> {
        config.check_keys(&[])?;
        Ok(Passthrough)
    }

    fn keep(&mut self, _: &Record<'_>) -> Result<bool, String> {
        Ok(true)
    }
}

weir_transform_sdk::export_filter!(Passthrough);
