//! `dedup`: drops an event whose `event_id` was already seen within a window.
//!
//! Settings:
//! * `window`: how long an id is remembered, e.g. `"10m"` (default `"1h"`);
//! * `field`: the enriched field to deduplicate on (default `event_id`).
//!
//! The ids live in weir's keyed state (with the window as TTL), not in the guest: they survive
//! the instance being rebuilt after a trap and, with a durable state backend, a restart.

#![deny(unsafe_op_in_unsafe_fn)]

use weir_transform_sdk::{
    fields, parse_duration_ms, Config, Context, Emit, Error, Record, State, Stateful,
};

pub struct Dedup {
    window_ms: u64,
    field: [usize; 1],
}

impl Stateful for Dedup {
    fn new(config: &Config) -> Result<Self, Error> {
        config.check_keys(&["window", "field"])?;
        let window_ms =
            parse_duration_ms(config.get("window").unwrap_or("1h")).context("setting `window`")?;
        let name = config.get("field").unwrap_or("event_id");
        let field = fields::index(name)
            .with_context(|| format!("setting `field`: there is no enriched field `{name}`"))?;
        Ok(Dedup {
            window_ms,
            field: [field],
        })
    }

    fn fields(&self) -> &[usize] {
        &self.field
    }

    fn state_key<'r>(&self, event: &Record<'r>) -> Option<&'r [u8]> {
        event.field(self.field[0])
    }

    fn process(
        &mut self,
        event: &Record<'_>,
        state: &mut State<'_>,
        out: &mut Emit<'_>,
    ) -> Result<(), Error> {
        let id = event
            .field(self.field[0])
            .with_context(|| format!("no {} to deduplicate on", fields::NAMES[self.field[0]]))?;
        if !state.contains(id) {
            state.put_with_ttl(id, b"", self.window_ms);
            out.keep();
        }
        Ok(())
    }
}

weir_transform_sdk::export_stateful!(Dedup);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_transform_sdk::testing;

    fn event(id: &str) -> Vec<u8> {
        let mut f = vec!["x"; fields::COUNT];
        f[fields::EVENT_ID] = id;
        f.join("\t").into_bytes()
    }

    #[test]
    fn drops_repeats_within_the_window_in_one_host_round_trip() {
        testing::set_now_ms(1_000_000);
        let mut t = testing::stateful::<Dedup>(&[("window", "10m")]).unwrap();
        let (a, b) = (event("a"), event("b"));
        let out = t.process(&[&a, &b, &a]);
        assert_eq!(out.kept(), vec![0, 1]);
        assert_eq!(out.filtered, vec![2]);
        // One get-many before the batch, one put-many after it.
        assert_eq!(t.state.calls, vec!["get-many", "put-many"]);

        // Later batch: still a duplicate inside the window, new again after it.
        testing::advance_ms(9 * 60_000);
        assert_eq!(t.process(&[&a]).kept(), Vec::<usize>::new());
        testing::advance_ms(2 * 60_000);
        assert_eq!(t.process(&[&a]).kept(), vec![0]);
    }

    #[test]
    fn events_without_id_fail_and_settings_are_checked() {
        let mut t = testing::stateful::<Dedup>(&[]).unwrap();
        let out = t.process(&[&event("")]);
        assert_eq!(
            out.errors,
            vec![(0, "no event_id to deduplicate on".to_string())]
        );
        assert!(testing::stateful::<Dedup>(&[("window", "soon")]).is_err());
        assert!(testing::stateful::<Dedup>(&[("field", "evnt_id")]).is_err());
        let mut by_user = testing::stateful::<Dedup>(&[("field", "domain_userid")]).unwrap();
        assert_eq!(by_user.process(&[&event("1"), &event("2")]).kept(), vec![0]);
    }
}
