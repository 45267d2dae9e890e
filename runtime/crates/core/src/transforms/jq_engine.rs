//! The jq engine behind the `jq` and `jqFilter` transforms: Snowbridge 5.x's `jq_common.go` on
//! jaq (a maintained Rust jq implementation) instead of gojq.
//!
//! Per record, as Snowbridge does: the input is the record's JSON object (or, with
//! `snowplow_mode`, the enriched TSV turned into the analytics-SDK JSON by
//! [`crate::snowplow::to_json`]); only the program's **first** output counts; no output, an
//! error, or a run longer than `timeout_ms` fails the record. The helpers Snowbridge adds are
//! native jaq filters here: `epoch`, `epochMillis` (optional Go time layout, default
//! `2006-01-02T15:04:05.999Z`) and `hash(algorithm; salt)` (PBKDF2, 1000 rounds, 24 bytes, hex).
//! Outputs are written as Go's `json.Marshal` writes gojq's values (keys sorted, `<>&` escaped,
//! floats in Go's notation).
//!
//! **Timeout.** jaq cannot be interrupted from inside. Each transform instance evaluates on its
//! own thread (started on first use, 256 MiB stack); the transform thread waits for the result
//! at most `timeout_ms`. On time-out the record fails with Snowbridge's `context deadline
//! exceeded`, and the evaluating thread is abandoned — a fresh one serves the next record, so
//! the pipeline never hangs. The abandoned thread stops when its evaluation ends; one that never
//! ends (`def f: f; f`, `[repeat(1)]`) keeps a core busy until weir stops. At most
//! [`MAX_STUCK`] abandoned runs of one instance may be going at once: past that, records fail
//! at once ("jq query not run") until one ends, rather than starting ever more busy threads. A program that
//! recurses deeper than the thread's stack (`def f: 1 + f; f`) aborts weir, as it would crash
//! jaq's own CLI: gojq keeps its stack on the heap, so Snowbridge times out there instead.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jaq_core::data::JustLut;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::native::{bome, Filter};
use jaq_core::{Ctx, Error, RunPtr, ValR, Vars};
use jaq_json::{Num, Val};

use super::go_time;
use crate::config::{ConfigError, Origin};

type D = JustLut<Val>;
type Program = jaq_core::Filter<D>;

/// What is done with the program's first output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `jq`: nulls and empty objects/arrays removed, the JSON becomes the record's value.
    Map,
    /// `jqFilter`: the output must be a boolean: keep the record when true.
    Filter,
}

/// The result of one record.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Data(Vec<u8>),
    Keep(bool),
}

/// Snowbridge's message for a run that outlived `timeout_ms` (Go's `context.DeadlineExceeded`).
pub const DEADLINE: &str = "jq output is an error: context deadline exceeded";

/// Parses and compiles `code` with Snowbridge's helpers. Errors say what jaq found where.
pub fn compile(code: &str) -> Result<Program, String> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .chain(
            helpers()
                .into_vec()
                .into_iter()
                .map(jaq_core::native::run::<D>),
        );
    let loader = Loader::new(defs);
    let arena = Arena::default();
    // jaq reports a slice of the program: say what it found and where (gojq says
    // `unexpected token "^"`).
    let at = |s: &str| {
        let off = (s.as_ptr() as usize).wrapping_sub(code.as_ptr() as usize);
        let token: String = match s.chars().next() {
            None => return "unexpected end of program".to_string(),
            Some(c) if c.is_alphanumeric() || c == '_' => s
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect(),
            Some(c) => c.to_string(),
        };
        if off <= code.len() {
            let line = code[..off].matches('\n').count() + 1;
            let col = code[..off]
                .rsplit('\n')
                .next()
                .map_or(0, |l| l.chars().count())
                + 1;
            format!("unexpected token {token:?} at line {line}, column {col}")
        } else {
            format!("unexpected token {token:?}")
        }
    };
    let modules = loader
        .load(&arena, File { code, path: () })
        .map_err(|errs| {
            let mut out = Vec::new();
            for (_, e) in errs {
                match e {
                    jaq_core::load::Error::Io(v) => {
                        out.extend(v.into_iter().map(|(p, m)| format!("{p}: {m}")))
                    }
                    jaq_core::load::Error::Lex(v) => out.extend(
                        v.into_iter()
                            .map(|(exp, s)| format!("{} (expected {})", at(s), exp.as_str())),
                    ),
                    jaq_core::load::Error::Parse(v) => out.extend(
                        v.into_iter()
                            .map(|(exp, s)| format!("{} (expected {})", at(s), exp.as_str())),
                    ),
                }
            }
            format!("error parsing jq command: {}", out.join("; "))
        })?;
    jaq_core::Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errs| {
            let out: Vec<String> = errs
                .into_iter()
                .flat_map(|(_, v)| v)
                .map(|(name, undef)| match undef {
                    jaq_core::compile::Undefined::Filter(n) => {
                        format!("function not defined: {name}/{n}")
                    }
                    other => format!("{} not defined: {name}", other.as_str()),
                })
                .collect();
            format!("error compiling jq query: {}", out.join("; "))
        })
}

/// Checks `jq_command` at config time: a program that does not compile is a config error.
pub fn check(code: &str, origin: &Origin) -> Result<(), ConfigError> {
    compile(code)
        .map(drop)
        .map_err(|e| origin.error("jq_command", format!("expected a jq program: {e}")))
}

// --- Snowbridge's helpers ---------------------------------------------------------------------

fn err(msg: impl Into<String>) -> Error<Val> {
    Error::new(Val::from(msg.into()))
}

fn text(v: &Val) -> Option<String> {
    match v {
        Val::TStr(b) | Val::BStr(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// Go's `%v` of a value, near enough for messages.
fn go_v(v: &Val) -> String {
    text(v).unwrap_or_else(|| v.to_string())
}

fn epoch(input: Val, layout: Option<Val>, millis: bool) -> ValR<Val> {
    if matches!(input, Val::Null) {
        return Ok(Val::Null);
    }
    let Some(s) = text(&input) else {
        return Err(err(format!(
            "not a valid time input to 'epochMillis' function - '{}'; expected string or \
             time.Time",
            go_v(&input)
        )));
    };
    let layout = match layout {
        None => "2006-01-02T15:04:05.999Z".to_string(),
        Some(l) => text(&l).ok_or_else(|| {
            err(format!(
                "function argument is invalid '{}'; expected string",
                go_v(&l)
            ))
        })?,
    };
    let t = go_time::parse(&layout, &s).map_err(|()| {
        err(format!(
            "could not parse input - '{s}' using provided time layout - '{layout}'"
        ))
    })?;
    let n = if millis { t.millis() } else { t.secs };
    Ok(Val::Num(Num::from_integral(n)))
}

/// Snowbridge's `DoHashing`: PBKDF2-HMAC with `algorithm`, 1000 rounds, 24 bytes, as hex.
pub fn do_hashing(input: &str, algorithm: &str, salt: &str) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut out = [0u8; 24];
    let (p, s) = (input.as_bytes(), salt.as_bytes());
    match algorithm {
        "sha1" => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(p, s, 1000, &mut out),
        "sha256" => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(p, s, 1000, &mut out),
        "md5" => pbkdf2::pbkdf2_hmac::<md5::Md5>(p, s, 1000, &mut out),
        other => return Err(format!("unsupported hash function: [{other}]")),
    }
    let mut hex = String::with_capacity(48);
    for b in out {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

fn hash(input: Val, params: &[Val]) -> ValR<Val> {
    if matches!(input, Val::Null) {
        return Ok(Val::Null);
    }
    let Some(s) = text(&input) else {
        return Err(err("hash function input must be a string"));
    };
    let [algo, salt] = params else {
        return Err(err(format!(
            "[{}] parameters given, hash function expecting 2: hash function name and salt",
            params.len()
        )));
    };
    // (Go type-asserts both without checking and would panic on a non-string.)
    let (Some(algo), Some(salt)) = (text(algo), text(salt)) else {
        return Err(err("hash function name and salt must be strings"));
    };
    do_hashing(&s, &algo, &salt).map(Val::from).map_err(err)
}

fn helpers() -> Box<[Filter<RunPtr<D>>]> {
    let v = jaq_core::native::v;
    Box::new([
        ("epoch", v(0), |cv| bome(epoch(cv.1, None, false))),
        ("epoch", v(1), |mut cv| {
            let l = cv.0.pop_var();
            bome(epoch(cv.1, Some(l), false))
        }),
        ("epochMillis", v(0), |cv| bome(epoch(cv.1, None, true))),
        ("epochMillis", v(1), |mut cv| {
            let l = cv.0.pop_var();
            bome(epoch(cv.1, Some(l), true))
        }),
        ("hash", v(0), |cv| bome(hash(cv.1, &[]))),
        ("hash", v(1), |mut cv| {
            let a = cv.0.pop_var();
            bome(hash(cv.1, &[a]))
        }),
        ("hash", v(2), |mut cv| {
            let salt = cv.0.pop_var();
            let algo = cv.0.pop_var();
            bome(hash(cv.1, &[algo, salt]))
        }),
    ])
}

// --- input and output -------------------------------------------------------------------------

fn to_val(v: serde_json::Value) -> Val {
    use serde_json::Value as J;
    match v {
        J::Null => Val::Null,
        J::Bool(b) => Val::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Val::Num(Num::from_integral(i)),
            None => Val::Num(Num::Float(n.as_f64().unwrap_or(f64::NAN))),
        },
        J::String(s) => Val::from(s),
        J::Array(a) => a.into_iter().map(to_val).collect(),
        J::Object(o) => Val::obj(
            o.into_iter()
                .map(|(k, v)| (Val::from(k), to_val(v)))
                .collect(),
        ),
    }
}

/// Snowbridge's input: the record must be one JSON object (Go: `json.Unmarshal` into
/// `map[string]any`).
fn input(json: &[u8]) -> Result<Val, String> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let kind = match &v {
        serde_json::Value::Object(_) => return Ok(to_val(v)),
        serde_json::Value::Array(_) => "array",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Null => return Ok(Val::obj(Default::default())),
    };
    Err(format!(
        "json: cannot unmarshal {kind} into Go value of type map[string]interface {{}}"
    ))
}

trait PipeRc {
    fn pipe_rc(self) -> jaq_json::Rc<Vec<Val>>;
}
impl PipeRc for Vec<Val> {
    fn pipe_rc(self) -> jaq_json::Rc<Vec<Val>> {
        jaq_json::Rc::new(self)
    }
}

fn is_empty(v: &Val) -> bool {
    match v {
        Val::Null => true,
        Val::Arr(a) => a.is_empty(),
        Val::Obj(o) => o.is_empty(),
        _ => false,
    }
}

/// Snowbridge's `RemoveNullFields`: drops nulls, empty objects and empty arrays, in objects and
/// arrays, bottom-up.
pub fn remove_nulls(v: Val) -> Val {
    match v {
        Val::Arr(a) => Val::Arr(
            a.iter()
                .cloned()
                .map(remove_nulls)
                .filter(|x| !is_empty(x))
                .collect::<Vec<_>>()
                .pipe_rc(),
        ),
        Val::Obj(o) => Val::obj(
            o.iter()
                .map(|(k, x)| (k.clone(), remove_nulls(x.clone())))
                .filter(|(_, x)| !is_empty(x))
                .collect(),
        ),
        v => v,
    }
}

fn go_float(f: f64, out: &mut Vec<u8>) -> Result<(), String> {
    if !f.is_finite() {
        return Err(format!(
            "json: unsupported value: {}",
            if f.is_nan() {
                "NaN".to_string()
            } else if f > 0.0 {
                "+Inf".to_string()
            } else {
                "-Inf".to_string()
            }
        ));
    }
    let a = f.abs();
    if a != 0.0 && !(1e-6..1e21).contains(&a) {
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => out.extend(format!("{m}e+{e}").bytes()),
            _ => out.extend(s.bytes()),
        }
    } else {
        out.extend(format!("{f}").bytes());
    }
    Ok(())
}

fn go_string(s: &[u8], out: &mut Vec<u8>) {
    let s = String::from_utf8_lossy(s);
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend(b"\\\""),
            '\\' => out.extend(b"\\\\"),
            '\n' => out.extend(b"\\n"),
            '\r' => out.extend(b"\\r"),
            '\t' => out.extend(b"\\t"),
            '\u{8}' => out.extend(b"\\b"),
            '\u{c}' => out.extend(b"\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.extend(format!("\\u{:04x}", c as u32).bytes())
            }
            c if (c as u32) < 0x20 => out.extend(format!("\\u{:04x}", c as u32).bytes()),
            c => {
                let mut b = [0u8; 4];
                out.extend(c.encode_utf8(&mut b).bytes());
            }
        }
    }
    out.push(b'"');
}

/// Go's `json.Marshal` of the value gojq would hold.
pub fn go_marshal(v: &Val, out: &mut Vec<u8>) -> Result<(), String> {
    match v {
        Val::Null => out.extend(b"null"),
        Val::Bool(b) => out.extend(if *b { &b"true"[..] } else { b"false" }),
        Val::Num(Num::Int(i)) => out.extend(i.to_string().bytes()),
        Val::Num(Num::BigInt(i)) => out.extend(i.to_string().bytes()),
        Val::Num(Num::Float(f)) => go_float(*f, out)?,
        Val::Num(Num::Dec(d)) => go_float(d.parse().unwrap_or(f64::NAN), out)?,
        Val::TStr(s) | Val::BStr(s) => go_string(s, out),
        Val::Arr(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                go_marshal(x, out)?;
            }
            out.push(b']');
        }
        Val::Obj(o) => {
            let mut entries = Vec::with_capacity(o.len());
            for (k, x) in o.iter() {
                let (Val::TStr(k) | Val::BStr(k)) = k else {
                    return Err(format!("json: unsupported object key {k}"));
                };
                entries.push((&k[..], x));
            }
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                go_string(k, out);
                out.push(b':');
                go_marshal(x, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Runs `program` on one input JSON document: Snowbridge's `runFunction` and output handler.
pub fn run_one(program: &Program, mode: Mode, json: &[u8]) -> Result<Outcome, String> {
    let input = input(json).map_err(|e| format!("failed to prepare expected JQ input: {e}"))?;
    let ctx = Ctx::<D>::new(&program.lut, Vars::new([]));
    let first = program
        .id
        .run((ctx, input))
        .map(jaq_core::unwrap_valr)
        .next();
    let v = match first {
        None => return Err("jq query got no output".into()),
        Some(Err(e)) => {
            let v = e.into_val();
            return Err(format!("jq output is an error: {}", go_v(&v)));
        }
        Some(Ok(v)) => v,
    };
    match mode {
        Mode::Map => {
            let mut out = Vec::new();
            go_marshal(&remove_nulls(v), &mut out)
                .map_err(|e| format!("error encoding jq query output data: {e}"))?;
            Ok(Outcome::Data(out))
        }
        Mode::Filter => match v {
            Val::Bool(b) => Ok(Outcome::Keep(b)),
            other => Err(format!(
                "jq filter didn't return expected [boolean] value: {}",
                go_v(&other)
            )),
        },
    }
}

// --- the evaluating thread --------------------------------------------------------------------

struct Worker {
    jobs: mpsc::Sender<Bytes>,
    results: mpsc::Receiver<Result<Outcome, String>>,
    /// RUNNING, then ABANDONED (by the engine, on time-out) or EXITED (by the thread).
    state: Arc<AtomicU8>,
}

const RUNNING: u8 = 0;
const ABANDONED: u8 = 1;
const EXITED: u8 = 2;

/// At most this many abandoned evaluations of one transform instance may still be running:
/// past that, records fail at once rather than each starting one more busy thread.
pub const MAX_STUCK: usize = 4;

/// Marks a worker thread's end; an abandoned one is no longer counted as stuck.
struct ExitGuard {
    state: Arc<AtomicU8>,
    stuck: Arc<AtomicUsize>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if self.state.swap(EXITED, Ordering::AcqRel) == ABANDONED {
            self.stuck.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One transform instance's jq evaluator, with its time bound.
pub struct Engine {
    code: Arc<str>,
    mode: Mode,
    timeout: Duration,
    worker: Option<Worker>,
    /// Abandoned evaluations still running.
    stuck: Arc<AtomicUsize>,
}

impl Engine {
    pub fn new(code: &str, mode: Mode, timeout_ms: u64) -> Self {
        Engine {
            code: code.into(),
            mode,
            timeout: Duration::from_millis(timeout_ms),
            worker: None,
            stuck: Arc::default(),
        }
    }

    fn spawn(&self) -> Result<Worker, String> {
        let (jobs, job_rx) = mpsc::channel::<Bytes>();
        let (res_tx, results) = mpsc::channel();
        let code = self.code.clone();
        let mode = self.mode;
        let state = Arc::new(AtomicU8::new(RUNNING));
        let guard = ExitGuard {
            state: state.clone(),
            stuck: self.stuck.clone(),
        };
        std::thread::Builder::new()
            .name("weir-jq".into())
            .stack_size(256 << 20)
            .spawn(move || {
                let _guard = guard;
                let program = match compile(&code) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = res_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(json) = job_rx.recv() {
                    if res_tx.send(run_one(&program, mode, &json)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start the jq thread: {e}"))?;
        Ok(Worker {
            jobs,
            results,
            state,
        })
    }

    /// Abandoned evaluations of this instance still running.
    pub fn stuck(&self) -> usize {
        self.stuck.load(Ordering::Acquire)
    }

    fn abandon(&mut self) {
        if let Some(w) = self.worker.take() {
            self.stuck.fetch_add(1, Ordering::AcqRel);
            if w.state
                .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // It ended meanwhile.
                self.stuck.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Evaluates one input JSON document within `timeout_ms`.
    pub fn eval(&mut self, json: Bytes) -> Result<Outcome, String> {
        if self.timeout.is_zero() {
            return Err(DEADLINE.into());
        }
        if self.worker.is_none() {
            let stuck = self.stuck();
            if stuck >= MAX_STUCK {
                return Err(format!(
                    "jq query not run: {stuck} earlier runs of this transform are still going \
                     past timeout_ms"
                ));
            }
            self.worker = Some(self.spawn()?);
        }
        let w = self.worker.as_ref().expect("just set");
        let started = Instant::now();
        if w.jobs.send(json).is_err() {
            self.worker = None;
            return Err("jq evaluation failed: its thread stopped".into());
        }
        match w.results.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Abandon the busy thread; the next record gets a fresh one.
                self.abandon();
                tracing::warn!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    stuck = self.stuck(),
                    "a jq evaluation exceeded timeout_ms; its thread is abandoned"
                );
                Err(DEADLINE.into())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.worker = None;
                Err("jq evaluation failed: its thread stopped".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs that never end are abandoned, at most MAX_STUCK of them per instance: after that,
    /// records fail at once instead of each leaving one more busy thread behind.
    #[test]
    fn abandoned_runs_are_bounded() {
        let mut e = Engine::new("def f: f; f", Mode::Map, 20);
        for _ in 0..MAX_STUCK {
            assert_eq!(e.eval(Bytes::from_static(b"{}")), Err(DEADLINE.to_string()));
        }
        assert_eq!(e.stuck(), MAX_STUCK);
        let r = e.eval(Bytes::from_static(b"{}")).unwrap_err();
        assert!(r.starts_with("jq query not run: 4 earlier runs"), "{r}");
        assert_eq!(e.stuck(), MAX_STUCK, "no new thread was started");
    }

    /// Snowbridge's DoHashing (util.go), behind the `hash` helper. util_test.go has no vector
    /// for it; these are jq_test.go's (on "python-requests 2").
    #[test]
    fn do_hashing_matches_snowbridge() {
        assert_eq!(
            do_hashing("python-requests 2", "sha1", "").unwrap(),
            "3767ff5f27dff1fc1a8a8bbf3aa53a7170adbcbea0ab43b3"
        );
        assert_eq!(
            do_hashing("python-requests 2", "md5", "09a2d6b3ecd943aa8512df1f").unwrap(),
            "8ac2e6ae6f31687f8f52ec3ae553d1dc78a591d31bfae508"
        );
        assert_eq!(
            do_hashing("x", "sha3", "").unwrap_err(),
            "unsupported hash function: [sha3]"
        );
    }
}
