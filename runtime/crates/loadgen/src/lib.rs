//! `weir loadgen`: simulated viewers watching videos, tracked the way the Snowplow JavaScript
//! tracker with the media plugin (v2) tracks them, or, for a share of them (`--mobile`), the way the
//! Snowplow mobile trackers (Android 6.3.2, iOS 6.2.5) with their media tracking do, posted to a
//! collector endpoint. For demos (in real time, or sped up) and for benchmarks (`--speed 0`: as
//! fast as the endpoint answers).
//!
//! Each viewer is one client: one keep-alive connection, its own `sp` cookie (sent back, as a
//! browser, OkHttp's cookie jar and URLSession do) and, for half of them, a user id (`uid`). A
//! browser viewer has a domain user id and session (`duid`, `sid`, `vid`); it views a page, then
//! watches videos one after another. Per video, a media session as the media plugin reports it:
//! `ready`, an optional pre-roll ad break (`ad_break_start`, per ad `ad_start`, quartiles, then
//! `ad_complete`, or `ad_skip` after 5 s when skippable, sometimes `ad_click`; `ad_break_end`),
//! `play`, a `ping` every 10 s of playback, `percent_progress` at 10/25/50/75 %, random pauses,
//! seeks, volume changes, a mid-roll break at half-time, `end`; plus page pings. Every media event
//! carries the `media_player` (2-0-0) and media `session` entities, `ad` / `ad_break` during ads,
//! and `web_page`. Events are batched into `tp2` POSTs (`--batch`), with `ue_px` / `cx` in URL-safe
//! base64 as the JS tracker's `encodeBase64` writes them (`--plain` for `ue_pr` / `co`).
//!
//! A mobile viewer (half Android, half iOS; which viewers, from `--seed`) is an app on a phone
//! (a few real device models per platform) and watches the same media sessions, with what differs
//! as the trackers send it: `p=mob`, `tv=andr-6.3.2` / `ios-6.2.5`, `lang` `English` / `en-US`,
//! `res` (iOS also `vp`), uppercase event ids on iOS, no `duid` / `sid` / `vid` / `url` / `page`;
//! a `screen_view` (`com.snowplowanalytics.mobile`) instead of the page view and no page pings;
//! contexts (`contexts` 1-0-1) with the media entities first, then `client_session` (1-0-2: install
//! id, session id and index, `eventIndex` +1 per event), `mobile_context` (1-0-3), `application`,
//! `screen` and `application_lifecycle`, in each tracker's order, instead of `web_page`; base64 in
//! the standard alphabet with padding (Android) or URL-safe without (iOS); `/` escaped as `\/` in
//! the JSON, as `org.json` and `JSONSerialization` write it; `Content-Type: application/json;
//! charset=utf-8`, the tracker's (Android) or URLSession's (iOS) User-Agent, no Origin / Referer.
//! Online, those trackers send each event on its own: `--batch 1` does that (`--batch` applies to
//! every viewer).
//!
//! Trackers retry on 429/503: so does the load generator (after `Retry-After`, `--retries` times).

#![deny(unsafe_op_in_unsafe_fn)]

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;

/// `weir loadgen` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Collector base URL (e.g. http://127.0.0.1:9090); events go to its
    /// /com.snowplowanalytics.snowplow/tp2 unless the URL has another path.
    pub url: String,
    /// Simultaneous viewers (one connection each).
    #[arg(long, default_value_t = 10)]
    pub viewers: usize,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Seconds of video per second of wall time; 0 sends as fast as the endpoint answers.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Events per request (the JS tracker's bufferSize). With --speed > 0 a partial batch also
    /// leaves after 1 s.
    #[arg(long, default_value_t = 5)]
    pub batch: usize,
    /// Send ue_pr / co as plain JSON instead of base64 ue_px / cx.
    #[arg(long)]
    pub plain: bool,
    /// Times a request refused with 429/503 (or failed to connect) is tried again.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Give each viewer its own X-Forwarded-For address (198.18.0.0/15, the benchmarking range),
    /// as if they were different clients behind a proxy.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub forwarded_for: bool,
    /// Seed of the viewers' random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of the viewers (0.0 to 1.0) that are apps using the Snowplow mobile trackers, half
    /// Android 6.3.2, half iOS 6.2.5, instead of browsers; which ones follows from --seed.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction, allow_negative_numbers = true)]
    pub mobile: f64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub seconds: f64,
    pub viewers: usize,
    /// Viewers that were mobile apps (Android and iOS) rather than browsers.
    pub mobile_viewers: usize,
    pub requests: u64,
    /// Events in requests answered 2xx.
    pub events_accepted: u64,
    pub events_generated: u64,
    pub status_2xx: u64,
    pub status_429: u64,
    pub status_503: u64,
    pub status_other: u64,
    pub connect_errors: u64,
    /// Batches given up on after all retries.
    pub dropped_batches: u64,
    pub requests_per_s: f64,
    pub events_per_s: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

/// Runs the load and prints the report.
pub fn main(args: Args) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weir-loadgen")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args.clone())) {
        Ok(r) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&r).expect("a report serialises")
                );
            } else {
                let mobile = if r.mobile_viewers > 0 {
                    format!(" ({} mobile)", r.mobile_viewers)
                } else {
                    String::new()
                };
                println!(
                    "{} viewers{mobile}, {:.1} s: {} requests ({:.0}/s), {} events accepted ({:.0}/s) of {} generated\n\
                     status 2xx {} / 429 {} / 503 {} / other {}; connect errors {}; batches dropped {}\n\
                     latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    r.viewers, r.seconds, r.requests, r.requests_per_s, r.events_accepted,
                    r.events_per_s, r.events_generated, r.status_2xx, r.status_429, r.status_503,
                    r.status_other, r.connect_errors, r.dropped_batches, r.latency_ms_p50,
                    r.latency_ms_p99, r.latency_ms_max
                );
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where the load goes: `host:port` to connect to and the path to post to.
#[derive(Debug)]
struct Target {
    /// The host as the URL writes it (IPv6 addresses in brackets), for the `Host` header.
    host: String,
    port: u16,
    /// Path and query.
    path: String,
}

impl Target {
    /// The host to connect to (IPv6 addresses without brackets).
    fn connect_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("expected an http:// URL, found `{url}`"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "expected an http:// URL, found `{url}`"
    );
    let authority = uri
        .authority()
        .with_context(|| format!("expected an http:// URL with a host, found `{url}`"))?;
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => weir_snowplow::tracker::TP2_PATH.to_string(),
        Some(p) => p.to_string(),
    };
    // `Uri` does not check the port: a port that is not a number reads as none.
    let host = authority.host();
    let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    let port = match host_port
        .strip_prefix(host)
        .and_then(|p| p.strip_prefix(':'))
    {
        None | Some("") => 80,
        Some(p) => p
            .parse()
            .with_context(|| format!("`{p}` in `{url}` is not a port"))?,
    };
    Ok(Target {
        host: host.to_string(),
        port,
        path,
    })
}

/// Runs `args.viewers` viewers for `args.duration` and adds up what they did.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let target = std::sync::Arc::new(parse_url(&args.url)?);
    anyhow::ensure!(args.viewers > 0, "--viewers must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(args.speed >= 0.0, "--speed must not be negative");
    check_fraction(args.mobile).map_err(|e| anyhow::anyhow!("--mobile: {e}"))?;
    let platforms = platforms(args.seed, args.viewers, args.mobile);
    let mobile_viewers = platforms.iter().filter(|p| **p != Platform::Web).count();
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut tasks = Vec::with_capacity(args.viewers);
    for (v, platform) in platforms.into_iter().enumerate() {
        let args = args.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut viewer = Viewer::new(v, &args, platform);
            viewer.watch(&target, &args, deadline).await;
            viewer.stats
        }));
    }
    let mut total = Stats::default();
    for t in tasks {
        let s = t.await?;
        total.add(s);
    }
    let seconds = start.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if total.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((total.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        total.latencies_us[i] as f64 / 1000.0
    };
    Ok(Report {
        seconds,
        viewers: args.viewers,
        mobile_viewers,
        requests: total.requests,
        events_accepted: total.events_accepted,
        events_generated: total.events_generated,
        status_2xx: total.ok,
        status_429: total.s429,
        status_503: total.s503,
        status_other: total.other,
        connect_errors: total.connect_errors,
        dropped_batches: total.dropped,
        requests_per_s: total.requests as f64 / seconds,
        events_per_s: total.events_accepted as f64 / seconds,
        latency_ms_p50: pct(0.5),
        latency_ms_p99: pct(0.99),
        latency_ms_max: pct(1.0),
    })
}

/// The value of `--mobile`: a fraction from 0.0 to 1.0.
fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a fraction from 0.0 to 1.0, found `{s}`"))?;
    check_fraction(v)?;
    Ok(v)
}

fn check_fraction(v: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "expected a fraction from 0.0 to 1.0 (0.3: 30 % of the viewers are mobile), found {v}"
        ))
    }
}

/// Which tracker a viewer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Platform {
    /// The JavaScript tracker (`js-4.10.2`) and media plugin v2 in a browser.
    Web,
    /// The Android tracker 6.3.2 in an app.
    Android,
    /// The iOS tracker 6.2.5 in an app.
    Ios,
}

/// The platform of each of `viewers` viewers: `round(viewers × mobile)` of them mobile, every
/// other one of those Android, the rest iOS. Which viewers are mobile is a shuffle of the viewer
/// indexes drawn from `seed` (the rest of a viewer's choices come from its own generator, so a
/// browser viewer does the same whatever the share of mobile ones).
fn platforms(seed: u64, viewers: usize, mobile: f64) -> Vec<Platform> {
    let mut rng = Rng(seed ^ 0x6d6f_6269_6c65_0000);
    let mut order: Vec<(u64, usize)> = (0..viewers).map(|i| (rng.next(), i)).collect();
    order.sort_unstable();
    let n = ((viewers as f64 * mobile).round() as usize).min(viewers);
    let mut out = vec![Platform::Web; viewers];
    for (k, &(_, i)) in order[..n].iter().enumerate() {
        out[i] = if k % 2 == 0 {
            Platform::Android
        } else {
            Platform::Ios
        };
    }
    out
}

#[derive(Default)]
struct Stats {
    requests: u64,
    events_accepted: u64,
    events_generated: u64,
    ok: u64,
    s429: u64,
    s503: u64,
    other: u64,
    connect_errors: u64,
    dropped: u64,
    latencies_us: Vec<u32>,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.requests += o.requests;
        self.events_accepted += o.events_accepted;
        self.events_generated += o.events_generated;
        self.ok += o.ok;
        self.s429 += o.s429;
        self.s503 += o.s503;
        self.other += o.other;
        self.connect_errors += o.connect_errors;
        self.dropped += o.dropped;
        self.latencies_us.extend(o.latencies_us);
    }
}

/// SplitMix64: small, fast, seedable; plenty for choosing what a viewer does next.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_le_bytes());
        bytes[8..].copy_from_slice(&b.to_le_bytes());
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string()
    }
}

const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
];

/// An ad break being played.
struct AdBreak {
    id: String,
    name: &'static str,
    start_time: f64,
    pod_size: u32,
}

/// The media session (media plugin v2 `session` entity), cumulative over one video.
#[derive(Default)]
struct Session {
    id: String,
    started_at: String,
    time_played: f64,
    time_paused: f64,
    time_spent_ads: f64,
    content_watched: f64,
    ads: u32,
    ads_skipped: u32,
    ads_clicked: u32,
    ad_breaks: u32,
}

struct Video {
    label: String,
    duration: f64,
    current_time: f64,
    paused: bool,
    ended: bool,
    muted: bool,
    volume: u32,
    boundaries_sent: [bool; 4],
    midroll_done: bool,
}

/// The Android tracker's `tv` (`andr-` + its version).
const ANDROID_TRACKER: &str = "andr-6.3.2";
/// The iOS tracker's `tv`.
const IOS_TRACKER: &str = "ios-6.2.5";
/// The iOS tracker sets no User-Agent: URLSession's default, `<CFBundleName>/<CFBundleVersion>
/// CFNetwork/… Darwin/…` (iOS 17.5), goes out.
const IOS_USER_AGENT: &str = "MediaDemo/42 CFNetwork/1496.0.7 Darwin/23.5.0";
/// The iOS tracker's `Accept` header (`kSPAcceptContentHeader`).
const IOS_ACCEPT: &str = "text/html, application/x-www-form-urlencoded, text/plain, image/gif";
const APP_VERSION: &str = "2.4.1";
const TIME_ZONES: [&str; 4] = [
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Sao_Paulo",
];

/// A phone, as `mobile_context` describes it.
struct Device {
    manufacturer: &'static str,
    model: &'static str,
    os_version: &'static str,
    resolution: &'static str,
    /// Pixel density (Android) or screen scale (iOS), as the tracker writes it.
    scale: &'static str,
    physical_memory: u64,
}

/// `Build.MANUFACTURER`, `Build.MODEL`, `Build.VERSION.RELEASE`.
const ANDROID_DEVICES: [Device; 3] = [
    Device {
        manufacturer: "Google",
        model: "Pixel 8",
        os_version: "14",
        resolution: "1080x2400",
        scale: "2.625",
        physical_memory: 7_806_312_448,
    },
    Device {
        manufacturer: "samsung",
        model: "SM-S921B",
        os_version: "14",
        resolution: "1080x2340",
        scale: "2.8125",
        physical_memory: 7_741_087_744,
    },
    Device {
        manufacturer: "Xiaomi",
        model: "2201117TG",
        os_version: "13",
        resolution: "1080x2400",
        scale: "2.75",
        physical_memory: 3_825_205_248,
    },
];

/// `hw.machine` identifiers: iPhone 14 Pro, iPhone 15 Pro, iPhone 13.
const IOS_DEVICES: [Device; 3] = [
    Device {
        manufacturer: "Apple Inc.",
        model: "iPhone15,2",
        os_version: "17.5.1",
        resolution: "1179x2556",
        scale: "3",
        physical_memory: 6_372_032_512,
    },
    Device {
        manufacturer: "Apple Inc.",
        model: "iPhone16,1",
        os_version: "17.5.1",
        resolution: "1179x2556",
        scale: "3",
        physical_memory: 8_190_328_832,
    },
    Device {
        manufacturer: "Apple Inc.",
        model: "iPhone14,5",
        os_version: "17.5.1",
        resolution: "1170x2532",
        scale: "3",
        physical_memory: 3_968_827_392,
    },
];

/// What a browser viewer keeps between events.
struct Browser {
    duid: String,
    sid: String,
    vid: u32,
    page_id: String,
    url: String,
    last_ping_page: i64,
}

/// What a mobile viewer (an app with the Snowplow tracker) keeps between events.
struct App {
    ios: bool,
    device: &'static Device,
    tz: &'static str,
    /// `networkType` and, on a mobile network, `networkTechnology`.
    network: (&'static str, Option<&'static str>),
    /// `client_session.userId`: a UUID per install.
    install_id: String,
    session_id: String,
    /// None in the install's first session (Android writes `null`, iOS leaves the key out).
    previous_session_id: Option<String>,
    session_index: u32,
    first_event_id: String,
    first_event_timestamp: String,
    /// The `eventIndex` of the last event tracked.
    event_index: u32,
    /// iOS `appleIdfv`.
    idfv: String,
    /// The id of the screen shown, once the screen view is tracked.
    screen: Option<String>,
}

impl App {
    /// A UUID as the tracker writes its ids: uppercase on iOS (`uuidString`).
    fn id(&self, uuid: String) -> String {
        if self.ios {
            uuid.to_uppercase()
        } else {
            uuid
        }
    }

    fn client_session(&self, out: &mut String) {
        let _ = write!(
            out,
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2","data":{{"userId":"{}","sessionId":"{}","sessionIndex":{},"#,
            self.install_id, self.session_id, self.session_index
        );
        match (&self.previous_session_id, self.ios) {
            (Some(p), _) => {
                let _ = write!(out, r#""previousSessionId":"{p}","#);
            }
            (None, false) => out.push_str(r#""previousSessionId":null,"#),
            (None, true) => {}
        }
        let _ = write!(
            out,
            r#""storageMechanism":"LOCAL_STORAGE","firstEventId":"{}","firstEventTimestamp":"{}","eventIndex":{}}}}}"#,
            self.first_event_id, self.first_event_timestamp, self.event_index
        );
    }

    fn mobile_context(&self, out: &mut String) {
        let d = self.device;
        let _ = write!(
            out,
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/1-0-3","data":{{"osType":"{}","osVersion":"{}","deviceManufacturer":"{}","deviceModel":"{}","resolution":"{}","scale":{},"language":"{}","physicalMemory":{},"#,
            if self.ios { "ios" } else { "android" },
            d.os_version,
            d.manufacturer,
            d.model,
            d.resolution,
            d.scale,
            if self.ios { "en-US" } else { "eng" },
            d.physical_memory,
        );
        if self.ios {
            let _ = write!(out, r#""appleIdfv":"{}","lowPowerMode":false,"#, self.idfv);
        }
        let _ = write!(
            out,
            r#""isPortrait":true,"networkType":"{}""#,
            self.network.0
        );
        if let Some(t) = self.network.1 {
            let _ = write!(out, r#","networkTechnology":"{t}""#);
        }
        out.push_str("}}");
    }

    fn application(&self, out: &mut String) {
        let _ = write!(
            out,
            r#"{{"schema":"iglu:com.snowplowanalytics.mobile/application/jsonschema/1-0-0","data":{{"version":"{APP_VERSION}","build":"{}"}}}}"#,
            if self.ios { "42" } else { "241" }
        );
    }

    /// The screen entity and the lifecycle entity (the trackers' state machines add both).
    fn state_entities(&self, out: &mut String) {
        if let Some(id) = &self.screen {
            out.push_str(
                r#"{"schema":"iglu:com.snowplowanalytics.mobile/screen/jsonschema/1-0-0","data":"#,
            );
            if self.ios {
                let _ = write!(out, r#"{{"name":"VideoPlayer","id":"{id}"}}}},"#);
            } else {
                let _ = write!(
                    out,
                    r#"{{"id":"{id}","name":"PlayerActivity","type":"PlayerActivity","activity":"PlayerActivity"}}}},"#
                );
            }
        }
        out.push_str(
            r#"{"schema":"iglu:com.snowplowanalytics.mobile/application_lifecycle/jsonschema/1-0-0","data":"#,
        );
        out.push_str(if self.ios {
            r#"{"isVisible":true,"index":0}}"#
        } else {
            r#"{"isVisible":true}}"#
        });
    }
}

/// The tracker a viewer runs, with its state.
enum Client {
    Browser(Browser),
    App(Box<App>),
}

/// `/` as `\/`, as Android's `org.json` and Apple's `JSONSerialization` write it. JSON has `/`
/// only in strings, so this applies to a whole JSON text.
fn escape_slashes(json: &str) -> String {
    json.replace('/', "\\/")
}

struct Viewer {
    index: usize,
    rng: Rng,
    client: Client,
    uid: Option<String>,
    ua: String,
    xff: Option<String>,
    /// The collector's `sp` cookie, sent back by every client: browsers, OkHttp with the Android
    /// tracker's cookie jar, and URLSession's shared cookie storage.
    cookie: Option<String>,
    plain: bool,
    /// Virtual wall clock of the viewer, ms since the epoch.
    clock_ms: i64,
    /// Real instant matching `clock_ms` (for pacing).
    real_start: Instant,
    virtual_start_ms: i64,
    buffer: Vec<String>,
    oldest_buffered: Option<Instant>,
    stats: Stats,
    conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Viewer {
    fn new(index: usize, args: &Args, platform: Platform) -> Self {
        let mut rng = Rng(args
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(index as u64 * 7919));
        let now_ms = weir_snowplow::now_ms();
        let uid_of = |rng: &mut Rng| {
            rng.chance(0.5)
                .then(|| format!("viewer-{index}@example.com"))
        };
        let (client, uid, ua) = match platform {
            Platform::Web => {
                let duid = rng.uuid();
                let sid = rng.uuid();
                let page_id = rng.uuid();
                let uid = uid_of(&mut rng);
                let url = format!(
                    "https://video.example.com/watch?v={}&ref=home",
                    rng.range(1000, 9999)
                );
                let browser = Browser {
                    duid,
                    sid,
                    vid: 1,
                    page_id,
                    url,
                    last_ping_page: now_ms,
                };
                let ua = USER_AGENTS[index % USER_AGENTS.len()].to_string();
                (Client::Browser(browser), uid, ua)
            }
            Platform::Android | Platform::Ios => {
                let ios = platform == Platform::Ios;
                let devices = if ios { &IOS_DEVICES } else { &ANDROID_DEVICES };
                let device = &devices[rng.range(0, devices.len() as u64 - 1) as usize];
                let install_id = rng.uuid();
                let session_id = rng.uuid();
                let session_index = rng.range(1, 12) as u32;
                let previous_session_id = (session_index > 1).then(|| rng.uuid());
                let mut app = App {
                    ios,
                    device,
                    tz: TIME_ZONES[rng.range(0, TIME_ZONES.len() as u64 - 1) as usize],
                    network: if rng.chance(0.3) {
                        let tech = if ios {
                            "CTRadioAccessTechnologyNR"
                        } else {
                            "LTE"
                        };
                        ("mobile", Some(tech))
                    } else {
                        ("wifi", None)
                    },
                    install_id,
                    session_id,
                    previous_session_id,
                    session_index,
                    first_event_id: String::new(),
                    first_event_timestamp: rfc3339(now_ms),
                    // The app starts a new session. With screen engagement tracking on (the
                    // default), the first screen view is preceded by a `screen_end` that the
                    // tracker drops (no screen was shown before) after the session counted it:
                    // it takes `eventIndex` 1 and is the session's `firstEventId`, and the first
                    // event that reaches the collector has `eventIndex` 2.
                    event_index: 1,
                    idfv: rng.uuid().to_uppercase(),
                    screen: None,
                };
                app.first_event_id = app.id(rng.uuid());
                let uid = uid_of(&mut rng);
                let ua = if ios {
                    IOS_USER_AGENT.to_string()
                } else {
                    format!("snowplow/{ANDROID_TRACKER} android/{}", device.os_version)
                };
                (Client::App(Box::new(app)), uid, ua)
            }
        };
        let xff = args
            .forwarded_for
            .then(|| format!("198.18.{}.{}", (index / 250) % 256, index % 250 + 1));
        Viewer {
            index,
            client,
            uid,
            ua,
            xff,
            cookie: None,
            plain: args.plain,
            clock_ms: now_ms,
            real_start: Instant::now(),
            virtual_start_ms: now_ms,
            buffer: Vec::with_capacity(args.batch),
            oldest_buffered: None,
            stats: Stats::default(),
            conn: None,
            rng,
        }
    }

    fn platform(&self) -> Platform {
        match &self.client {
            Client::Browser(_) => Platform::Web,
            Client::App(a) if a.ios => Platform::Ios,
            Client::App(_) => Platform::Android,
        }
    }

    /// Plays videos until the deadline, then sends what is buffered.
    async fn watch(&mut self, target: &Target, args: &Args, deadline: Instant) {
        self.first_view();
        let mut n = 0;
        while Instant::now() < deadline {
            n += 1;
            if !self.play_video(n, target, args, deadline).await {
                break;
            }
        }
        if !self.buffer.is_empty() {
            self.send(target, args).await;
        }
    }

    /// The fields every event of the viewer's tracker has (`e` first, no leading comma).
    fn common(&mut self, e: &str, out: &mut String) {
        match &mut self.client {
            Client::Browser(b) => {
                let _ = write!(
                    out,
                    r#""e":"{e}","eid":"{eid}","tv":"js-4.10.2","tna":"sp","aid":"weir-loadgen","p":"web","cookie":"1","cs":"UTF-8","lang":"en-US","res":"1920x1080","cd":"24","tz":"Europe/Lisbon","dtm":"{dtm}","vp":"1280x720","ds":"1280x2400","vid":"{vid}","sid":"{sid}","duid":"{duid}","url":"{url}""#,
                    eid = uuid::Uuid::new_v4(),
                    dtm = self.clock_ms,
                    vid = b.vid,
                    sid = b.sid,
                    duid = b.duid,
                    url = b.url,
                );
            }
            Client::App(a) => {
                a.event_index += 1;
                let eid = a.id(uuid::Uuid::new_v4().to_string());
                let (tv, aid, lang) = if a.ios {
                    (IOS_TRACKER, "weir-loadgen-ios", "en-US")
                } else {
                    (ANDROID_TRACKER, "weir-loadgen-android", "English")
                };
                let _ = write!(
                    out,
                    r#""e":"{e}","eid":"{eid}","tv":"{tv}","tna":"sp","aid":"{aid}","p":"mob","tz":"{tz}","lang":"{lang}","res":"{res}","dtm":"{dtm}""#,
                    tz = a.tz,
                    res = a.device.resolution,
                    dtm = self.clock_ms,
                );
                if a.ios {
                    // The iOS tracker's Subject sets the viewport to the screen size.
                    let _ = write!(out, r#","vp":"{}""#, a.device.resolution);
                }
            }
        }
        if let Some(uid) = &self.uid {
            let _ = write!(out, r#","uid":"{uid}""#);
        }
    }

    /// Adds a self-describing JSON parameter (`ue_px`/`ue_pr` or `cx`/`co`) to an event.
    fn sdj_param(&self, plain: &str, encoded: &str, json: &str, out: &mut String) {
        let platform = self.platform();
        let escaped;
        let json = if platform == Platform::Web {
            json
        } else {
            escaped = escape_slashes(json);
            &escaped
        };
        if self.plain {
            let _ = write!(out, r#","{plain}":{}"#, serde_json::Value::from(json));
        } else {
            let b64 = match platform {
                // `Base64.encodeToString(bytes, Base64.NO_WRAP)`: standard alphabet, padded.
                Platform::Android => base64::engine::general_purpose::STANDARD.encode(json),
                // The JS tracker's `encodeBase64` and iOS `Payload.addJsonToPayload`.
                Platform::Web | Platform::Ios => {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
                }
            };
            let _ = write!(out, r#","{encoded}":"{b64}""#);
        }
    }

    /// The `contexts` of an event: its own `entities` (comma-separated, may be empty), then those
    /// the tracker adds, in the tracker's order.
    fn contexts(&self, entities: &str) -> String {
        let mut ctx = String::with_capacity(entities.len() + 2048);
        let version = if self.platform() == Platform::Web {
            "1-0-0"
        } else {
            "1-0-1"
        };
        let _ = write!(
            ctx,
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/{version}","data":["#
        );
        if !entities.is_empty() {
            ctx.push_str(entities);
            ctx.push(',');
        }
        match &self.client {
            Client::Browser(b) => {
                let _ = write!(
                    ctx,
                    r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0","data":{{"id":"{}"}}}}"#,
                    b.page_id
                );
            }
            Client::App(a) if a.ios => {
                a.mobile_context(&mut ctx);
                ctx.push(',');
                a.application(&mut ctx);
                ctx.push(',');
                a.client_session(&mut ctx);
                ctx.push(',');
                a.state_entities(&mut ctx);
            }
            Client::App(a) => {
                a.client_session(&mut ctx);
                ctx.push(',');
                a.application(&mut ctx);
                ctx.push(',');
                a.mobile_context(&mut ctx);
                ctx.push(',');
                a.state_entities(&mut ctx);
            }
        }
        ctx.push_str("]}");
        ctx
    }

    /// Buffers one event: the common fields, `fields` (more `,"key":"value"` pairs), the
    /// self-describing event `ue` (its schema and data, if any) and the contexts with `entities`.
    fn event(&mut self, e: &str, fields: &str, ue: Option<&str>, entities: &str) {
        let mut ev = String::with_capacity(4096);
        ev.push('{');
        self.common(e, &mut ev);
        ev.push_str(fields);
        if let Some(ue) = ue {
            let ue = format!(
                r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0","data":{ue}}}"#
            );
            self.sdj_param("ue_pr", "ue_px", &ue, &mut ev);
        }
        let ctx = self.contexts(entities);
        self.sdj_param("co", "cx", &ctx, &mut ev);
        ev.push('}');
        if self.platform() != Platform::Web {
            ev = escape_slashes(&ev);
        }
        self.push(ev);
    }

    /// What the viewer sees first: the page view (browser) or the player's screen view (app).
    fn first_view(&mut self) {
        match &mut self.client {
            Client::Browser(_) => self.event(
                "pv",
                r#","page":"Watch – weir demo","refr":"https://www.example.com/""#,
                None,
                "",
            ),
            Client::App(a) => {
                let id = a.id(self.rng.uuid());
                let data = if a.ios {
                    format!(r#"{{"name":"VideoPlayer","id":"{id}"}}"#)
                } else {
                    // Activity autotracking: name and type are the activity's class name.
                    format!(r#"{{"id":"{id}","name":"PlayerActivity","type":"PlayerActivity"}}"#)
                };
                // The screen state machine has the new screen before the entities are added.
                a.screen = Some(id);
                let sv = format!(
                    r#"{{"schema":"iglu:com.snowplowanalytics.mobile/screen_view/jsonschema/1-0-0","data":{data}}}"#
                );
                self.event("ue", "", Some(&sv), "");
            }
        }
    }

    fn page_ping(&mut self) {
        let fields = format!(
            r#","page":"Watch – weir demo","pp_mix":"0","pp_max":"0","pp_miy":"0","pp_may":"{}""#,
            self.rng.range(0, 1200)
        );
        self.event("pp", &fields, None, "");
    }

    /// One media event with its entities.
    fn media_event(
        &mut self,
        name: &str,
        data: &str,
        video: &Video,
        session: &Session,
        ad: Option<(&str, u32, u32, bool)>,
        ad_break: Option<&AdBreak>,
    ) {
        let platform = self.platform();
        let player_type = match platform {
            Platform::Web => "org.whatwg-media_element",
            Platform::Android => "androidx.media3-exoplayer",
            Platform::Ios => "com.apple-avfoundation",
        };
        let mut entities = String::with_capacity(2048);
        let _ = write!(
            entities,
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/2-0-0","data":{{"currentTime":{ct:.3},"duration":{dur:.3},"ended":{ended},"paused":{paused},"label":"{label}","mediaType":"video","playerType":"{player_type}","muted":{muted},"loop":false,"playbackRate":1,"volume":{volume},"fullscreen":false,"pictureInPicture":false,"livestream":false,"quality":"720p"}}}},{{"schema":"iglu:com.snowplowanalytics.snowplow.media/session/jsonschema/1-0-0","data":{{"mediaSessionId":"{sid}","startedAt":"{started}","pingInterval":10,"timePlayed":{tp:.3},"timePlayedMuted":0,"timePaused":{tpa:.3},"contentWatched":{cw:.0},"timeBuffering":0,"timeSpentAds":{tsa:.3},"ads":{ads},"adsClicked":{adc},"adsSkipped":{ads_s},"adBreaks":{ab},"avgPlaybackRate":1}}}}"#,
            ct = video.current_time,
            dur = video.duration,
            ended = video.ended,
            paused = video.paused,
            label = video.label,
            muted = video.muted,
            volume = video.volume,
            sid = session.id,
            started = session.started_at,
            tp = session.time_played,
            tpa = session.time_paused,
            cw = session.content_watched,
            tsa = session.time_spent_ads,
            ads = session.ads,
            adc = session.ads_clicked,
            ads_s = session.ads_skipped,
            ab = session.ad_breaks,
        );
        let ad = ad.map(|(id, pos, dur, skippable)| {
            format!(
                r#",{{"schema":"iglu:com.snowplowanalytics.snowplow.media/ad/jsonschema/1-0-0","data":{{"adId":"{id}","name":"Spot {id}","creativeId":"cr-{id}","podPosition":{pos},"duration":{dur},"skippable":{skippable}}}}}"#
            )
        });
        let ad_break = ad_break.map(|b| {
            format!(
                r#",{{"schema":"iglu:com.snowplowanalytics.snowplow.media/ad_break/jsonschema/1-0-0","data":{{"breakId":"{}","startTime":{:.3},"name":"{}","breakType":"linear","podSize":{}}}}}"#,
                b.id, b.start_time, b.name, b.pod_size
            )
        });
        // The iOS tracker lists the ad break before the ad; the others the ad first.
        let ads = if platform == Platform::Ios {
            [ad_break, ad]
        } else {
            [ad, ad_break]
        };
        for e in ads.into_iter().flatten() {
            entities.push_str(&e);
        }
        let ue = format!(
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow.media/{name}/jsonschema/1-0-0","data":{data}}}"#
        );
        self.event("ue", "", Some(&ue), &entities);
    }

    fn push(&mut self, event: String) {
        self.stats.events_generated += 1;
        if self.buffer.is_empty() {
            self.oldest_buffered = Some(Instant::now());
        }
        self.buffer.push(event);
    }

    /// Advances the viewer's clock by `secs` of video time; in paced mode waits for it, sending
    /// a partial batch that has waited 1 s. False once the deadline has passed.
    async fn advance(
        &mut self,
        secs: f64,
        target: &Target,
        args: &Args,
        deadline: Instant,
    ) -> bool {
        self.clock_ms += (secs * 1000.0) as i64;
        if self.buffer.len() >= args.batch {
            self.send(target, args).await;
        }
        if args.speed > 0.0 {
            let due = self.real_start
                + Duration::from_secs_f64(
                    (self.clock_ms - self.virtual_start_ms) as f64 / 1000.0 / args.speed,
                );
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                if now >= due {
                    break;
                }
                let flush_at = self
                    .oldest_buffered
                    .filter(|_| !self.buffer.is_empty())
                    .map(|t| t + Duration::from_secs(1));
                let wake = [Some(due), Some(deadline), flush_at]
                    .into_iter()
                    .flatten()
                    .min()
                    .expect("due is set");
                tokio::time::sleep_until(wake.into()).await;
                if flush_at.is_some_and(|f| Instant::now() >= f) {
                    self.send(target, args).await;
                }
            }
        }
        // Page pings every 30 s of the viewer's time, as activity tracking sends them.
        if let Client::Browser(b) = &mut self.client {
            if self.clock_ms - b.last_ping_page >= 30_000 {
                b.last_ping_page = self.clock_ms;
                self.page_ping();
            }
        }
        Instant::now() < deadline
    }

    /// One video, start to end (or to the deadline). False if the deadline passed.
    async fn play_video(
        &mut self,
        n: u32,
        target: &Target,
        args: &Args,
        deadline: Instant,
    ) -> bool {
        let mut video = Video {
            label: format!("Video {} of viewer {}", n, self.index),
            duration: self.rng.range(60, 600) as f64,
            current_time: 0.0,
            paused: true,
            ended: false,
            muted: false,
            volume: 100,
            boundaries_sent: [false; 4],
            midroll_done: false,
        };
        let mut session = Session {
            id: self.rng.uuid(),
            started_at: rfc3339(self.clock_ms),
            ..Session::default()
        };
        self.media_event("ready_event", "{}", &video, &session, None, None);
        if !self.advance(0.5, target, args, deadline).await {
            return false;
        }
        if self.rng.chance(0.5)
            && !self
                .ad_break("preroll", &mut video, &mut session, target, args, deadline)
                .await
        {
            return false;
        }
        video.paused = false;
        self.media_event("play_event", "{}", &video, &session, None, None);
        let mut since_ping = 0.0;
        while video.current_time < video.duration {
            let step = 1.0f64.min(video.duration - video.current_time);
            if !self.advance(step, target, args, deadline).await {
                return false;
            }
            video.current_time += step;
            session.time_played += step;
            session.content_watched = video.current_time.floor();
            since_ping += step;
            if since_ping >= 10.0 {
                since_ping = 0.0;
                self.media_event("ping_event", "{}", &video, &session, None, None);
            }
            let pct = video.current_time / video.duration * 100.0;
            for (i, b) in [10u32, 25, 50, 75].into_iter().enumerate() {
                if pct >= f64::from(b) && !video.boundaries_sent[i] {
                    video.boundaries_sent[i] = true;
                    let data = format!(r#"{{"percentProgress":{b}}}"#);
                    self.media_event(
                        "percent_progress_event",
                        &data,
                        &video,
                        &session,
                        None,
                        None,
                    );
                }
            }
            if pct >= 50.0 && !video.midroll_done {
                video.midroll_done = true;
                if self.rng.chance(0.6) {
                    self.media_event("pause_event", "{}", &video, &session, None, None);
                    if !self
                        .ad_break("midroll", &mut video, &mut session, target, args, deadline)
                        .await
                    {
                        return false;
                    }
                    self.media_event("play_event", "{}", &video, &session, None, None);
                }
            }
            if self.rng.chance(0.01) {
                video.paused = true;
                self.media_event("pause_event", "{}", &video, &session, None, None);
                let wait = self.rng.range(2, 20) as f64;
                if !self.advance(wait, target, args, deadline).await {
                    return false;
                }
                session.time_paused += wait;
                video.paused = false;
                self.media_event("play_event", "{}", &video, &session, None, None);
            }
            if self.rng.chance(0.005) {
                self.media_event("seek_start_event", "{}", &video, &session, None, None);
                video.current_time = (video.current_time + self.rng.range(5, 60) as f64)
                    .min(video.duration - 1.0)
                    .max(0.0);
                self.media_event("seek_end_event", "{}", &video, &session, None, None);
            }
            if self.rng.chance(0.003) {
                let previous = video.volume;
                video.volume = self.rng.range(0, 100) as u32;
                video.muted = video.volume == 0;
                let data = format!(
                    r#"{{"previousVolume":{previous},"newVolume":{}}}"#,
                    video.volume
                );
                self.media_event("volume_change_event", &data, &video, &session, None, None);
            }
        }
        video.ended = true;
        video.paused = true;
        self.media_event("end_event", "{}", &video, &session, None, None);
        self.advance(2.0, target, args, deadline).await
    }

    /// An ad break of one or two ads. False if the deadline passed.
    async fn ad_break(
        &mut self,
        name: &'static str,
        video: &mut Video,
        session: &mut Session,
        target: &Target,
        args: &Args,
        deadline: Instant,
    ) -> bool {
        let brk = AdBreak {
            id: self.rng.uuid(),
            name,
            start_time: video.current_time,
            pod_size: self.rng.range(1, 2) as u32,
        };
        session.ad_breaks += 1;
        self.media_event(
            "ad_break_start_event",
            "{}",
            video,
            session,
            None,
            Some(&brk),
        );
        for pos in 1..=brk.pod_size {
            let id = format!("{}", self.rng.range(100, 999));
            let dur = if self.rng.chance(0.5) { 15 } else { 30 };
            let skippable = self.rng.chance(0.5);
            let ad = Some((id.as_str(), pos, dur, skippable));
            session.ads += 1;
            self.media_event("ad_start_event", "{}", video, session, ad, Some(&brk));
            let skip_at = (skippable && self.rng.chance(0.4)).then_some(5.0);
            let click = self.rng.chance(0.05);
            let mut played = 0.0;
            let mut skipped = false;
            for q in [25u32, 50, 75] {
                let until = f64::from(dur) * f64::from(q) / 100.0;
                if let Some(s) = skip_at {
                    if until > s {
                        if !self.advance(s - played, target, args, deadline).await {
                            return false;
                        }
                        session.time_spent_ads += s - played;
                        played = s;
                        session.ads_skipped += 1;
                        let data = format!(
                            r#"{{"percentProgress":{}}}"#,
                            (s / f64::from(dur) * 100.0) as u32
                        );
                        self.media_event("ad_skip_event", &data, video, session, ad, Some(&brk));
                        skipped = true;
                        break;
                    }
                }
                if !self.advance(until - played, target, args, deadline).await {
                    return false;
                }
                session.time_spent_ads += until - played;
                played = until;
                let data = format!(r#"{{"percentProgress":{q}}}"#);
                self.media_event("ad_quartile_event", &data, video, session, ad, Some(&brk));
                if click && q == 25 {
                    session.ads_clicked += 1;
                    self.media_event(
                        "ad_click_event",
                        r#"{"percentProgress":25}"#,
                        video,
                        session,
                        ad,
                        Some(&brk),
                    );
                }
            }
            if !skipped {
                let rest = f64::from(dur) - played;
                if !self.advance(rest, target, args, deadline).await {
                    return false;
                }
                session.time_spent_ads += rest;
                self.media_event("ad_complete_event", "{}", video, session, ad, Some(&brk));
            }
        }
        self.media_event("ad_break_end_event", "{}", video, session, None, Some(&brk));
        true
    }

    /// The buffered events as one `payload_data` body, each with the send time `stm` (the
    /// emitter adds it when it sends); empties the buffer.
    fn take_body(&mut self) -> (Bytes, u64) {
        let stm = weir_snowplow::now_ms();
        let mut body =
            String::with_capacity(self.buffer.iter().map(|e| e.len() + 24).sum::<usize>() + 96);
        body.push_str(if self.platform() == Platform::Web {
            r#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":["#
        } else {
            r#"{"schema":"iglu:com.snowplowanalytics.snowplow\/payload_data\/jsonschema\/1-0-4","data":["#
        });
        for (i, e) in self.buffer.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&e[..e.len() - 1]);
            let _ = write!(body, r#","stm":"{stm}"}}"#);
        }
        body.push_str("]}");
        let events = self.buffer.len() as u64;
        self.buffer.clear();
        self.oldest_buffered = None;
        (Bytes::from(body), events)
    }

    /// Posts the buffered events as one `payload_data` request, retrying on 429/503.
    async fn send(&mut self, target: &Target, args: &Args) {
        if self.buffer.is_empty() {
            return;
        }
        let (body, events) = self.take_body();
        for attempt in 0..=args.retries {
            match self.post(target, body.clone()).await {
                Ok((status, retry_after)) => {
                    self.stats.requests += 1;
                    match status {
                        200..=299 => {
                            self.stats.ok += 1;
                            self.stats.events_accepted += events;
                            return;
                        }
                        429 | 503 => {
                            if status == 429 {
                                self.stats.s429 += 1;
                            } else {
                                self.stats.s503 += 1;
                            }
                            if attempt < args.retries {
                                tokio::time::sleep(retry_after.min(Duration::from_secs(5))).await;
                            }
                        }
                        _ => {
                            self.stats.other += 1;
                            break;
                        }
                    }
                }
                Err(_) => {
                    self.stats.connect_errors += 1;
                    self.conn = None;
                    if attempt < args.retries {
                        tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
                    }
                }
            }
        }
        self.stats.dropped += 1;
    }

    /// The POST of `body` with the headers the viewer's tracker (or its HTTP client) sends.
    fn request(&self, target: &Target, body: Bytes) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut req = Request::post(&target.path)
            .header("host", format!("{}:{}", target.host, target.port))
            .header("user-agent", &self.ua);
        req = match self.platform() {
            Platform::Web => req
                .header("content-type", "application/json; charset=UTF-8")
                .header("origin", "https://video.example.com")
                .header("referer", "https://video.example.com/"),
            // Native clients: no CORS, so no Origin or Referer.
            Platform::Android => req.header("content-type", "application/json; charset=utf-8"),
            Platform::Ios => req
                .header("content-type", "application/json; charset=utf-8")
                .header("accept", IOS_ACCEPT)
                .header("accept-language", "en-US,en;q=0.9"),
        };
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("sp={c}"));
        }
        if let Some(x) = &self.xff {
            req = req.header("x-forwarded-for", x);
        }
        Ok(req.body(Full::new(body))?)
    }

    async fn post(&mut self, target: &Target, body: Bytes) -> anyhow::Result<(u16, Duration)> {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            let stream =
                tokio::net::TcpStream::connect((target.connect_host(), target.port)).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.conn = Some(sender);
        }
        let req = self.request(target, body)?;
        let sender = self.conn.as_mut().expect("connected");
        sender.ready().await?;
        let t = Instant::now();
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after)
            .unwrap_or(Duration::from_secs(1));
        if let Some(c) = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.strip_prefix("sp="))
        {
            self.cookie = Some(c.to_string());
        }
        resp.into_body().collect().await?;
        self.stats
            .latencies_us
            .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        Ok((status, retry_after))
    }
}

/// ms since the epoch as RFC 3339 with milliseconds, e.g. `2024-11-16T13:33:22.625Z`.
fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A `Retry-After` value: delay-seconds or an HTTP date (the wait until then).
fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    match v.parse() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => {
            let at = httpdate::parse_http_date(v).ok()?;
            Some(
                at.duration_since(std::time::SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:9090").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9090, "/com.snowplowanalytics.snowplow/tp2")
        );
        let t = parse_url("http://collector.test/com.acme/track?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("collector.test", 80, "/com.acme/track?x=1")
        );
        let t = parse_url("http://[::1]:9090/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.connect_host(), t.port),
            ("[::1]", "::1", 9090)
        );
        for bad in [
            "https://x",
            "127.0.0.1:9090",
            "http://x:port",
            "http://",
            "",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps_and_retry_after() {
        assert_eq!(rfc3339(1_731_764_002_625), "2024-11-16T13:33:22.625Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO),
            "a date in the past: no wait"
        );
        let t0 = Instant::now();
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let wait = retry_after(&soon).unwrap();
        // HTTP dates have whole seconds: up to 1 s less, and less by the time this took.
        let least = Duration::from_secs(29).saturating_sub(t0.elapsed());
        assert!(
            (least..=Duration::from_secs(30)).contains(&wait),
            "{wait:?}"
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(extra: &[&str]) -> Args {
        args_for("http://127.0.0.1:9", extra)
    }

    fn args_for(url: &str, extra: &[&str]) -> Args {
        let mut argv = vec!["loadgen", url];
        argv.extend_from_slice(extra);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().args
    }

    /// A viewer of `platform` that has seen its first page or screen and watched one video,
    /// without sending anything; its buffered events.
    fn watched(platform: Platform, seed: u64, extra: &[&str]) -> (Viewer, Vec<String>) {
        let seed = seed.to_string();
        let mut argv = vec!["--speed", "0", "--batch", "1000000", "--seed", &seed];
        argv.extend_from_slice(extra);
        let args = args(&argv);
        let target = parse_url(&args.url).unwrap();
        let mut viewer = Viewer::new(3, &args, platform);
        viewer.first_view();
        let deadline = Instant::now() + Duration::from_secs(600);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(rt.block_on(viewer.play_video(1, &target, &args, deadline)));
        assert_eq!(viewer.stats.requests, 0, "nothing was sent");
        let events = viewer.buffer.clone();
        (viewer, events)
    }

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// The base64 of a mobile tracker, decoded with that tracker's alphabet and padding only.
    fn decode(platform: Platform, b64: &str) -> String {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let bytes = match platform {
            Platform::Android => STANDARD.decode(b64),
            _ => URL_SAFE_NO_PAD.decode(b64),
        };
        String::from_utf8(bytes.unwrap_or_else(|e| panic!("{platform:?} {e}: {b64}"))).unwrap()
    }

    /// The entities of an event, by schema name (`client_session`, `ad`, …), in order.
    fn entities(ctx: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
        ctx["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let schema = e["schema"].as_str().unwrap();
                let name = schema.split('/').nth(1).unwrap().to_string();
                (name, e["data"].clone())
            })
            .collect()
    }

    fn check_mobile_events(platform: Platform, events: &[String]) {
        let ios = platform == Platform::Ios;
        assert!(events.len() > 20, "{}", events.len());
        let mut session = None;
        let mut first_ids = Vec::new();
        let mut b64_chars = String::new();
        for (i, raw) in events.iter().enumerate() {
            assert!(
                !raw.contains("iglu:com.snowplowanalytics.snowplow/"),
                "`/` is escaped as in org.json / JSONSerialization: {raw}"
            );
            let ev = json(raw);
            let ev = ev.as_object().unwrap();
            assert_eq!(ev["p"], "mob");
            assert_eq!(ev["e"], "ue");
            let (tv, lang) = if ios {
                ("ios-6.2.5", "en-US")
            } else {
                ("andr-6.3.2", "English")
            };
            assert_eq!(
                (ev["tv"].as_str(), ev["lang"].as_str()),
                (Some(tv), Some(lang))
            );
            for key in ["eid", "dtm", "tz", "res", "aid", "ue_px", "cx"] {
                assert!(ev.contains_key(key), "{key} in {raw}");
            }
            assert_eq!(ev.contains_key("vp"), ios, "only iOS sets vp");
            for key in [
                "duid", "sid", "vid", "url", "page", "cookie", "cs", "ds", "co",
            ] {
                assert!(!ev.contains_key(key), "no {key} in {raw}");
            }
            let eid = ev["eid"].as_str().unwrap();
            let case = if ios {
                eid.to_uppercase()
            } else {
                eid.to_lowercase()
            };
            assert_eq!(eid, case);
            first_ids.push(eid.to_string());
            b64_chars.push_str(ev["cx"].as_str().unwrap());

            let ue_text = decode(platform, ev["ue_px"].as_str().unwrap());
            assert!(ue_text.contains(r"unstruct_event\/jsonschema"), "{ue_text}");
            let ue = json(&ue_text);
            let event_schema = ue["data"]["schema"].as_str().unwrap().to_string();
            let cx_text = decode(platform, ev["cx"].as_str().unwrap());
            let cx = json(&cx_text);
            assert_eq!(
                cx["schema"],
                "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1"
            );
            let ents = entities(&cx);
            let names: Vec<&str> = ents.iter().map(|(n, _)| n.as_str()).collect();
            let get = |n: &str| &ents.iter().find(|(m, _)| m == n).unwrap().1;
            for n in [
                "client_session",
                "mobile_context",
                "application",
                "screen",
                "application_lifecycle",
            ] {
                assert!(names.contains(&n), "{n} in {names:?}");
            }
            assert!(!names.contains(&"web_page"));
            let cs = get("client_session");
            assert_eq!(cs["eventIndex"], i as u64 + 2, "event {i}: {cs}");
            assert_eq!(cs["storageMechanism"], "LOCAL_STORAGE");
            let id = (
                cs["userId"].clone(),
                cs["sessionId"].clone(),
                cs["sessionIndex"].clone(),
                cs["firstEventId"].clone(),
                cs["firstEventTimestamp"].clone(),
            );
            assert!(id.0.is_string() && id.1.is_string() && id.2.is_u64());
            assert_eq!(session.get_or_insert_with(|| id.clone()), &id);
            if cs["sessionIndex"] == 1 {
                assert_eq!(cs.get("previousSessionId").is_none(), ios, "{cs}");
            }
            let mc = get("mobile_context");
            assert_eq!(mc["osType"], if ios { "ios" } else { "android" });
            assert!(["wifi", "mobile"].contains(&mc["networkType"].as_str().unwrap()));
            let models: Vec<&str> = if ios {
                &IOS_DEVICES[..]
            } else {
                &ANDROID_DEVICES[..]
            }
            .iter()
            .map(|d| d.model)
            .collect();
            assert!(models.contains(&mc["deviceModel"].as_str().unwrap()));
            assert!(get("application")["build"].is_string());
            // The tracker's entities follow the event's own (media) entities, in its order.
            let tracker_order: &[&str] = if ios {
                &["mobile_context", "application", "client_session", "screen"]
            } else {
                &["client_session", "application", "mobile_context", "screen"]
            };
            let tail = &names[names.len() - 5..];
            assert_eq!(&tail[..4], tracker_order, "{names:?}");
            assert_eq!(tail[4], "application_lifecycle");
            if i == 0 {
                assert_eq!(
                    event_schema,
                    "iglu:com.snowplowanalytics.mobile/screen_view/jsonschema/1-0-0"
                );
                assert_eq!(ue["data"]["data"]["id"], get("screen")["id"]);
                assert_eq!(names.len(), 5, "no media entities on the screen view");
            } else {
                assert!(event_schema.starts_with("iglu:com.snowplowanalytics.snowplow.media/"));
                assert_eq!(names[..2], ["media_player", "session"]);
                let ad = names.iter().position(|n| *n == "ad");
                let brk = names.iter().position(|n| *n == "ad_break");
                if let (Some(ad), Some(brk)) = (ad, brk) {
                    assert_eq!(brk < ad, ios, "iOS puts the ad break first: {names:?}");
                }
            }
        }
        let (_, _, _, first_event_id, _) = session.unwrap();
        assert!(
            !first_ids.iter().any(|e| *e == first_event_id),
            "the first event of the session (a dropped screen_end) is never sent"
        );
        let padded_or_std = b64_chars.contains(['+', '/', '=']);
        assert_eq!(padded_or_std, !ios, "Android: standard alphabet, padded");
    }

    #[test]
    fn android_viewers_send_as_the_android_tracker() {
        let (viewer, events) = watched(Platform::Android, 1, &[]);
        assert!(viewer.ua.starts_with("snowplow/andr-6.3.2 android/1"));
        check_mobile_events(Platform::Android, &events);
    }

    #[test]
    fn ios_viewers_send_as_the_ios_tracker() {
        let (viewer, events) = watched(Platform::Ios, 1, &[]);
        assert_eq!(viewer.ua, IOS_USER_AGENT);
        check_mobile_events(Platform::Ios, &events);
    }

    #[test]
    fn mobile_viewers_vary_with_the_seed() {
        let mut models = std::collections::BTreeSet::new();
        for seed in 1..=12 {
            for platform in [Platform::Android, Platform::Ios] {
                let v = Viewer::new(seed, &args(&[]), platform);
                let Client::App(a) = &v.client else {
                    panic!("an app")
                };
                models.insert(a.device.model);
            }
        }
        assert!(models.len() >= 5, "{models:?}");
    }

    #[test]
    fn plain_mobile_events_have_co_and_ue_pr() {
        let (_, events) = watched(Platform::Android, 2, &["--plain"]);
        for raw in &events {
            let ev = json(raw);
            assert!(ev.get("cx").is_none() && ev.get("ue_px").is_none());
            let co = ev["co"].as_str().unwrap();
            assert!(co.contains(r"contexts\/jsonschema\/1-0-1"), "{co}");
            assert!(json(co)["data"].as_array().unwrap().len() >= 5);
            assert!(json(ev["ue_pr"].as_str().unwrap())["data"]["schema"].is_string());
        }
    }

    #[test]
    fn web_viewers_send_as_the_js_tracker() {
        let (_, events) = watched(Platform::Web, 1, &[]);
        for raw in &events {
            let ev = json(raw);
            assert_eq!(
                (ev["p"].as_str(), ev["tv"].as_str()),
                (Some("web"), Some("js-4.10.2"))
            );
            assert!(ev["duid"].is_string() && ev["url"].is_string());
            let cx = json(&decode(Platform::Ios, ev["cx"].as_str().unwrap()));
            assert_eq!(
                cx["schema"],
                "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"
            );
            let names: Vec<String> = entities(&cx).into_iter().map(|(n, _)| n).collect();
            assert_eq!(names.last().map(String::as_str), Some("web_page"));
            assert!(!names.iter().any(|n| n == "client_session"));
        }
        assert_eq!(json(&events[0])["e"], "pv");
    }

    /// Every platform's request converts as Snowplow Enrich would, one enriched line per event.
    #[test]
    fn requests_convert_to_enriched_events() {
        for (platform, p) in [
            (Platform::Web, "web"),
            (Platform::Android, "mob"),
            (Platform::Ios, "mob"),
        ] {
            for plain in [false, true] {
                let (mut viewer, events) =
                    watched(platform, 4, if plain { &["--plain"] } else { &[] });
                let (body, n) = viewer.take_body();
                assert_eq!(n as usize, events.len());
                let body = std::str::from_utf8(&body).unwrap();
                let stm = json(body)["data"][0]["stm"].clone();
                assert!(stm.is_string());
                let payload = weir_snowplow::collector_payload::CollectorPayload {
                    schema: "iglu:com.snowplowanalytics.snowplow/CollectorPayload/thrift/1-0-0"
                        .into(),
                    ip_address: "198.18.0.4".into(),
                    timestamp: weir_snowplow::now_ms(),
                    encoding: "UTF-8".into(),
                    collector: "test".into(),
                    user_agent: Some(viewer.ua.clone().into()),
                    path: Some(weir_snowplow::tracker::TP2_PATH.into()),
                    body: Some(body.into()),
                    content_type: Some("application/json; charset=utf-8".into()),
                    ..Default::default()
                };
                let (mut out, mut ends) = (Vec::new(), Vec::new());
                weir_snowplow::tracker::convert(
                    &payload,
                    &Default::default(),
                    0,
                    &mut out,
                    &mut ends,
                )
                .unwrap_or_else(|e| panic!("{platform:?} plain {plain}: {e}"));
                assert_eq!(ends.len(), events.len());
                let text = String::from_utf8(out).unwrap();
                for line in text.lines() {
                    assert_eq!(line.split('\t').nth(1), Some(p), "platform of {line}");
                    assert_eq!(
                        line.contains("client_session"),
                        platform != Platform::Web,
                        "{line}"
                    );
                }
            }
        }
    }

    #[test]
    fn headers_follow_the_platform() {
        let target = parse_url("http://collector.test:9090").unwrap();
        for (platform, ct, origin, accept) in [
            (
                Platform::Web,
                "application/json; charset=UTF-8",
                true,
                false,
            ),
            (
                Platform::Android,
                "application/json; charset=utf-8",
                false,
                false,
            ),
            (
                Platform::Ios,
                "application/json; charset=utf-8",
                false,
                true,
            ),
        ] {
            let mut v = Viewer::new(0, &args(&[]), platform);
            v.cookie = Some("abc".into());
            let req = v.request(&target, Bytes::new()).unwrap();
            let h = req.headers();
            assert_eq!(req.uri().path(), "/com.snowplowanalytics.snowplow/tp2");
            assert_eq!(h["content-type"], ct);
            assert_eq!(h["user-agent"], v.ua.as_str());
            assert_eq!(h["cookie"], "sp=abc", "every client sends the cookie back");
            assert_eq!(h.contains_key("origin"), origin);
            assert_eq!(h.contains_key("referer"), origin);
            assert_eq!(h.contains_key("accept"), accept);
        }
    }

    #[test]
    fn the_mobile_share_is_that_of_viewers() {
        for seed in [1, 2, 99] {
            for (viewers, share) in [(1000, 0.0), (1000, 0.3), (1000, 0.5), (7, 1.0), (10, 0.25)] {
                let p = platforms(seed, viewers, share);
                assert_eq!(p, platforms(seed, viewers, share), "deterministic");
                let android = p.iter().filter(|p| **p == Platform::Android).count();
                let ios = p.iter().filter(|p| **p == Platform::Ios).count();
                let expected = (viewers as f64 * share).round() as usize;
                assert_eq!(android + ios, expected, "{seed} {viewers} {share}");
                assert!(android - ios <= 1, "half each: {android} {ios}");
            }
        }
        // Which viewers are mobile depends on the seed, and is spread over the indexes.
        let (a, b) = (platforms(1, 1000, 0.3), platforms(2, 1000, 0.3));
        assert_ne!(a, b);
        let first_half = a[..500].iter().filter(|p| **p != Platform::Web).count();
        assert!((100..=200).contains(&first_half), "{first_half}");
    }

    #[test]
    fn the_mobile_share_must_be_a_fraction() {
        assert_eq!(args(&[]).mobile, 0.0);
        assert_eq!(args(&["--mobile", "0.25"]).mobile, 0.25);
        assert_eq!(args(&["--mobile", "1"]).mobile, 1.0);
        assert_eq!(args(&["--mobile=0.5"]).mobile, 0.5);
        for bad in ["1.5", "-0.1", "NaN", "inf", "half", ""] {
            let err = <Cli as clap::Parser>::try_parse_from([
                "loadgen",
                "http://127.0.0.1:9",
                "--mobile",
                bad,
            ])
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"))
            .to_string();
            assert!(err.contains("expected a fraction from 0.0 to 1.0"), "{err}");
        }
        let mut a = args(&[]);
        a.mobile = 1.01;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(run(a)).unwrap_err().to_string();
        assert!(err.contains("--mobile") && err.contains("1.01"), "{err}");
    }

    /// A run against a minimal HTTP/1.1 endpoint that sets the `sp` cookie: mobile viewers are
    /// counted, and post what their trackers post.
    #[tokio::test]
    async fn a_run_with_mobile_viewers() {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
        let server = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let mut stream = BufReader::new(stream);
                        loop {
                            let mut head = String::new();
                            loop {
                                let mut line = String::new();
                                if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if line == "\r\n" {
                                    break;
                                }
                                head.push_str(&line.to_ascii_lowercase());
                            }
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse().unwrap());
                            let mut body = vec![0; len];
                            stream.read_exact(&mut body).await.unwrap();
                            seen.lock()
                                .unwrap()
                                .push((head, String::from_utf8(body).unwrap()));
                            let resp = "HTTP/1.1 200 OK\r\nset-cookie: sp=c0ffee; Path=/\r\ncontent-length: 2\r\n\r\nok";
                            stream.get_mut().write_all(resp.as_bytes()).await.unwrap();
                        }
                    });
                }
            })
        };
        let url = format!("http://{addr}");
        let a = args_for(
            &url,
            &[
                "--viewers",
                "6",
                "--mobile",
                "0.5",
                "--speed",
                "0",
                "--duration",
                "300ms",
                "--batch",
                "4",
            ],
        );
        let report = run(a).await.unwrap();
        server.abort();
        assert_eq!((report.viewers, report.mobile_viewers), (6, 3));
        assert!(report.status_2xx > 0 && report.events_accepted > 0);
        let seen = seen.lock().unwrap();
        let mut kinds = std::collections::BTreeMap::new();
        for (head, body) in seen.iter() {
            let kind = if head.contains("user-agent: snowplow/andr-6.3.2 android/") {
                "android"
            } else if head.contains("user-agent: mediademo/42 cfnetwork") {
                "ios"
            } else {
                assert!(head.contains("user-agent: mozilla/5.0"), "{head}");
                "web"
            };
            *kinds.entry(kind).or_insert(0) += 1;
            let body = json(body);
            let p = body["data"][0]["p"].as_str().unwrap();
            assert_eq!(p == "mob", kind != "web", "{kind}: {body}");
            assert_eq!(head.contains("origin:"), kind == "web");
            // (Lowercased: the browser's `UTF-8` too.)
            assert!(
                head.contains("content-type: application/json; charset=utf-8"),
                "{head}"
            );
        }
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        assert!(
            seen.iter()
                .any(|(h, _)| h.contains("mediademo") && h.contains("cookie: sp=c0ffee")),
            "the cookie comes back"
        );
    }

    #[test]
    fn rng_is_seeded() {
        let (mut a, mut b) = (Rng(5), Rng(5));
        assert_eq!(a.uuid(), b.uuid());
        assert!((0..1000)
            .map(|_| a.range(1, 2))
            .all(|n| (1..=2).contains(&n)));
    }
}
