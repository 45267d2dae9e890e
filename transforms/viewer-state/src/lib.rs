//! `viewer-state`: turns Snowplow media events into one live profile per viewer.
//!
//! A viewer is the event's `user_id`, else its `domain_userid`, else its `network_userid`. For
//! every media event (vendor `com.snowplowanalytics.snowplow.media`) the transform updates that
//! viewer's profile — held in weir's keyed state, never in the guest — and emits it (keyed by the
//! viewer) when it changed. Design choices, each against a flaw of the original backend:
//!
//! * **Status from the event and its entities, not a transition table**: `ended` if the player
//!   says so (or on `end_event`), `in_ad` while an ad break entity is attached (until
//!   `ad_break_end_event`), `buffering` after `buffer_start_event`, else `paused` or `watching`
//!   from `media_player.paused`. A new media session after an end simply starts over.
//! * **Order-tolerant**: the current fields (status, media, ad, session stats) come from the
//!   newest event applied so far, by device timestamp; an older event arriving late never
//!   regresses them (it still counts, and can lower `first_seen`).
//! * **Idempotent**: each `event_id` is remembered (in state, with a TTL of `dedup_window`); a
//!   redelivered event changes nothing and emits nothing.
//! * **Expiry**: a viewer silent for longer than `ttl` is removed: each event stores the profile
//!   with a TTL of `ttl`, weir's state expires it (its time index, no index of viewers here) and
//!   calls `expired`, which emits `{"viewer_id": …, "removed": true}`.
//!
//! Settings: `ttl` (default `30m`), `dedup_window` (default `24h`).

#![deny(unsafe_op_in_unsafe_fn)]

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use weir_transform_sdk::{
    fields, parse_duration_ms, Config, Context, Emit, Emitted, Error, Json, Record, State, Stateful,
};

const MEDIA_VENDOR: &[u8] = b"com.snowplowanalytics.snowplow.media";
const PLAYER: &str = "iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/";
const SESSION: &str = "iglu:com.snowplowanalytics.snowplow.media/session/jsonschema/";
const AD: &str = "iglu:com.snowplowanalytics.snowplow.media/ad/jsonschema/";
const AD_BREAK: &str = "iglu:com.snowplowanalytics.snowplow.media/ad_break/jsonschema/";
/// Keys of the transform's own entries (event ids seen) start with this byte; viewer ids never
/// do (a viewer id with it is refused).
const INTERNAL: u8 = 0;
const READS: [usize; 13] = [
    fields::APP_ID,
    fields::COLLECTOR_TSTAMP,
    fields::DVCE_CREATED_TSTAMP,
    fields::EVENT_ID,
    fields::USER_ID,
    fields::DOMAIN_USERID,
    fields::NETWORK_USERID,
    fields::PAGE_URL,
    fields::PAGE_TITLE,
    fields::CONTEXTS,
    fields::DERIVED_CONTEXTS,
    fields::EVENT_VENDOR,
    fields::EVENT_NAME,
];

pub struct ViewerState {
    ttl_ms: u64,
    dedup_ms: u64,
    fields: Vec<usize>,
}

/// What the state holds per viewer: the profile shown to the world, plus what ordering needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    profile: Value,
    /// Device timestamp (ms) of the newest event applied to the current fields.
    newest_ms: i64,
}

impl Stateful for ViewerState {
    fn new(config: &Config) -> Result<Self, Error> {
        config.check_keys(&["ttl", "dedup_window"])?;
        let ttl_ms =
            parse_duration_ms(config.get("ttl").unwrap_or("30m")).context("setting `ttl`")?;
        let dedup_ms = parse_duration_ms(config.get("dedup_window").unwrap_or("24h"))
            .context("setting `dedup_window`")?;
        Ok(ViewerState {
            ttl_ms,
            dedup_ms,
            fields: READS.to_vec(),
        })
    }

    fn fields(&self) -> &[usize] {
        &self.fields
    }

    fn state_key<'r>(&self, event: &Record<'r>) -> Option<&'r [u8]> {
        viewer_id(event)
    }

    fn process(
        &mut self,
        event: &Record<'_>,
        state: &mut State<'_>,
        out: &mut Emit<'_>,
    ) -> Result<(), Error> {
        if event.field(fields::EVENT_VENDOR) != Some(MEDIA_VENDOR) {
            return Ok(()); // not a media event: filtered
        }
        let viewer = viewer_id(event)
            .ok_or("no user_id, domain_userid or network_userid to identify the viewer")?;
        let viewer_str = std::str::from_utf8(viewer).context("viewer id is not UTF-8")?;
        if viewer.first() == Some(&INTERNAL) {
            return Err("a viewer id starting with a NUL byte".into());
        }
        let event_id = event.field(fields::EVENT_ID).ok_or("no event_id")?;
        let mut seen_key = b"\0e/".to_vec();
        seen_key.extend_from_slice(event_id);
        if state.contains(&seen_key) {
            return Ok(()); // redelivered: already applied
        }
        let name = event.field_str(fields::EVENT_NAME).ok_or("no event_name")?;
        let ts = event
            .field_str(fields::DVCE_CREATED_TSTAMP)
            .or_else(|| event.field_str(fields::COLLECTOR_TSTAMP))
            .and_then(parse_ms)
            .ok_or("no parsable dvce_created_tstamp or collector_tstamp")?;
        let collector = event
            .field_str(fields::COLLECTOR_TSTAMP)
            .map(iso)
            .unwrap_or_default();

        let mut stored: Stored = match state.get(viewer) {
            Some(bytes) => serde_json::from_slice(bytes)
                .with_context(|| format!("corrupt state for {viewer_str}"))?,
            None => Stored {
                profile: json!({ "viewer_id": viewer_str, "events": 0 }),
                newest_ms: i64::MIN,
            },
        };
        let before = stored.profile.clone();
        let p = stored.profile.as_object_mut().ok_or("corrupt profile")?;

        // Always: count the event, widen first/last seen.
        let events = p.get("events").and_then(Value::as_u64).unwrap_or(0) + 1;
        p.insert("events".into(), json!(events));
        if p.get("first_seen")
            .and_then(Value::as_str)
            .is_none_or(|f| collector.as_str() < f)
        {
            p.insert("first_seen".into(), json!(collector));
        }
        if p.get("last_seen")
            .and_then(Value::as_str)
            .is_none_or(|l| collector.as_str() > l)
        {
            p.insert("last_seen".into(), json!(collector));
        }
        // Only the newest event sets the current fields.
        if ts >= stored.newest_ms {
            stored.newest_ms = ts;
            apply_current(p, event, name);
        }
        p.insert(
            "version".into(),
            json!(format!("{:013}-{:09}", stored.newest_ms.max(0), events)),
        );

        state.put_with_ttl(&seen_key, b"", self.dedup_ms);
        let changed = !same_but_volatile(&before, &stored.profile);
        let bytes = serde_json::to_vec(&stored)?;
        // Silent for `ttl`: weir expires the profile and calls `expired`.
        state.put_with_ttl(viewer, &bytes, self.ttl_ms);
        if changed {
            let doc = serde_json::to_vec(&stored.profile)?;
            out.emit_with_key(&doc, viewer);
        }
        Ok(())
    }

    /// A viewer silent for longer than `ttl`: its removal record.
    fn expired(&mut self, key: &[u8], _value: &[u8], _: &mut State<'_>, out: &mut Emitted) {
        if key.first() == Some(&INTERNAL) {
            return; // an event id's dedup window ended
        }
        let id = String::from_utf8_lossy(key);
        let doc = json!({ "viewer_id": id, "removed": true });
        out.emit_with_key(doc.to_string().as_bytes(), key);
    }
}

weir_transform_sdk::export_stateful!(ViewerState);

fn viewer_id<'r>(event: &Record<'r>) -> Option<&'r [u8]> {
    event
        .field(fields::USER_ID)
        .or_else(|| event.field(fields::DOMAIN_USERID))
        .or_else(|| event.field(fields::NETWORK_USERID))
}

/// Keys every event changes: a profile that differs only in these did not "change".
const VOLATILE: [&str; 3] = ["events", "version", "last_seen"];

/// Whether two profiles are equal apart from [`VOLATILE`] keys (compared in place, no copies).
fn same_but_volatile(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let stable = |(k, _): &(&String, &Value)| !VOLATILE.contains(&k.as_str());
    a.iter().filter(stable).count() == b.iter().filter(stable).count()
        && a.iter().filter(stable).all(|(k, v)| b.get(k) == Some(v))
}

/// The fields that follow the newest event: status, media, ad, session, page.
fn apply_current(p: &mut serde_json::Map<String, Value>, event: &Record<'_>, name: &str) {
    let player = event.entity(PLAYER);
    let session = event.entity(SESSION);
    let ad = event.entity(AD);
    let ad_break = event.entity(AD_BREAK);
    let f =
        |j: &Option<Json<'_>>, k: &str| j.as_ref().and_then(|j| j.get(k)).and_then(|v| v.as_f64());
    let b =
        |j: &Option<Json<'_>>, k: &str| j.as_ref().and_then(|j| j.get(k)).and_then(|v| v.as_bool());
    let s = |j: &Option<Json<'_>>, k: &str| {
        j.as_ref()
            .and_then(|j| j.get(k))
            .and_then(|v| v.as_str())
            .map(|c| c.into_owned())
    };

    let ended = name == "end_event" || b(&player, "ended") == Some(true);
    let in_ad =
        !ended && name != "ad_break_end_event" && (ad_break.is_some() || name.starts_with("ad_"));
    let status = if ended {
        "ended"
    } else if in_ad {
        "in_ad"
    } else if name == "buffer_start_event" {
        "buffering"
    } else if b(&player, "paused") == Some(true) {
        "paused"
    } else {
        "watching"
    };
    p.insert("status".into(), json!(status));
    p.insert("last_event".into(), json!(name));

    let position = f(&player, "currentTime");
    let duration = f(&player, "duration");
    let percent = match (position, duration) {
        (Some(pos), Some(d)) if d > 0.0 => Some((100.0 * pos / d).min(100.0)),
        _ => None,
    };
    p.insert(
        "media".into(),
        json!({
            "title": s(&player, "label"),
            "type": s(&player, "mediaType"),
            "player_type": s(&player, "playerType"),
            "duration": duration,
            "position": position,
            "percent": percent.map(|x| (x * 10.0).round() / 10.0),
            "rate": f(&player, "playbackRate"),
            "volume": f(&player, "volume"),
            "muted": b(&player, "muted"),
            "fullscreen": b(&player, "fullscreen"),
            "quality": s(&player, "quality"),
        }),
    );
    p.insert(
        "ad".into(),
        if in_ad && ad.is_some() {
            json!({
                "id": s(&ad, "adId"),
                "name": s(&ad, "name"),
                "creative_id": s(&ad, "creativeId"),
                "duration": f(&ad, "duration"),
                "skippable": b(&ad, "skippable"),
                "pod_position": f(&ad, "podPosition"),
            })
        } else {
            Value::Null
        },
    );
    p.insert(
        "ad_break".into(),
        if in_ad && ad_break.is_some() {
            json!({
                "id": s(&ad_break, "breakId"),
                "name": s(&ad_break, "name"),
                "type": s(&ad_break, "breakType"),
                "pod_size": f(&ad_break, "podSize"),
            })
        } else {
            Value::Null
        },
    );
    if session.is_some() {
        p.insert(
            "session".into(),
            json!({
                "id": s(&session, "mediaSessionId"),
                "started_at": s(&session, "startedAt"),
                "time_played": f(&session, "timePlayed"),
                "time_played_muted": f(&session, "timePlayedMuted"),
                "time_paused": f(&session, "timePaused"),
                "content_watched": f(&session, "contentWatched"),
                "time_buffering": f(&session, "timeBuffering"),
                "time_in_ads": f(&session, "timeSpentAds"),
                "ads": f(&session, "ads"),
                "ads_clicked": f(&session, "adsClicked"),
                "ads_skipped": f(&session, "adsSkipped"),
                "ad_breaks": f(&session, "adBreaks"),
                "avg_playback_rate": f(&session, "avgPlaybackRate"),
            }),
        );
    }
    p.insert(
        "page".into(),
        json!({
            "url": event.field_str(fields::PAGE_URL),
            "title": event.field_str(fields::PAGE_TITLE),
        }),
    );
    p.insert("app_id".into(), json!(event.field_str(fields::APP_ID)));
}

/// `2024-11-16 13:33:22.625` → milliseconds since the epoch (UTC).
fn parse_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = match s.get(19..) {
        Some(frac) if frac.starts_with('.') => {
            let digits: String = frac[1..].chars().take(3).collect();
            format!("{digits:0<3}").parse::<i64>().ok()?
        }
        _ => 0,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

/// `2024-11-16 13:33:22.625` → `2024-11-16T13:33:22.625Z`.
fn iso(s: &str) -> String {
    format!("{}Z", s.replacen(' ', "T", 1))
}

#[cfg(test)]
mod tests;
