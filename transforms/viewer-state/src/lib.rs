//! `viewer-state`: turns Snowplow media events into one live profile per viewer.
//!
//! A viewer is the event's `user_id`, else its `domain_userid` (web), else the user id of its
//! `client_session` entity (Snowplow's mobile trackers: an id per app install), else its
//! `network_userid`. The profile records the viewer's platform (`web`, `mob`, …), device (the
//! mobile trackers' `mobile_context`: manufacturer, model, OS and its version) and app (the
//! `application` entity's version and build). For
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
//! * **Idempotent**: the profile remembers a 64-bit fingerprint of each of the viewer's last
//!   `dedup_events` event ids (default 64); a redelivered event among them changes nothing and
//!   emits nothing. A replay after a crash re-sends what followed the last checkpoint, so this
//!   covers any replay of up to `dedup_events` events per viewer, in 8 bytes per event and no
//!   state entry of its own.
//! * **Expiry**: a viewer silent for longer than `ttl` is removed: each event stores the profile
//!   with a TTL of `ttl`, weir's state expires it (its time index, no index of viewers here) and
//!   calls `expired`, which emits `{"viewer_id": …, "removed": true}`.
//! * **Cheap per event**: the state is a compact binary encoding ([postcard], ~300 bytes for a
//!   viewer in an ad break), the entities are read in one pass without building a JSON tree, and
//!   the JSON profile is written only when it changed.
//!
//! Settings: `ttl` (default `30m`), `dedup_events` (default 64, at most 1024),
//! `max_viewer_id_bytes` (default 256: a longer identifier is a bad row).
//!
//! [postcard]: https://docs.rs/postcard

#![deny(unsafe_op_in_unsafe_fn)]

mod borrowed;
mod json_out;

use borrowed::{Seen, Str};

use serde::{Deserialize, Serialize};
use weir_transform_sdk::{
    fields, mem, parse_duration_ms, Config, Context, Emit, Emitted, Error, Json, Record, State,
    Stateful,
};

const MEDIA_VENDOR: &[u8] = b"com.snowplowanalytics.snowplow.media";
const CLIENT_SESSION: &str = "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/";
/// The first byte of a stored profile in this format. Profiles stored by earlier versions are
/// read once, then rewritten in this format: JSON (`{`), [`FORMAT_1`] (format 2 without
/// `client`) and [`FORMAT_2`] (`seen` as a sequence of varints: ~9.5 bytes per fingerprint,
/// each decoded and encoded again on every event, where format 3 copies 8 bytes).
const FORMAT: u8 = 3;
const FORMAT_2: u8 = 2;
const FORMAT_1: u8 = 1;
const READS: [usize; 14] = [
    fields::APP_ID,
    fields::PLATFORM,
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
    dedup_events: usize,
    max_id: usize,
    fields: Vec<usize>,
    /// Reused buffers: the encoded state, the JSON profile and the collector time (ISO 8601) of
    /// the record being processed.
    state_buf: Vec<u8>,
    json_buf: Vec<u8>,
    /// The fingerprints after the record being processed.
    seen_buf: Vec<u8>,
    collector: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    #[default]
    Watching,
    Paused,
    Buffering,
    InAd,
    Ended,
}

// Field order is the JSON key order (alphabetical, as the profiles have always been written)
// and the binary layout: append new fields at the end of the binary structs only with a new
// FORMAT.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct Media<'a> {
    duration: Option<f64>,
    fullscreen: Option<bool>,
    muted: Option<bool>,
    percent: Option<f64>,
    player_type: Option<Str<'a>>,
    position: Option<f64>,
    quality: Option<Str<'a>>,
    rate: Option<f64>,
    title: Option<Str<'a>>,
    #[serde(rename = "type")]
    kind: Option<Str<'a>>,
    volume: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct Ad<'a> {
    creative_id: Option<Str<'a>>,
    duration: Option<f64>,
    id: Option<Str<'a>>,
    name: Option<Str<'a>>,
    pod_position: Option<f64>,
    skippable: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct AdBreak<'a> {
    id: Option<Str<'a>>,
    name: Option<Str<'a>>,
    pod_size: Option<f64>,
    #[serde(rename = "type")]
    kind: Option<Str<'a>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct Session<'a> {
    ad_breaks: Option<f64>,
    ads: Option<f64>,
    ads_clicked: Option<f64>,
    ads_skipped: Option<f64>,
    avg_playback_rate: Option<f64>,
    content_watched: Option<f64>,
    id: Option<Str<'a>>,
    started_at: Option<Str<'a>>,
    time_buffering: Option<f64>,
    time_in_ads: Option<f64>,
    time_paused: Option<f64>,
    time_played: Option<f64>,
    time_played_muted: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct Page<'a> {
    title: Option<Str<'a>>,
    url: Option<Str<'a>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct Device<'a> {
    manufacturer: Option<Str<'a>>,
    model: Option<Str<'a>>,
    os: Option<Str<'a>>,
    os_version: Option<Str<'a>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct App<'a> {
    build: Option<Str<'a>>,
    version: Option<Str<'a>>,
}

/// Where the viewer watches: from the newest event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct Client<'a> {
    app: Option<App<'a>>,
    device: Option<Device<'a>>,
    platform: Option<Str<'a>>,
}

/// The fields that follow the newest event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct Current<'a> {
    ad: Option<Ad<'a>>,
    ad_break: Option<AdBreak<'a>>,
    app_id: Option<Str<'a>>,
    last_event: Str<'a>,
    media: Media<'a>,
    page: Page<'a>,
    status: Status,
}

/// What the state holds per viewer (binary, after the [`FORMAT`] byte).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct Stored<'a> {
    events: u64,
    first_seen: Str<'a>,
    last_seen: Str<'a>,
    /// Device timestamp (ms) of the newest event applied to the current fields.
    newest_ms: i64,
    current: Current<'a>,
    /// Kept from the last event that had a media session entity.
    session: Option<Session<'a>>,
    /// Fingerprints of the last `dedup_events` event ids, oldest first (one byte string of
    /// 8-byte little-endian words).
    seen: Seen<'a>,
    /// Platform, device and app, from the newest event (new in format 2: last, so that a
    /// [`FORMAT_1`] profile reads as format 2 with a default `client` appended).
    client: Client<'a>,
}

/// [`Stored`] as format 1 laid it out: `seen` as a sequence of varints, no `client`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
#[serde(bound(deserialize = "'de: 'a"))]
struct Stored1<'a> {
    events: u64,
    first_seen: Str<'a>,
    last_seen: Str<'a>,
    newest_ms: i64,
    current: Current<'a>,
    session: Option<Session<'a>>,
    seen: Vec<u64>,
}

/// Format 2: format 1 and `client` (postcard lays a nested struct out as its fields, so this is
/// format 1's bytes followed by the client's).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
#[serde(bound(deserialize = "'de: 'a"))]
struct Stored2<'a> {
    v1: Stored1<'a>,
    client: Client<'a>,
}

impl<'a> Stored1<'a> {
    fn with_client(self, client: Client<'a>) -> Stored<'a> {
        Stored {
            events: self.events,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            newest_ms: self.newest_ms,
            current: self.current,
            session: self.session,
            seen: Seen::from_words(&self.seen),
            client,
        }
    }
}

/// A profile as earlier versions stored it: `{"profile": {…}, "newest_ms": …}`.
#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct JsonStored<'a> {
    profile: JsonProfile<'a>,
    newest_ms: i64,
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct JsonProfile<'a> {
    #[serde(default)]
    events: u64,
    #[serde(default)]
    first_seen: Str<'a>,
    #[serde(default)]
    last_seen: Str<'a>,
    #[serde(default)]
    ad: Option<Ad<'a>>,
    #[serde(default)]
    ad_break: Option<AdBreak<'a>>,
    #[serde(default)]
    app_id: Option<Str<'a>>,
    #[serde(default)]
    last_event: Str<'a>,
    #[serde(default)]
    media: Option<Media<'a>>,
    #[serde(default)]
    page: Option<Page<'a>>,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    session: Option<Session<'a>>,
}

impl<'a> Stored<'a> {
    fn decode(bytes: &'a [u8]) -> Result<Stored<'a>, String> {
        match bytes.first() {
            Some(&FORMAT) => postcard::from_bytes(&bytes[1..]).map_err(|e| e.to_string()),
            Some(&FORMAT_2) => postcard::from_bytes::<Stored2>(&bytes[1..])
                .map(|s| s.v1.with_client(s.client))
                .map_err(|e| e.to_string()),
            Some(&FORMAT_1) => postcard::from_bytes::<Stored1>(&bytes[1..])
                .map(|s| s.with_client(Client::default()))
                .map_err(|e| e.to_string()),
            Some(b'{') => {
                let old: JsonStored = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                let p = old.profile;
                Ok(Stored {
                    events: p.events,
                    first_seen: p.first_seen,
                    last_seen: p.last_seen,
                    newest_ms: old.newest_ms,
                    current: Current {
                        ad: p.ad,
                        ad_break: p.ad_break,
                        app_id: p.app_id,
                        last_event: p.last_event,
                        media: p.media.unwrap_or_default(),
                        page: p.page.unwrap_or_default(),
                        status: p.status.unwrap_or_default(),
                    },
                    session: p.session,
                    seen: Seen::default(),
                    client: Client::default(),
                })
            }
            _ => Err("an unknown encoding".into()),
        }
    }

    fn encode_into(&self, buf: &mut Vec<u8>) -> Result<(), Error> {
        buf.clear();
        buf.push(FORMAT);
        postcard::serialize_with_flavor(self, Append(buf))
            .map_err(|e| Error::msg(format!("encoding the profile: {e}")))
    }

    fn write_json(&self, viewer: &str, out: &mut Vec<u8>) {
        json_out::profile(self, viewer, out);
    }
}

/// postcard's output appended to a reused buffer, short strings copied without a call
/// ([`mem::extend`]); postcard's own `to_extend` goes byte iterator to `memcpy`, a host call
/// per string in a guest.
struct Append<'b>(&'b mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        mem::extend(self.0, bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// FNV-1a: a fingerprint that stays the same across builds and Rust versions (it is stored).
fn fingerprint(id: &[u8]) -> u64 {
    id.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Stateful for ViewerState {
    fn new(config: &Config) -> Result<Self, Error> {
        if config.get("dedup_window").is_some() {
            return Err(Error::msg(
                "setting `dedup_window` was replaced by `dedup_events`: each profile remembers \
                 its viewer's last N event ids (default 64), so a replay of up to N events per \
                 viewer is recognised without a state entry per event",
            ));
        }
        config.check_keys(&["ttl", "dedup_events", "max_viewer_id_bytes"])?;
        let ttl_ms =
            parse_duration_ms(config.get("ttl").unwrap_or("30m")).context("setting `ttl`")?;
        let dedup_events = config.parse::<usize>("dedup_events")?.unwrap_or(64);
        if dedup_events > 1024 {
            return Err(Error::msg(format!(
                "setting `dedup_events`: at most 1024 (8 bytes each in every profile), found {dedup_events}"
            )));
        }
        let max_id = config.parse::<usize>("max_viewer_id_bytes")?.unwrap_or(256);
        Ok(ViewerState {
            ttl_ms,
            dedup_events,
            max_id,
            fields: READS.to_vec(),
            state_buf: Vec::with_capacity(512),
            json_buf: Vec::with_capacity(1024),
            seen_buf: Vec::with_capacity(8 * dedup_events),
            collector: String::with_capacity(32),
        })
    }

    fn fields(&self) -> &[usize] {
        &self.fields
    }

    fn state_key<'r>(&self, event: &Record<'r>) -> Option<&'r [u8]> {
        if event.field(fields::EVENT_VENDOR) != Some(MEDIA_VENDOR) {
            return None;
        }
        viewer_id(event).filter(|v| v.len() <= self.max_id)
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
        let viewer = viewer_id(event).ok_or(
            "no user_id, domain_userid, client_session user id or network_userid to identify \
                 the viewer",
        )?;
        if viewer.len() > self.max_id {
            return Err(Error::msg(format!(
                "viewer id of {} bytes, over max_viewer_id_bytes ({})",
                viewer.len(),
                self.max_id
            )));
        }
        let viewer_str = std::str::from_utf8(viewer).context("viewer id is not UTF-8")?;
        let event_id = event.field(fields::EVENT_ID).ok_or("no event_id")?;
        let name = event.field_str(fields::EVENT_NAME).ok_or("no event_name")?;
        let ts = event
            .field_str(fields::DVCE_CREATED_TSTAMP)
            .or_else(|| event.field_str(fields::COLLECTOR_TSTAMP))
            .and_then(parse_ms)
            .ok_or("no parsable dvce_created_tstamp or collector_tstamp")?;
        iso_into(
            event.field_str(fields::COLLECTOR_TSTAMP).unwrap_or(""),
            &mut self.collector,
        );
        let collector = self.collector.as_str();

        // The stored profile borrows its strings from the state's bytes, the event's fields from
        // the event: nothing is copied until the profile is encoded again.
        let (mut stored, new) = match state.get(viewer) {
            Some(bytes) => (
                Stored::decode(bytes)
                    .map_err(|e| Error::msg(format!("corrupt state for {viewer_str}: {e}")))?,
                false,
            ),
            None => (
                Stored {
                    newest_ms: i64::MIN,
                    ..Stored::default()
                },
                true,
            ),
        };
        let fp = fingerprint(event_id);
        if stored.seen.contains(fp) {
            return Ok(()); // redelivered: already applied
        }
        stored.seen = stored
            .seen
            .pushed(fp, self.dedup_events, &mut self.seen_buf);

        // Always: count the event, widen first/last seen.
        stored.events += 1;
        let mut changed = new;
        if stored.first_seen.is_empty() || collector < stored.first_seen.as_str() {
            changed |= stored.first_seen.as_str() != collector;
            stored.first_seen = Str::from(collector);
        }
        if stored.last_seen.is_empty() || collector > stored.last_seen.as_str() {
            stored.last_seen = Str::from(collector);
        }
        // Only the newest event sets the current fields.
        if ts >= stored.newest_ms {
            stored.newest_ms = ts;
            let (current, session, client) = read_current(event, name);
            changed |= current != stored.current || client != stored.client;
            stored.current = current;
            stored.client = client;
            if session.is_some() && session != stored.session {
                changed = true;
                stored.session = session;
            }
        }

        stored.encode_into(&mut self.state_buf)?;
        if changed {
            stored.write_json(viewer_str, &mut self.json_buf);
        }
        drop(stored); // its borrow of the state ends here
                      // Silent for `ttl`: weir expires the profile and calls `expired`.
        state.put_with_ttl(viewer, &self.state_buf, self.ttl_ms);
        if changed {
            out.emit_with_key(&self.json_buf, viewer);
        }
        Ok(())
    }

    /// A viewer silent for longer than `ttl`: its removal record.
    fn expired(&mut self, key: &[u8], _value: &[u8], _: &mut State<'_>, out: &mut Emitted) {
        if key.first() == Some(&0) {
            return; // an event id's dedup entry, written by versions before 0.2
        }
        #[derive(Serialize)]
        struct Removed<'a> {
            viewer_id: &'a str,
            removed: bool,
        }
        let id = String::from_utf8_lossy(key);
        let doc = serde_json::to_vec(&Removed {
            viewer_id: &id,
            removed: true,
        })
        .unwrap_or_default();
        out.emit_with_key(&doc, key);
    }
}

weir_transform_sdk::export_stateful!(ViewerState);

fn viewer_id<'r>(event: &Record<'r>) -> Option<&'r [u8]> {
    event
        .field(fields::USER_ID)
        .or_else(|| event.field(fields::DOMAIN_USERID))
        .or_else(|| install_id(event))
        .or_else(|| event.field(fields::NETWORK_USERID))
}

/// The `userId` of the event's `client_session` entity (the mobile trackers' id of an app
/// install), as it is in the event (an id with JSON escapes, which the trackers never write, is
/// not used).
fn install_id<'r>(event: &Record<'r>) -> Option<&'r [u8]> {
    let session = event.entities().find(|e| e.is(CLIENT_SESSION))?;
    let raw = session.data.get("userId")?.raw();
    let id = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    (!id.is_empty() && !id.contains(&b'\\')).then_some(id)
}

fn num(v: Json<'_>) -> Option<f64> {
    v.as_f64()
}
fn boolean(v: Json<'_>) -> Option<bool> {
    v.as_bool()
}
fn text(v: Json<'_>) -> Option<Str<'_>> {
    v.as_str().map(Str)
}

/// The current fields from the newest event, reading each entity's members in one pass.
/// The entities a profile is read from, in the order of [`Entity::NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entity {
    Player,
    Session,
    Ad,
    AdBreak,
    Mobile,
    Application,
}

impl Entity {
    /// What each one's schema URI says after `iglu:com.snowplowanalytics.` (then
    /// `jsonschema/` and any version).
    const NAMES: [(&'static str, Entity); 6] = [
        ("snowplow/media_player/", Entity::Player),
        ("snowplow.media/session/", Entity::Session),
        ("snowplow.media/ad/", Entity::Ad),
        ("snowplow.media/ad_break/", Entity::AdBreak),
        ("snowplow/mobile_context/", Entity::Mobile),
        ("mobile/application/", Entity::Application),
    ];

    /// Which one `schema` is: the vendor prefix the six share is compared once, then the short
    /// rest (not six whole prefixes in turn, most of them failing only past the shared part).
    fn of(schema: &str) -> Option<Entity> {
        let rest = schema.strip_prefix("iglu:com.snowplowanalytics.")?;
        Entity::NAMES.iter().find_map(|&(name, kind)| {
            rest.strip_prefix(name)?
                .starts_with("jsonschema/")
                .then_some(kind)
        })
    }
}

fn read_current<'e>(
    event: &Record<'e>,
    name: &'e str,
) -> (Current<'e>, Option<Session<'e>>, Client<'e>) {
    // The first entity of each kind, by `Entity as usize`.
    let mut found: [Option<Json<'e>>; Entity::NAMES.len()] = [None; Entity::NAMES.len()];
    for e in event.entities() {
        if let Some(kind) = Entity::of(e.schema) {
            found[kind as usize].get_or_insert(e.data);
        }
    }
    let [player, session, ad, ad_break, mobile, application] = found;

    let (mut media, paused, ended) = player.map(read_player).unwrap_or_default();
    media.percent = match (media.position, media.duration) {
        (Some(pos), Some(d)) if d > 0.0 => {
            Some(((100.0 * pos / d).min(100.0) * 10.0).round() / 10.0)
        }
        _ => None,
    };

    let ended = name == "end_event" || ended == Some(true);
    let in_ad =
        !ended && name != "ad_break_end_event" && (ad_break.is_some() || name.starts_with("ad_"));
    let status = if ended {
        Status::Ended
    } else if in_ad {
        Status::InAd
    } else if name == "buffer_start_event" {
        Status::Buffering
    } else if paused == Some(true) {
        Status::Paused
    } else {
        Status::Watching
    };

    let ad = ad.filter(|_| in_ad).map(read_ad);
    let ad_break = ad_break.filter(|_| in_ad).map(read_ad_break);
    let session = session.map(read_session);
    let current = Current {
        ad,
        ad_break,
        app_id: event.field_str(fields::APP_ID).map(Str::from),
        last_event: Str::from(name),
        media,
        page: Page {
            title: event.field_str(fields::PAGE_TITLE).map(Str::from),
            url: event.field_str(fields::PAGE_URL).map(Str::from),
        },
        status,
    };
    let client = Client {
        platform: event.field_str(fields::PLATFORM).map(Str::from),
        device: mobile.map(read_device),
        app: application.map(read_app),
    };
    (current, session, client)
}

// One function per entity, not inlined: each holds its own member loop, and Cranelift allocates
// registers far better over small functions than over one large one (measured: read_current
// with every loop inlined spilled to a 1.7 KB stack frame).

#[inline(never)]
fn read_player(p: Json<'_>) -> (Media<'_>, Option<bool>, Option<bool>) {
    let mut media = Media::default();
    let (mut paused, mut ended) = (None, None);
    p.for_each_member(|k, v| match k {
        b"currentTime" => media.position = num(v),
        b"duration" => media.duration = num(v),
        b"label" => media.title = text(v),
        b"mediaType" => media.kind = text(v),
        b"playerType" => media.player_type = text(v),
        b"playbackRate" => media.rate = num(v),
        b"volume" => media.volume = num(v),
        b"muted" => media.muted = boolean(v),
        b"fullscreen" => media.fullscreen = boolean(v),
        b"quality" => media.quality = text(v),
        b"paused" => paused = boolean(v),
        b"ended" => ended = boolean(v),
        _ => {}
    });
    (media, paused, ended)
}

#[inline(never)]
fn read_ad(a: Json<'_>) -> Ad<'_> {
    let mut r = Ad::default();
    a.for_each_member(|k, v| match k {
        b"adId" => r.id = text(v),
        b"name" => r.name = text(v),
        b"creativeId" => r.creative_id = text(v),
        b"duration" => r.duration = num(v),
        b"skippable" => r.skippable = boolean(v),
        b"podPosition" => r.pod_position = num(v),
        _ => {}
    });
    r
}

#[inline(never)]
fn read_ad_break(a: Json<'_>) -> AdBreak<'_> {
    let mut r = AdBreak::default();
    a.for_each_member(|k, v| match k {
        b"breakId" => r.id = text(v),
        b"name" => r.name = text(v),
        b"breakType" => r.kind = text(v),
        b"podSize" => r.pod_size = num(v),
        _ => {}
    });
    r
}

#[inline(never)]
fn read_session(s: Json<'_>) -> Session<'_> {
    let mut r = Session::default();
    s.for_each_member(|k, v| match k {
        b"mediaSessionId" => r.id = text(v),
        b"startedAt" => r.started_at = text(v),
        b"timePlayed" => r.time_played = num(v),
        b"timePlayedMuted" => r.time_played_muted = num(v),
        b"timePaused" => r.time_paused = num(v),
        b"contentWatched" => r.content_watched = num(v),
        b"timeBuffering" => r.time_buffering = num(v),
        b"timeSpentAds" => r.time_in_ads = num(v),
        b"ads" => r.ads = num(v),
        b"adsClicked" => r.ads_clicked = num(v),
        b"adsSkipped" => r.ads_skipped = num(v),
        b"adBreaks" => r.ad_breaks = num(v),
        b"avgPlaybackRate" => r.avg_playback_rate = num(v),
        _ => {}
    });
    r
}

#[inline(never)]
fn read_device(m: Json<'_>) -> Device<'_> {
    let mut r = Device::default();
    m.for_each_member(|k, v| match k {
        b"deviceManufacturer" => r.manufacturer = text(v),
        b"deviceModel" => r.model = text(v),
        b"osType" => r.os = text(v),
        b"osVersion" => r.os_version = text(v),
        _ => {}
    });
    r
}

#[inline(never)]
fn read_app(a: Json<'_>) -> App<'_> {
    let mut r = App::default();
    a.for_each_member(|k, v| match k {
        b"version" => r.version = text(v),
        b"build" => r.build = text(v),
        _ => {}
    });
    r
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
    // Milliseconds: the first three digits of the fraction, right-padded with zeros.
    let ms = match b.get(19) {
        Some(b'.') => {
            let mut ms = 0;
            for i in 20..23 {
                let d = match b.get(i) {
                    Some(d) if d.is_ascii_digit() => i64::from(d - b'0'),
                    Some(_) => return None,
                    None => 0,
                };
                ms = ms * 10 + d;
            }
            ms
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

/// `2024-11-16 13:33:22.625` → `2024-11-16T13:33:22.625Z`, into `out` (empty for empty).
fn iso_into(s: &str, out: &mut String) {
    out.clear();
    if s.is_empty() {
        return;
    }
    match s.split_once(' ') {
        Some((date, time)) => {
            out.push_str(date);
            out.push('T');
            out.push_str(time);
        }
        None => out.push_str(s),
    }
    out.push('Z');
}

#[cfg(test)]
mod tests;
