//! Counts records per key in weir's keyed state and emits `key<TAB>count<TAB>value` for each.
//!
//! A test of state consistency: when every record of a key is applied to the state exactly once
//! in input order, the n-th record of a key always comes out with count n, even when it is read
//! (and emitted) again after a crash. A gap or a repeated count means state and input disagree.

#![deny(unsafe_op_in_unsafe_fn)]

use weir_transform_sdk::{Config, Emit, Error, Record, State, Stateful};

pub struct Counter;

impl Stateful for Counter {
    fn new(config: &Config) -> Result<Self, Error> {
        config.check_keys(&[])?;
        Ok(Counter)
    }

    fn state_key<'r>(&self, event: &Record<'r>) -> Option<&'r [u8]> {
        event.key()
    }

    fn process(
        &mut self,
        event: &Record<'_>,
        state: &mut State<'_>,
        out: &mut Emit<'_>,
    ) -> Result<(), Error> {
        let key = event.key().ok_or("a record without a key")?;
        let n = match state.get(key) {
            Some(v) => u64::from_le_bytes(v.try_into().map_err(|_| "a corrupt count")?),
            None => 0,
        } + 1;
        state.put(key, &n.to_le_bytes());
        let mut line = key.to_vec();
        line.extend_from_slice(format!("\t{n}\t").as_bytes());
        line.extend_from_slice(event.value());
        out.emit_with_key(&line, key);
        Ok(())
    }
}

weir_transform_sdk::export_stateful!(Counter);
