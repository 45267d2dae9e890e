//! `media-filter`: keeps Snowplow media events, drops everything else.
//!
//! Settings (the `config` map of the transform in the pipeline config):
//! * `vendor`: the event vendor to keep (default `com.snowplowanalytics.snowplow.media`, the media
//!   plugin v2 events);
//! * `event_name`: a regex the event name must match (default `_event$`, e.g. `^(play|pause)_event$`);
//! * `send`: what weir sends the transform: `fields` (default: only `event_vendor` and
//!   `event_name`) or `payload` (whole events; slower, for comparison).

#![deny(unsafe_op_in_unsafe_fn)]

use regex::Regex;
use weir_transform_sdk::{fields, Config, Context, Error, Filter, Record};

pub struct MediaFilter {
    vendor: String,
    event_name: Regex,
    fields: Vec<usize>,
}

impl Filter for MediaFilter {
    fn new(config: &Config) -> Result<Self, Error> {
        config.check_keys(&["vendor", "event_name", "send"])?;
        let fields = match config.get("send").unwrap_or("fields") {
            "fields" => vec![fields::EVENT_VENDOR, fields::EVENT_NAME],
            "payload" => Vec::new(),
            other => {
                return Err(format!(
                    "setting `send`: expected `fields` or `payload`, found `{other}`"
                )
                .into())
            }
        };
        let pattern = config.get("event_name").unwrap_or("_event$");
        Ok(MediaFilter {
            vendor: config
                .get("vendor")
                .unwrap_or("com.snowplowanalytics.snowplow.media")
                .to_string(),
            event_name: Regex::new(pattern).context("setting `event_name`: invalid regex")?,
            fields,
        })
    }

    /// Only these two fields cross the boundary, not whole events.
    fn fields(&self) -> &[usize] {
        &self.fields
    }

    fn keep(&mut self, event: &Record<'_>) -> Result<bool, Error> {
        if event.field(fields::EVENT_VENDOR) != Some(self.vendor.as_bytes()) {
            return Ok(false);
        }
        let name = event.field_str(fields::EVENT_NAME).unwrap_or("");
        Ok(self.event_name.is_match(name))
    }
}

weir_transform_sdk::export_filter!(MediaFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_transform_sdk::testing;

    fn event(vendor: &str, name: &str) -> Vec<u8> {
        let mut f = vec![""; fields::COUNT];
        f[fields::EVENT_VENDOR] = vendor;
        f[fields::EVENT_NAME] = name;
        f.join("\t").into_bytes()
    }

    #[test]
    fn keeps_media_events_only() {
        let mut t = testing::filter::<MediaFilter>(&[]).unwrap();
        let play = event("com.snowplowanalytics.snowplow.media", "play_event");
        let page = event("com.snowplowanalytics.snowplow", "page_view");
        let out = t.process(&[&play, &page, b"not an event"]);
        assert_eq!(out.kept(), vec![0]);
        assert_eq!(out.outputs[0].value, play);
        assert_eq!(out.filtered, vec![1, 2]);
    }

    #[test]
    fn regex_and_vendor_from_config() {
        let mut t =
            testing::filter::<MediaFilter>(&[("event_name", "^(play|pause)_event$")]).unwrap();
        let v = "com.snowplowanalytics.snowplow.media";
        let (play, seek) = (event(v, "play_event"), event(v, "seek_start_event"));
        assert_eq!(t.process(&[&play, &seek]).kept(), vec![0]);

        let mut v1 = testing::filter::<MediaFilter>(&[
            ("vendor", "com.snowplowanalytics.snowplow"),
            ("event_name", "^media_player_event$"),
        ])
        .unwrap();
        let legacy = event("com.snowplowanalytics.snowplow", "media_player_event");
        assert_eq!(v1.process(&[&legacy, &play]).kept(), vec![0]);
    }

    #[test]
    fn whole_payloads_on_request() {
        let mut t = testing::filter::<MediaFilter>(&[("send", "payload")]).unwrap();
        let play = event("com.snowplowanalytics.snowplow.media", "play_event");
        assert_eq!(t.process(&[&play, b"x"]).kept(), vec![0]);
        assert!(testing::filter::<MediaFilter>(&[("send", "all")]).is_err());
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let bad = testing::filter::<MediaFilter>(&[("event_name", "(")])
            .err()
            .unwrap()
            .to_string();
        assert!(bad.contains("invalid regex"), "{bad}");
        let typo = testing::filter::<MediaFilter>(&[("vendr", "x")])
            .err()
            .unwrap()
            .to_string();
        assert!(typo.contains("unknown setting `vendr`"), "{typo}");
    }

    #[test]
    fn same_answer_on_whole_lines_natively() {
        // Natively (as in weir's benchmark) the filter reads whole lines; same result.
        let mut f = MediaFilter::new(&Config::default()).unwrap();
        let play = event("com.snowplowanalytics.snowplow.media", "play_event");
        assert!(f.keep(&Record::new(&play)).unwrap());
        assert!(!f.keep(&Record::new(b"x\ty")).unwrap());
    }
}
