//! The Snowplow tracker protocol → enriched events: what Snowplow Enrich does to a collector
//! payload before any configurable enrichment runs.
//!
//! [`convert`] takes one request as the collector recorded it (a [`CollectorPayload`], built from
//! a live HTTP request by the `collector` source or decoded from a raw stream by the
//! `spCollectorPayloadToEnriched` transform) and writes one 131-field enriched TSV line per event.
//!
//! Reference: snowplow/enrich `adapters/registry/snowplow/Tp1Adapter.scala` and `Tp2Adapter.scala`
//! (GET query string / POST `payload_data`, query-string parameters merged into every POSTed event
//! and taking precedence), `enrichments/Transform.scala` (parameter → field map),
//! `EnrichmentManager.scala` (collector fields, page and referrer URL parts, derived timestamp,
//! cross-domain `_sp`), `EventEnrichments.scala` (timestamps, event types), `SchemaEnrichment.scala`
//! (event_vendor/name/format/version), `ConversionUtils.scala` (URL parts, TSV-safe strings).
//!
//! Where Enrich would emit a failed event (unknown `e`, malformed JSON or base64, a value of the
//! wrong type), [`convert`] refuses the whole payload with a [`ConvertError`] naming the
//! parameter: the `collector` source answers 4xx and writes a collector-payload-format-violation
//! bad row instead. Enrichments that need data or configuration (IP lookups, user-agent parsing,
//! referer parsing, campaign attribution, currency conversion, event fingerprint, schema
//! validation against Iglu, …) are not done; see the README.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use base64::Engine as _;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::collector_payload::CollectorPayload;
use super::sdj::iglu_parts;
use super::{Excerpt, FIELD_COUNT};

/// Path of tracker protocol v2 (GET or POST).
pub const TP2_PATH: &str = "/com.snowplowanalytics.snowplow/tp2";
/// Paths of tracker protocol v1 (GET, one event in the query string).
pub const TP1_PATHS: [&str; 2] = ["/i", "/ice.png"];

const PAYLOAD_DATA: &str = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-";
const CONTEXTS_SCHEMA: &str = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-";
const UNSTRUCT_SCHEMA: &str = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-";

/// Settings of the conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Replace this many trailing octets of an IPv4 `user_ipaddress` with `x` (0–4), like
    /// Enrich's IP anonymization enrichment.
    pub anon_ipv4_octets: u8,
    /// Replace this many trailing segments of an IPv6 `user_ipaddress` with `x` (0–8).
    pub anon_ipv6_segments: u8,
    /// Most events one payload may hold.
    pub max_events: usize,
    /// Longest query string that may be merged into the events of a POSTed body. Every
    /// parameter of the query string is copied into every event of the body (as Enrich does),
    /// so a long one multiplies the output: a payload whose query string is longer is refused
    /// ([`Limit::Query`]). A GET's query string is one event and is not limited here.
    pub max_query_bytes: usize,
}

/// The default of [`Options::max_query_bytes`]: 8 KiB, more than any tracker sends.
pub const DEFAULT_MAX_QUERY_BYTES: usize = 8 << 10;

impl Default for Options {
    fn default() -> Self {
        Options {
            anon_ipv4_octets: 0,
            anon_ipv6_segments: 0,
            max_events: 1000,
            max_query_bytes: DEFAULT_MAX_QUERY_BYTES,
        }
    }
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConvertError {
    /// The payload field or tracker parameter at fault (`path`, `body`, `e`, `ue_px`, …).
    pub field: &'static str,
    /// What was expected (and where: "event 2 of 3: …").
    pub message: String,
    /// The limit the payload went over, if that is why it was refused.
    pub limit: Option<Limit>,
}

/// A limit on what one payload may hold or expand to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// More events than [`Options::max_events`].
    Events,
    /// A query string longer than [`Options::max_query_bytes`] merged into POSTed events.
    Query,
    /// The output budget given to [`convert_within`] refused to grow.
    Output,
}

fn fail(field: &'static str, message: impl Into<String>) -> ConvertError {
    ConvertError {
        field,
        message: message.into(),
        limit: None,
    }
}

/// Which adapter a collector path selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `GET /i`: one event in the query string.
    Tp1,
    /// `/com.snowplowanalytics.snowplow/tp2`: POSTed `payload_data`, or a GET query string.
    Tp2,
}

/// The adapter for a request path, if weir speaks it.
pub fn api_for_path(path: &str) -> Option<Api> {
    if TP1_PATHS.contains(&path) {
        Some(Api::Tp1)
    } else if path == TP2_PATH {
        Some(Api::Tp2)
    } else {
        None
    }
}

type Param<'a> = (Cow<'a, str>, Cow<'a, str>);

/// Converts one collector payload into enriched TSV lines, appended to `out`; the end offset of
/// each line is pushed to `ends`. `etl_ms` becomes `etl_tstamp`. On error, `out` and `ends` are
/// left as they were: a payload is converted whole or not at all.
pub fn convert(
    payload: &CollectorPayload<'_>,
    options: &Options,
    etl_ms: i64,
    out: &mut Vec<u8>,
    ends: &mut Vec<usize>,
) -> Result<(), ConvertError> {
    convert_within(payload, options, etl_ms, out, ends, &mut |_| Ok(()))
}

/// [`convert`] within an output budget: before each line is written, `budget` is told how many
/// bytes this payload's lines will then take in `out` (the line included); if it answers
/// `Err(reason)`, the payload is refused with [`Limit::Output`] and that reason, and nothing of
/// it is left in `out`. This bounds what a payload expands to (a small body of many events
/// with a long query string merged into each, say) while it is being converted, not after.
pub fn convert_within(
    payload: &CollectorPayload<'_>,
    options: &Options,
    etl_ms: i64,
    out: &mut Vec<u8>,
    ends: &mut Vec<usize>,
    budget: &mut dyn FnMut(usize) -> Result<(), String>,
) -> Result<(), ConvertError> {
    let (len, n_ends) = (out.len(), ends.len());
    let result = convert_inner(payload, options, etl_ms, out, ends, budget);
    if result.is_err() {
        out.truncate(len);
        ends.truncate(n_ends);
    }
    result
}

fn convert_inner(
    payload: &CollectorPayload<'_>,
    options: &Options,
    etl_ms: i64,
    out: &mut Vec<u8>,
    ends: &mut Vec<usize>,
    budget: &mut dyn FnMut(usize) -> Result<(), String>,
) -> Result<(), ConvertError> {
    let start = out.len();
    let path = payload.path.as_deref().unwrap_or("");
    let api = api_for_path(path).ok_or_else(|| {
        fail(
            "path",
            format!(
                "expected {TP2_PATH} or /i (tracker protocol), found {}",
                Excerpt::new(path)
            ),
        )
    })?;
    if !payload.encoding.is_empty() && !payload.encoding.eq_ignore_ascii_case("UTF-8") {
        return Err(fail(
            "encoding",
            format!("expected UTF-8, found {}", Excerpt::new(&payload.encoding)),
        ));
    }
    let qs: Vec<Param<'_>> = match payload.querystring.as_deref() {
        Some(q) if !q.is_empty() => form_urlencoded::parse(q.as_bytes()).collect(),
        _ => Vec::new(),
    };
    let body = payload.body.as_deref().filter(|b| !b.trim().is_empty());
    let events: Vec<Vec<Param<'_>>> = match (api, body) {
        (Api::Tp1, _) | (Api::Tp2, None) => {
            if qs.is_empty() {
                return Err(fail(
                    "querystring",
                    "empty query string and no body: not a tracker protocol event",
                ));
            }
            vec![Vec::new()]
        }
        (Api::Tp2, Some(body)) => {
            let q = payload.querystring.as_deref().map_or(0, str::len);
            if q > options.max_query_bytes {
                return Err(ConvertError {
                    field: "querystring",
                    message: format!(
                        "a query string of {q} bytes would be merged into every event of the \
                         body; at most {} bytes are accepted (max_query_bytes)",
                        options.max_query_bytes
                    ),
                    limit: Some(Limit::Query),
                });
            }
            parse_payload_data(body, options.max_events)?
        }
    };
    let ctx = Context::new(payload, options, etl_ms)?;
    let n = events.len();
    let source = if n > 1 || body.is_some() && api == Api::Tp2 {
        "body"
    } else {
        "querystring"
    };
    let mut fields: Vec<Cow<'_, str>> = vec![Cow::Borrowed(""); FIELD_COUNT];
    for (i, body_params) in events.iter().enumerate() {
        for f in fields.iter_mut() {
            *f = Cow::Borrowed("");
        }
        let mut slots: [Option<&str>; PARAMS.len()] = [None; PARAMS.len()];
        // Body first, then the query string, so that query-string values win (as in Enrich).
        for (k, v) in body_params.iter().chain(qs.iter()) {
            if let Some(slot) = param_slot(k) {
                slots[slot] = Some(v).filter(|v| !v.is_empty()).map(|v| v.as_ref());
            }
        }
        event_fields(&slots, &ctx, &mut fields).map_err(|mut e| {
            if n > 1 {
                e.message = format!("event {} of {n}: {}", i + 1, e.message);
            }
            e
        })?;
        let line = fields.iter().map(|f| f.len() + 1).sum::<usize>();
        budget(out.len() - start + line).map_err(|reason| ConvertError {
            field: source,
            message: if n > 1 {
                format!("event {} of {n}: {reason}", i + 1)
            } else {
                reason
            },
            limit: Some(Limit::Output),
        })?;
        write_line(&fields, out);
        ends.push(out.len());
    }
    Ok(())
}

/// What every event of a payload shares.
struct Context<'a> {
    etl_tstamp: String,
    collector_ms: i64,
    collector_tstamp: String,
    v_collector: &'a str,
    ip: Option<&'a str>,
    useragent: Option<&'a str>,
    referer: Option<&'a str>,
    network_userid: Option<&'a str>,
    options: &'a Options,
}

impl<'a> Context<'a> {
    fn new(
        p: &'a CollectorPayload<'a>,
        options: &'a Options,
        etl_ms: i64,
    ) -> Result<Self, ConvertError> {
        let mut etl_tstamp = String::with_capacity(23);
        format_tstamp(etl_ms, &mut etl_tstamp);
        let mut collector_tstamp = String::with_capacity(23);
        if !format_tstamp(p.timestamp, &mut collector_tstamp) {
            return Err(fail(
                "timestamp",
                format!("{} ms is not a date between years 0 and 9999", p.timestamp),
            ));
        }
        Ok(Context {
            etl_tstamp,
            collector_ms: p.timestamp,
            collector_tstamp,
            v_collector: &p.collector,
            ip: Some(p.ip_address.as_ref()).filter(|s| !s.is_empty()),
            useragent: p.user_agent.as_deref().filter(|s| !s.is_empty()),
            referer: p.referer_uri.as_deref().filter(|s| !s.is_empty()),
            network_userid: p.network_user_id.as_deref().filter(|s| !s.is_empty()),
            options,
        })
    }
}

/// How a tracker parameter becomes a field.
#[derive(Clone, Copy)]
enum Kind {
    /// Copied (made TSV-safe).
    Str,
    /// A 32-bit integer (Enrich's `stringToJInteger2`; `1.0` is accepted as 1).
    Int,
    /// A number, written without an exponent.
    Double,
    /// `1` or `0`.
    Bool,
    /// `WIDTHxHEIGHT` into this field and the next.
    Dims,
    /// A UUID, lower-cased.
    Uuid,
    /// Handled by [`event_fields`] itself.
    Special,
}

/// Tracker parameters (Enrich's `Transform.scala`): name, kind, target field index.
/// Field indexes are checked against [`super::field_index`] by a test.
const PARAMS: [(&str, Kind, usize); 75] = [
    ("e", Kind::Special, 5),
    ("ip", Kind::Special, 13),
    ("aid", Kind::Str, 0),
    ("p", Kind::Special, 1),
    ("tid", Kind::Int, 7),
    ("uid", Kind::Str, 12),
    ("duid", Kind::Str, 15),
    ("nuid", Kind::Special, 17),
    ("tnuid", Kind::Special, 17),
    ("ua", Kind::Special, 77),
    ("fp", Kind::Str, 14),
    ("vid", Kind::Int, 16),
    ("sid", Kind::Uuid, 123),
    ("dtm", Kind::Special, 4),
    ("ttm", Kind::Special, 130),
    ("stm", Kind::Special, 119),
    ("tna", Kind::Str, 8),
    ("tv", Kind::Str, 9),
    ("cv", Kind::Special, 10),
    ("lang", Kind::Str, 83),
    ("f_pdf", Kind::Bool, 84),
    ("f_fla", Kind::Bool, 85),
    ("f_java", Kind::Bool, 86),
    ("f_dir", Kind::Bool, 87),
    ("f_qt", Kind::Bool, 88),
    ("f_realp", Kind::Bool, 89),
    ("f_wma", Kind::Bool, 90),
    ("f_gears", Kind::Bool, 91),
    ("f_ag", Kind::Bool, 92),
    ("cookie", Kind::Bool, 93),
    ("res", Kind::Dims, 103),
    ("cd", Kind::Str, 94),
    ("tz", Kind::Str, 100),
    ("refr", Kind::Special, 31),
    ("url", Kind::Special, 29),
    ("page", Kind::Str, 30),
    ("cs", Kind::Str, 105),
    ("ds", Kind::Dims, 106),
    ("vp", Kind::Dims, 95),
    ("eid", Kind::Special, 6),
    ("co", Kind::Special, 52),
    ("cx", Kind::Special, 52),
    ("ev_ca", Kind::Str, 53),
    ("ev_ac", Kind::Str, 54),
    ("ev_la", Kind::Str, 55),
    ("ev_pr", Kind::Str, 56),
    ("ev_va", Kind::Double, 57),
    ("se_ca", Kind::Str, 53),
    ("se_ac", Kind::Str, 54),
    ("se_la", Kind::Str, 55),
    ("se_pr", Kind::Str, 56),
    ("se_va", Kind::Double, 57),
    ("ue_pr", Kind::Special, 58),
    ("ue_px", Kind::Special, 58),
    ("tr_id", Kind::Str, 59),
    ("tr_af", Kind::Str, 60),
    ("tr_tt", Kind::Double, 61),
    ("tr_tx", Kind::Double, 62),
    ("tr_sh", Kind::Double, 63),
    ("tr_ci", Kind::Str, 64),
    ("tr_st", Kind::Str, 65),
    ("tr_co", Kind::Str, 66),
    ("ti_id", Kind::Str, 67),
    ("ti_sk", Kind::Str, 68),
    ("ti_na", Kind::Str, 69),
    ("ti_nm", Kind::Str, 69),
    ("ti_ca", Kind::Str, 70),
    ("ti_pr", Kind::Double, 71),
    ("ti_qu", Kind::Int, 72),
    ("pp_mix", Kind::Int, 73),
    ("pp_max", Kind::Int, 74),
    ("pp_miy", Kind::Int, 75),
    ("pp_may", Kind::Int, 76),
    ("tr_cu", Kind::Str, 108),
    ("ti_cu", Kind::Str, 112),
];

// Field indexes used by the special cases (checked by a test like PARAMS).
const PLATFORM: usize = 1;
const ETL_TSTAMP: usize = 2;
const COLLECTOR_TSTAMP: usize = 3;
const DVCE_CREATED_TSTAMP: usize = 4;
const EVENT: usize = 5;
const EVENT_ID: usize = 6;
const V_COLLECTOR: usize = 10;
const V_ETL: usize = 11;
const USER_IPADDRESS: usize = 13;
const NETWORK_USERID: usize = 17;
const PAGE_URL: usize = 29;
const PAGE_REFERRER: usize = 31;
const PAGE_URLSCHEME: usize = 32;
const REFR_URLSCHEME: usize = 38;
const CONTEXTS: usize = 52;
const UNSTRUCT_EVENT: usize = 58;
const USERAGENT: usize = 77;
const DVCE_SENT_TSTAMP: usize = 119;
const REFR_DOMAIN_USERID: usize = 120;
const REFR_DEVICE_TSTAMP: usize = 121;
const DERIVED_TSTAMP: usize = 124;
const EVENT_VENDOR: usize = 125;
const EVENT_NAME: usize = 126;
const EVENT_FORMAT: usize = 127;
const EVENT_VERSION: usize = 128;
const TRUE_TSTAMP: usize = 130;

fn slot_of(name: &str) -> usize {
    PARAMS
        .iter()
        .position(|p| p.0 == name)
        .expect("a parameter of the table")
}

/// The slot of a tracker parameter in [`PARAMS`], by binary search over a sorted index.
fn param_slot(name: &str) -> Option<usize> {
    static SORTED: OnceLock<Vec<(&'static str, usize)>> = OnceLock::new();
    let sorted = SORTED.get_or_init(|| {
        let mut v: Vec<_> = PARAMS.iter().enumerate().map(|(i, p)| (p.0, i)).collect();
        v.sort_unstable();
        v
    });
    sorted
        .binary_search_by(|(k, _)| (*k).cmp(name))
        .ok()
        .map(|i| sorted[i].1)
}

/// The weir version that processed an event (`v_etl`).
pub fn v_etl() -> &'static str {
    concat!("weir-", env!("CARGO_PKG_VERSION"))
}

/// Fills `fields` for one event from its parameter slots.
fn event_fields<'f>(
    slots: &[Option<&'f str>; PARAMS.len()],
    ctx: &'f Context<'f>,
    fields: &mut [Cow<'f, str>],
) -> Result<(), ConvertError> {
    let get = |name: &str| slots[slot_of_cached(name)];

    // Collector-set fields, possibly overridden by parameters below.
    fields[ETL_TSTAMP] = Cow::Borrowed(&ctx.etl_tstamp);
    fields[COLLECTOR_TSTAMP] = Cow::Borrowed(&ctx.collector_tstamp);
    fields[V_COLLECTOR] = Cow::Borrowed(get("cv").unwrap_or(ctx.v_collector));
    fields[V_ETL] = Cow::Borrowed(v_etl());
    fields[USERAGENT] = Cow::Borrowed(get("ua").or(ctx.useragent).unwrap_or(""));
    fields[NETWORK_USERID] = Cow::Borrowed(
        get("tnuid")
            .or(get("nuid"))
            .or(ctx.network_userid)
            .unwrap_or(""),
    );
    let ip = get("ip").map(first_ip).or(ctx.ip).unwrap_or("");
    fields[USER_IPADDRESS] = anonymize_ip(ip, ctx.options);

    // The event type.
    let e = get("e").ok_or_else(|| fail("e", "missing: every event needs its type `e`"))?;
    let (event, schema): (&str, Option<(&str, &str, &str, &str)>) = match e {
        "pv" => ("page_view", Some(SP_SCHEMA_PAGE_VIEW)),
        "pp" => ("page_ping", Some(SP_SCHEMA_PAGE_PING)),
        "se" | "ev" => ("struct", Some(SP_SCHEMA_STRUCT)),
        "tr" => ("transaction", Some(SP_SCHEMA_TRANSACTION)),
        "ti" => ("transaction_item", Some(SP_SCHEMA_TRANSACTION_ITEM)),
        "ue" => ("unstruct", None),
        other => {
            return Err(fail(
                "e",
                format!(
                    "expected one of pv, pp, se, ue, tr, ti, found {}",
                    Excerpt::new(other)
                ),
            ))
        }
    };
    fields[EVENT] = Cow::Borrowed(event);
    fields[EVENT_ID] = match get("eid") {
        Some(v) => Cow::Owned(uuid("eid", v)?),
        None => Cow::Owned(uuid::Uuid::new_v4().to_string()),
    };
    if let Some(p) = get("p") {
        const PLATFORMS: [&str; 9] = [
            "web", "mob", "pc", "srv", "app", "tv", "cnsl", "iot", "headset",
        ];
        if !PLATFORMS.contains(&p) {
            return Err(fail(
                "p",
                format!(
                    "expected a platform ({}), found {}",
                    PLATFORMS.join(", "),
                    Excerpt::new(p)
                ),
            ));
        }
        fields[PLATFORM] = Cow::Borrowed(p);
    }

    // The simple parameters.
    for (i, &(name, kind, idx)) in PARAMS.iter().enumerate() {
        let Some(v) = slots[i] else { continue };
        match kind {
            Kind::Special => {}
            Kind::Str => fields[idx] = Cow::Borrowed(v),
            Kind::Int => fields[idx] = Cow::Owned(int(name, v)?.to_string()),
            Kind::Double => fields[idx] = double(name, v)?,
            Kind::Bool => {
                if v != "1" && v != "0" {
                    return Err(fail(
                        name,
                        format!("expected 1 or 0, found {}", Excerpt::new(v)),
                    ));
                }
                fields[idx] = Cow::Borrowed(v);
            }
            Kind::Dims => {
                let (w, h) = dims(name, v)?;
                fields[idx] = Cow::Owned(w.to_string());
                fields[idx + 1] = Cow::Owned(h.to_string());
            }
            Kind::Uuid => fields[idx] = Cow::Owned(uuid(name, v)?),
        }
    }

    // Timestamps and the derived timestamp (Enrich's getDerivedTimestamp).
    let mut ms = |name: &'static str, idx: usize| -> Result<Option<i64>, ConvertError> {
        let Some(v) = get(name) else { return Ok(None) };
        let t = tstamp_ms(name, v)?;
        let mut s = String::with_capacity(23);
        format_tstamp(t, &mut s);
        fields[idx] = Cow::Owned(s);
        Ok(Some(t))
    };
    let dtm = ms("dtm", DVCE_CREATED_TSTAMP)?;
    let stm = ms("stm", DVCE_SENT_TSTAMP)?;
    let ttm = ms("ttm", TRUE_TSTAMP)?;
    let derived = match (ttm, stm, dtm) {
        (Some(t), _, _) => Some(t),
        (None, Some(sent), Some(created)) if created < sent => {
            Some(ctx.collector_ms - (sent - created))
        }
        _ => None,
    };
    fields[DERIVED_TSTAMP] = match derived {
        Some(t) => {
            let mut s = String::with_capacity(23);
            format_tstamp(t, &mut s);
            Cow::Owned(s)
        }
        None => Cow::Borrowed(&ctx.collector_tstamp),
    };

    // Page and referrer URLs and their parts; cross-domain `_sp` from the page's query string.
    if let Some(url) = get("url").or(ctx.referer) {
        fields[PAGE_URL] = Cow::Borrowed(url);
        if let Some(u) = UrlParts::parse(url) {
            u.fill(&mut fields[PAGE_URLSCHEME..PAGE_URLSCHEME + 6]);
            if let Some(q) = u.query {
                cross_domain(q, fields)?;
            }
        }
    }
    if let Some(refr) = get("refr") {
        fields[PAGE_REFERRER] = Cow::Borrowed(refr);
        if let Some(u) = UrlParts::parse(refr) {
            u.fill(&mut fields[REFR_URLSCHEME..REFR_URLSCHEME + 6]);
        }
    }

    // Self-describing JSON: entities and the unstruct event.
    if let Some(co) = get("co") {
        fields[CONTEXTS] = Cow::Owned(contexts("co", co)?);
    } else if let Some(cx) = get("cx") {
        fields[CONTEXTS] = Cow::Owned(contexts("cx", &base64_text("cx", cx)?)?);
    }
    let unstruct = match (get("ue_pr"), get("ue_px")) {
        (Some(pr), _) => Some(unstruct("ue_pr", pr)?),
        (None, Some(px)) => Some(unstruct("ue_px", &base64_text("ue_px", px)?)?),
        (None, None) => None,
    };
    let [vendor, name, format, version] = match (schema, unstruct) {
        (Some((v, n, f, ver)), ue) => {
            if let Some((json, _)) = ue {
                fields[UNSTRUCT_EVENT] = Cow::Owned(json);
            }
            [v, n, f, ver].map(Cow::Borrowed)
        }
        (None, Some((json, parts))) => {
            fields[UNSTRUCT_EVENT] = Cow::Owned(json);
            parts.map(Cow::Owned)
        }
        (None, None) => {
            return Err(fail(
                "ue_px",
                "missing: a self-describing event (e=ue) needs ue_pr or ue_px",
            ))
        }
    };
    fields[EVENT_VENDOR] = vendor;
    fields[EVENT_NAME] = name;
    fields[EVENT_FORMAT] = format;
    fields[EVENT_VERSION] = version;
    Ok(())
}

const SP_SCHEMA_PAGE_VIEW: (&str, &str, &str, &str) = (
    "com.snowplowanalytics.snowplow",
    "page_view",
    "jsonschema",
    "1-0-0",
);
const SP_SCHEMA_PAGE_PING: (&str, &str, &str, &str) = (
    "com.snowplowanalytics.snowplow",
    "page_ping",
    "jsonschema",
    "1-0-0",
);
const SP_SCHEMA_STRUCT: (&str, &str, &str, &str) =
    ("com.google.analytics", "event", "jsonschema", "1-0-0");
const SP_SCHEMA_TRANSACTION: (&str, &str, &str, &str) = (
    "com.snowplowanalytics.snowplow",
    "transaction",
    "jsonschema",
    "1-0-0",
);
const SP_SCHEMA_TRANSACTION_ITEM: (&str, &str, &str, &str) = (
    "com.snowplowanalytics.snowplow",
    "transaction_item",
    "jsonschema",
    "1-0-0",
);

/// [`slot_of`] for the few names looked up by hand, without scanning the table each time.
fn slot_of_cached(name: &str) -> usize {
    param_slot(name).unwrap_or_else(|| slot_of(name))
}

/// Writes the fields tab-separated, each made TSV-safe as Enrich does (`\r` and `\n` removed,
/// tabs replaced by four spaces), and a line has no newline of its own.
fn write_line(fields: &[Cow<'_, str>], out: &mut Vec<u8>) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        let b = f.as_bytes();
        if memchr::memchr3(b'\t', b'\r', b'\n', b).is_none() {
            out.extend_from_slice(b);
        } else {
            for &c in b {
                match c {
                    b'\t' => out.extend_from_slice(b"    "),
                    b'\r' | b'\n' => {}
                    c => out.push(c),
                }
            }
        }
    }
}

fn first_ip(v: &str) -> &str {
    v.split(',')
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or("")
}

/// Replaces trailing IPv4 octets / IPv6 segments with `x` (Enrich's anon_ip enrichment).
fn anonymize_ip<'a>(ip: &'a str, o: &Options) -> Cow<'a, str> {
    if ip.is_empty() {
        return Cow::Borrowed(ip);
    }
    if let Ok(v4) = ip.parse::<std::net::Ipv4Addr>() {
        if o.anon_ipv4_octets == 0 {
            return Cow::Borrowed(ip);
        }
        let keep = 4 - usize::from(o.anon_ipv4_octets.min(4));
        let parts: Vec<String> = v4
            .octets()
            .iter()
            .enumerate()
            .map(|(i, b)| if i < keep { b.to_string() } else { "x".into() })
            .collect();
        return Cow::Owned(parts.join("."));
    }
    if let Ok(v6) = ip.trim_matches(['[', ']']).parse::<std::net::Ipv6Addr>() {
        if o.anon_ipv6_segments == 0 {
            return Cow::Borrowed(ip);
        }
        let keep = 8 - usize::from(o.anon_ipv6_segments.min(8));
        let parts: Vec<String> = v6
            .segments()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i < keep {
                    format!("{s:x}")
                } else {
                    "x".into()
                }
            })
            .collect();
        return Cow::Owned(parts.join(":"));
    }
    Cow::Borrowed(ip)
}

fn int(name: &'static str, v: &str) -> Result<i32, ConvertError> {
    let bad = || {
        fail(
            name,
            format!("expected a 32-bit integer, found {}", Excerpt::new(v)),
        )
    };
    if let Ok(n) = v.parse::<i32>() {
        return Ok(n);
    }
    // "12.0" is accepted as 12, as Enrich's BigDecimal-based conversion does.
    let f: f64 = v.parse().map_err(|_| bad())?;
    if f.fract() == 0.0 && f >= i32::MIN as f64 && f <= i32::MAX as f64 {
        Ok(f as i32)
    } else {
        Err(bad())
    }
}

fn double<'a>(name: &'static str, v: &'a str) -> Result<Cow<'a, str>, ConvertError> {
    let f: f64 = v
        .parse()
        .ok()
        .filter(|f: &f64| f.is_finite())
        .ok_or_else(|| {
            fail(
                name,
                format!("expected a number, found {}", Excerpt::new(v)),
            )
        })?;
    let plain = v
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        && !v.starts_with('.')
        && !v.ends_with('.');
    Ok(if plain {
        Cow::Borrowed(v)
    } else {
        Cow::Owned(f.to_string())
    })
}

fn dims(name: &'static str, v: &str) -> Result<(u32, u32), ConvertError> {
    let bad = || {
        fail(
            name,
            format!("expected WIDTHxHEIGHT, found {}", Excerpt::new(v)),
        )
    };
    let (w, h) = v.split_once('x').ok_or_else(bad)?;
    let n = |s: &str| -> Option<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u32>().ok().filter(|&n| n <= i32::MAX as u32)
    };
    Ok((n(w).ok_or_else(bad)?, n(h).ok_or_else(bad)?))
}

fn uuid(name: &'static str, v: &str) -> Result<String, ConvertError> {
    uuid::Uuid::try_parse(v)
        .ok()
        .filter(|_| v.len() == 36)
        .map(|u| u.hyphenated().to_string())
        .ok_or_else(|| fail(name, format!("expected a UUID, found {}", Excerpt::new(v))))
}

/// A tracker timestamp: milliseconds since the epoch, within years 0–9999.
fn tstamp_ms(name: &'static str, v: &str) -> Result<i64, ConvertError> {
    let t: i64 = v.parse().map_err(|_| {
        fail(
            name,
            format!(
                "expected milliseconds since the epoch, found {}",
                Excerpt::new(v)
            ),
        )
    })?;
    if !(MIN_MS..=MAX_MS).contains(&t) {
        return Err(fail(
            name,
            format!("{t} ms is not a date between years 0 and 9999"),
        ));
    }
    Ok(t)
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z in ms since the epoch.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

/// Formats ms since the epoch as `YYYY-MM-DD HH:MM:SS.mmm` (UTC), the enriched TSV form.
/// Returns false (writing nothing) outside years 0–9999.
pub fn format_tstamp(ms: i64, out: &mut String) -> bool {
    use std::fmt::Write as _;
    if !(MIN_MS..=MAX_MS).contains(&ms) {
        return false;
    }
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let s = ms_of_day / 1000;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms_of_day % 1000
    );
    true
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The parts of an absolute URL as Enrich's `explodeUri` gives them (raw, not decoded; port 80
/// or 443 when absent).
struct UrlParts<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

impl<'a> UrlParts<'a> {
    /// None for a URL that is not `scheme://host…`: then only the whole URL is kept.
    fn parse(url: &'a str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        if scheme.is_empty()
            || !scheme.as_bytes()[0].is_ascii_alphabetic()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return None;
        }
        let (before_fragment, fragment) = match rest.split_once('#') {
            Some((a, f)) => (a, Some(f)),
            None => (rest, None),
        };
        let (before_query, query) = match before_fragment.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (before_fragment, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if hostport.starts_with('[') {
            let end = hostport.find(']')?;
            let port = hostport[end + 1..].strip_prefix(':');
            (&hostport[..=end], port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = port.filter(|p| !p.is_empty());
        if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
            return None;
        }
        Some(UrlParts {
            scheme,
            host,
            port,
            path,
            query: query.filter(|q| !q.is_empty()),
            fragment: fragment.filter(|f| !f.is_empty()),
        })
    }

    /// Writes scheme, host, port, path, query, fragment into six consecutive fields.
    fn fill(&self, out: &mut [Cow<'a, str>]) {
        out[0] = Cow::Borrowed(self.scheme);
        out[1] = Cow::Borrowed(self.host);
        out[2] = match self.port {
            Some(p) => Cow::Owned(p.parse::<u16>().map_or(0, |p| p).to_string()),
            None if self.scheme.eq_ignore_ascii_case("https") => Cow::Borrowed("443"),
            None => Cow::Borrowed("80"),
        };
        out[3] = Cow::Borrowed(self.path);
        out[4] = Cow::Borrowed(self.query.unwrap_or(""));
        out[5] = Cow::Borrowed(self.fragment.unwrap_or(""));
    }
}

/// Cross-domain tracking: `_sp=<domain_userid>.<ms>` in the page URL's query string sets
/// `refr_domain_userid` and `refr_device_tstamp` (Enrich's `parseCrossDomain`).
fn cross_domain<'a>(query: &'a str, fields: &mut [Cow<'a, str>]) -> Result<(), ConvertError> {
    let Some(sp) = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "_sp")
        .map(|(_, v)| v)
        .last()
    else {
        return Ok(());
    };
    let mut parts = sp.split('.');
    if let Some(duid) = parts.next().filter(|s| !s.is_empty()) {
        fields[REFR_DOMAIN_USERID] = Cow::Owned(duid.to_string());
    }
    if let Some(t) = parts.next().filter(|s| !s.is_empty()) {
        if let Ok(ms) = tstamp_ms("url", t) {
            let mut s = String::with_capacity(23);
            format_tstamp(ms, &mut s);
            fields[REFR_DEVICE_TSTAMP] = Cow::Owned(s);
        }
    }
    Ok(())
}

/// URL-safe or standard base64, padding optional (Enrich decodes with commons-codec's URL-safe
/// decoder, which takes both alphabets). A `+` that became a space in a query string is restored.
fn base64_text(name: &'static str, v: &str) -> Result<String, ConvertError> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let normalized: Cow<'_, str> = if v.bytes().any(|b| matches!(b, b'+' | b'/' | b' ')) {
        Cow::Owned(
            v.chars()
                .map(|c| match c {
                    '+' | ' ' => '-',
                    '/' => '_',
                    c => c,
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(v)
    };
    let bytes = ENGINE
        .decode(normalized.trim_end_matches('='))
        .map_err(|e| {
            fail(
                name,
                format!("expected URL-safe base64, found {} ({e})", Excerpt::new(v)),
            )
        })?;
    String::from_utf8(bytes).map_err(|e| {
        fail(
            name,
            format!(
                "the decoded base64 is not UTF-8 (invalid at byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

#[derive(Deserialize)]
struct Sdj<'a> {
    #[serde(borrow)]
    schema: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct SdjList<'a> {
    #[serde(borrow)]
    schema: Cow<'a, str>,
    #[serde(borrow)]
    data: Vec<Sdj<'a>>,
}

#[derive(Deserialize)]
struct SdjWrapper<'a> {
    #[serde(borrow)]
    schema: Cow<'a, str>,
    #[serde(borrow)]
    data: Sdj<'a>,
}

fn json_problem(name: &'static str, e: serde_json::Error) -> ConvertError {
    fail(name, format!("invalid JSON: {e}"))
}

fn check_entity(name: &'static str, what: &str, e: &Sdj<'_>) -> Result<(), ConvertError> {
    if iglu_parts(&e.schema).is_none() {
        return Err(fail(
            name,
            format!(
                "{what} has schema {}, which is not an Iglu URI iglu:vendor/name/format/M-R-A",
                Excerpt::new(&e.schema)
            ),
        ));
    }
    if !e.data.get().starts_with('{') {
        return Err(fail(
            name,
            format!("{what} ({}): \"data\" must be a JSON object", e.schema),
        ));
    }
    Ok(())
}

/// Validates a `co`/`cx` contexts document and returns it minified.
fn contexts(name: &'static str, json: &str) -> Result<String, ConvertError> {
    let doc: SdjList<'_> = serde_json::from_str(json).map_err(|e| json_problem(name, e))?;
    if !doc.schema.starts_with(CONTEXTS_SCHEMA) {
        return Err(fail(
            name,
            format!(
                "expected schema {CONTEXTS_SCHEMA}*, found {}",
                Excerpt::new(&doc.schema)
            ),
        ));
    }
    for (i, e) in doc.data.iter().enumerate() {
        check_entity(name, &format!("entity {i}"), e)?;
    }
    Ok(minify(json))
}

/// Validates a `ue_pr`/`ue_px` document; returns it minified with the event's schema parts.
fn unstruct(name: &'static str, json: &str) -> Result<(String, [String; 4]), ConvertError> {
    let doc: SdjWrapper<'_> = serde_json::from_str(json).map_err(|e| json_problem(name, e))?;
    if !doc.schema.starts_with(UNSTRUCT_SCHEMA) {
        return Err(fail(
            name,
            format!(
                "expected schema {UNSTRUCT_SCHEMA}*, found {}",
                Excerpt::new(&doc.schema)
            ),
        ));
    }
    check_entity(name, "the event", &doc.data)?;
    let rest = doc.data.schema.strip_prefix("iglu:").unwrap_or_default();
    let mut parts = rest.split('/');
    let key = [(); 4].map(|()| parts.next().unwrap_or_default().to_string());
    Ok((minify(json), key))
}

/// Removes the whitespace between JSON tokens of a valid JSON text (strings are copied as they
/// are: they cannot hold raw control characters), so the field has no tab or newline; and writes
/// `\/` in strings as `/`, as Enrich's JSON printer does. Snowplow's mobile trackers escape every
/// `/` (Android's org.json, Apple's JSONSerialization), schema URIs included: unescaped, an
/// entity's schema reads the same from every tracker, byte for byte.
fn minify(json: &str) -> String {
    let b = json.as_bytes();
    // Trackers mostly send compact JSON without escaped slashes: then there is nothing to do.
    if !b.iter().any(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        && memchr::memmem::find(b, b"\\/").is_none()
    {
        return json.to_string();
    }
    // Whitespace, quotes and backslashes are ASCII, so bytes can be walked one by one: every
    // multi-byte character is copied whole.
    let mut out = Vec::with_capacity(b.len());
    let mut in_string = false;
    let mut escaped = false;
    for &c in b {
        if in_string {
            if escaped {
                escaped = false;
                if c == b'/' {
                    out.pop(); // the backslash: `\/` is `/`
                }
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            out.push(c);
        } else if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            if c == b'"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    String::from_utf8(out).expect("removing ASCII whitespace and backslashes keeps UTF-8 valid")
}

// ---------------------------------------------------------------------------------------------
// payload_data: {"schema": "iglu:…/payload_data/jsonschema/1-0-*", "data": [{"e": "pv", …}, …]}

/// Parses a POST body into each event's parameters (strings borrowed where unescaped).
fn parse_payload_data(body: &str, max_events: usize) -> Result<Vec<Vec<Param<'_>>>, ConvertError> {
    let mut de = serde_json::Deserializer::from_str(body);
    let mut problem = None;
    let parsed = PayloadSeed {
        problem: &mut problem,
        max_events,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    if let Some(p) = problem {
        return Err(p);
    }
    let (schema, events) = parsed.map_err(|e| json_problem("body", e))?;
    let Some(schema) = schema else {
        return Err(fail(
            "body",
            format!("missing \"schema\"; expected {PAYLOAD_DATA}*"),
        ));
    };
    if !schema.starts_with(PAYLOAD_DATA) {
        return Err(fail(
            "body",
            format!(
                "expected schema {PAYLOAD_DATA}*, found {}",
                Excerpt::new(&schema)
            ),
        ));
    }
    let events = events.ok_or_else(|| fail("body", "missing \"data\" (the array of events)"))?;
    if events.is_empty() {
        return Err(fail("body", "empty list of events"));
    }
    Ok(events)
}

type PayloadValue<'a> = (Option<Cow<'a, str>>, Option<Vec<Vec<Param<'a>>>>);

struct PayloadSeed<'p> {
    /// A problem that is not JSON syntax (a non-string value, too many events), with its field.
    problem: &'p mut Option<ConvertError>,
    max_events: usize,
}

impl<'de> DeserializeSeed<'de> for PayloadSeed<'_> {
    type Value = PayloadValue<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PayloadSeed<'_> {
    type Value = PayloadValue<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a payload_data object {\"schema\":…,\"data\":[…]}")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut schema, mut data) = (None, None);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "schema" => schema = Some(map.next_value_seed(super::sdj::StrSeed)?),
                "data" => {
                    data = Some(map.next_value_seed(EventsSeed {
                        problem: &mut *self.problem,
                        max_events: self.max_events,
                    })?)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((schema, data))
    }
}

struct EventsSeed<'p> {
    problem: &'p mut Option<ConvertError>,
    max_events: usize,
}

impl<'de> DeserializeSeed<'de> for EventsSeed<'_> {
    type Value = Vec<Vec<Param<'de>>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed<'_> {
    type Value = Vec<Vec<Param<'de>>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::new();
        loop {
            if events.len() == self.max_events {
                // Count the rest without keeping them, to say how many there were.
                let mut n = events.len();
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                if n > self.max_events {
                    *self.problem = Some(ConvertError {
                        field: "body",
                        message: format!(
                            "{n} events in one request; at most {} are accepted",
                            self.max_events
                        ),
                        limit: Some(Limit::Events),
                    });
                    return Err(de::Error::custom("too many events"));
                }
                return Ok(events);
            }
            let index = events.len();
            match seq.next_element_seed(EventSeed {
                problem: &mut *self.problem,
                index,
            })? {
                Some(e) => events.push(e),
                None => return Ok(events),
            }
        }
    }
}

struct EventSeed<'p> {
    problem: &'p mut Option<ConvertError>,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Vec<Param<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = Vec<Param<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event: an object of string parameters")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut params = Vec::with_capacity(map.size_hint().unwrap_or(24));
        while let Some(key) = map.next_key_seed(super::sdj::StrSeed)? {
            match map.next_value_seed(ValueSeed)? {
                Ok(v) => params.push((key, v)),
                Err(found) => {
                    // Name a known parameter; an unknown one is reported on the body.
                    let field = param_slot(&key).map_or("body", |i| PARAMS[i].0);
                    *self.problem = Some(fail(
                        field,
                        format!(
                            "event {}: parameter {:?}: expected a string value, found {found}",
                            self.index + 1,
                            key
                        ),
                    ));
                    return Err(de::Error::custom("a parameter is not a string"));
                }
            }
        }
        Ok(params)
    }
}

/// A parameter value: a string, or the name of the JSON type found instead.
struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Result<Cow<'de, str>, &'static str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Result<Cow<'de, str>, &'static str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Ok(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Ok(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Ok(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err("null"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("a number"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Err("an object"))
    }
}

#[cfg(test)]
mod tests;
