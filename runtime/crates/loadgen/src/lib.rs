//! `weir loadgen`: simulated viewers watching videos, tracked the way the Snowplow JavaScript
//! tracker with the media plugin (v2) tracks them, posted to a collector endpoint. For demos (in
//! real time, or sped up) and for benchmarks (`--speed 0`: as fast as the endpoint answers).
//!
//! Each viewer is one browser: one keep-alive connection, its own `sp` cookie (sent back like a
//! browser would), domain user id, session and, for half of them, a user id. It views a page, then
//! watches videos one after another. Per video, a media session as the media plugin reports it:
//! `ready`, an optional pre-roll ad break (`ad_break_start`, per ad `ad_start`, quartiles, then
//! `ad_complete`, or `ad_skip` after 5 s when skippable, sometimes `ad_click`; `ad_break_end`),
//! `play`, a `ping` every 10 s of playback, `percent_progress` at 10/25/50/75 %, random pauses,
//! seeks, volume changes, a mid-roll break at half-time, `end`; plus page pings. Every media event
//! carries the `media_player` (2-0-0) and media `session` entities, `ad` / `ad_break` during ads,
//! and `web_page`. Events are batched into `tp2` POSTs (`--batch`), with `ue_px` / `cx` in URL-safe
//! base64 as the JS tracker's `encodeBase64` writes them (`--plain` for `ue_pr` / `co`).
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
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub seconds: f64,
    pub viewers: usize,
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
                println!(
                    "{} viewers, {:.1} s: {} requests ({:.0}/s), {} events accepted ({:.0}/s) of {} generated\n\
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
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut tasks = Vec::with_capacity(args.viewers);
    for v in 0..args.viewers {
        let args = args.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut viewer = Viewer::new(v, &args);
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

struct Viewer {
    index: usize,
    rng: Rng,
    duid: String,
    sid: String,
    vid: u32,
    uid: Option<String>,
    page_id: String,
    url: String,
    ua: &'static str,
    xff: Option<String>,
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
    last_ping_page: i64,
}

impl Viewer {
    fn new(index: usize, args: &Args) -> Self {
        let mut rng = Rng(args
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(index as u64 * 7919));
        let now_ms = weir_snowplow::now_ms();
        let duid = rng.uuid();
        let sid = rng.uuid();
        let page_id = rng.uuid();
        let uid = rng
            .chance(0.5)
            .then(|| format!("viewer-{index}@example.com"));
        let ua = USER_AGENTS[index % USER_AGENTS.len()];
        let xff = args
            .forwarded_for
            .then(|| format!("198.18.{}.{}", (index / 250) % 256, index % 250 + 1));
        Viewer {
            index,
            duid,
            sid,
            vid: 1,
            uid,
            page_id,
            url: format!(
                "https://video.example.com/watch?v={}&ref=home",
                rng.range(1000, 9999)
            ),
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
            last_ping_page: now_ms,
            rng,
        }
    }

    /// Plays videos until the deadline, then sends what is buffered.
    async fn watch(&mut self, target: &Target, args: &Args, deadline: Instant) {
        self.page_view();
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

    fn common(&self, e: &str, out: &mut String) {
        let _ = write!(
            out,
            r#""e":"{e}","eid":"{eid}","tv":"js-4.10.2","tna":"sp","aid":"weir-loadgen","p":"web","cookie":"1","cs":"UTF-8","lang":"en-US","res":"1920x1080","cd":"24","tz":"Europe/Lisbon","dtm":"{dtm}","vp":"1280x720","ds":"1280x2400","vid":"{vid}","sid":"{sid}","duid":"{duid}","url":"{url}""#,
            eid = uuid::Uuid::new_v4(),
            dtm = self.clock_ms,
            vid = self.vid,
            sid = self.sid,
            duid = self.duid,
            url = self.url,
        );
        if let Some(uid) = &self.uid {
            let _ = write!(out, r#","uid":"{uid}""#);
        }
    }

    /// Adds a self-describing JSON parameter (`ue_px`/`ue_pr` or `cx`/`co`) to an event.
    fn sdj_param(&self, plain: &str, encoded: &str, json: &str, out: &mut String) {
        if self.plain {
            let _ = write!(out, r#","{plain}":{}"#, serde_json::Value::from(json));
        } else {
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
            let _ = write!(out, r#","{encoded}":"{b64}""#);
        }
    }

    fn web_page(&self) -> String {
        format!(
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0","data":{{"id":"{}"}}}}"#,
            self.page_id
        )
    }

    fn page_view(&mut self) {
        let mut ev = String::with_capacity(1024);
        ev.push('{');
        self.common("pv", &mut ev);
        ev.push_str(r#","page":"Watch – weir demo","refr":"https://www.example.com/""#);
        let ctx = format!(
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":[{}]}}"#,
            self.web_page()
        );
        self.sdj_param("co", "cx", &ctx, &mut ev);
        ev.push('}');
        self.push(ev);
    }

    fn page_ping(&mut self) {
        let mut ev = String::with_capacity(1024);
        ev.push('{');
        self.common("pp", &mut ev);
        let _ = write!(
            ev,
            r#","page":"Watch – weir demo","pp_mix":"0","pp_max":"0","pp_miy":"0","pp_may":"{}""#,
            self.rng.range(0, 1200)
        );
        let ctx = format!(
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":[{}]}}"#,
            self.web_page()
        );
        self.sdj_param("co", "cx", &ctx, &mut ev);
        ev.push('}');
        self.push(ev);
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
        let mut ev = String::with_capacity(3072);
        ev.push('{');
        self.common("ue", &mut ev);
        let ue = format!(
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0","data":{{"schema":"iglu:com.snowplowanalytics.snowplow.media/{name}/jsonschema/1-0-0","data":{data}}}}}"#
        );
        self.sdj_param("ue_pr", "ue_px", &ue, &mut ev);
        let mut ctx = String::with_capacity(2048);
        let _ = write!(
            ctx,
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":[{{"schema":"iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/2-0-0","data":{{"currentTime":{ct:.3},"duration":{dur:.3},"ended":{ended},"paused":{paused},"label":"{label}","mediaType":"video","playerType":"org.whatwg-media_element","muted":{muted},"loop":false,"playbackRate":1,"volume":{volume},"fullscreen":false,"pictureInPicture":false,"livestream":false,"quality":"720p"}}}},{{"schema":"iglu:com.snowplowanalytics.snowplow.media/session/jsonschema/1-0-0","data":{{"mediaSessionId":"{sid}","startedAt":"{started}","pingInterval":10,"timePlayed":{tp:.3},"timePlayedMuted":0,"timePaused":{tpa:.3},"contentWatched":{cw:.0},"timeBuffering":0,"timeSpentAds":{tsa:.3},"ads":{ads},"adsClicked":{adc},"adsSkipped":{ads_s},"adBreaks":{ab},"avgPlaybackRate":1}}}}"#,
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
        if let Some((id, pos, dur, skippable)) = ad {
            let _ = write!(
                ctx,
                r#",{{"schema":"iglu:com.snowplowanalytics.snowplow.media/ad/jsonschema/1-0-0","data":{{"adId":"{id}","name":"Spot {id}","creativeId":"cr-{id}","podPosition":{pos},"duration":{dur},"skippable":{skippable}}}}}"#
            );
        }
        if let Some(b) = ad_break {
            let _ = write!(
                ctx,
                r#",{{"schema":"iglu:com.snowplowanalytics.snowplow.media/ad_break/jsonschema/1-0-0","data":{{"breakId":"{}","startTime":{:.3},"name":"{}","breakType":"linear","podSize":{}}}}}"#,
                b.id, b.start_time, b.name, b.pod_size
            );
        }
        let _ = write!(ctx, ",{}]}}", self.web_page());
        self.sdj_param("co", "cx", &ctx, &mut ev);
        ev.push('}');
        self.push(ev);
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
        if self.clock_ms - self.last_ping_page >= 30_000 {
            self.last_ping_page = self.clock_ms;
            self.page_ping();
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

    /// Posts the buffered events as one `payload_data` request, retrying on 429/503.
    async fn send(&mut self, target: &Target, args: &Args) {
        if self.buffer.is_empty() {
            return;
        }
        let stm = weir_snowplow::now_ms();
        let mut body =
            String::with_capacity(self.buffer.iter().map(|e| e.len() + 24).sum::<usize>() + 96);
        body.push_str(
            r#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":["#,
        );
        for (i, e) in self.buffer.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            // Every event gets the send time, as the tracker adds `stm` when it sends.
            body.push_str(&e[..e.len() - 1]);
            let _ = write!(body, r#","stm":"{stm}"}}"#);
        }
        body.push_str("]}");
        let events = self.buffer.len() as u64;
        self.buffer.clear();
        self.oldest_buffered = None;
        let body = Bytes::from(body);
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
        let sender = self.conn.as_mut().expect("connected");
        sender.ready().await?;
        let mut req = Request::post(&target.path)
            .header("host", format!("{}:{}", target.host, target.port))
            .header("content-type", "application/json; charset=UTF-8")
            .header("user-agent", self.ua)
            .header("origin", "https://video.example.com")
            .header("referer", "https://video.example.com/");
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("sp={c}"));
        }
        if let Some(x) = &self.xff {
            req = req.header("x-forwarded-for", x);
        }
        let req = req.body(Full::new(body))?;
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

    #[test]
    fn rng_is_seeded() {
        let (mut a, mut b) = (Rng(5), Rng(5));
        assert_eq!(a.uuid(), b.uuid());
        assert!((0..1000)
            .map(|_| a.range(1, 2))
            .all(|n| (1..=2).contains(&n)));
    }
}
