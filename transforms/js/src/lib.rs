//! `weir-js`: runs a Snowbridge-style JavaScript transformation inside weir's WebAssembly
//! sandbox, on [Boa](https://boajs.dev) (a JavaScript engine in Rust, compiled into this guest).
//!
//! weir's `js` transform loads this guest; users do not configure it directly. It keeps
//! Snowbridge 5.x's contract (`pkg/transform/engine/engine_javascript.go`): the script defines
//! `main(input)`; `input` is `{Data, PartitionKey: "", FilterOut: false, HTTPHeaders: null}`
//! where `Data` is the record as a string, or (mode `json`) the record parsed as a JSON object;
//! `main` returns an object whose `Data` (string, or object written as JSON), `PartitionKey`,
//! `FilterOut` and `HTTPHeaders` decide what becomes of the record. Names are matched as
//! Snowbridge's decoder matches them: exactly, else ignoring case. The helpers `hash(text,
//! algorithm)` (PBKDF2 with `hash_salt_secret`), `allContexts(data, name)` and
//! `allUnstruct(data, name)` are defined as in Snowbridge.
//!
//! Settings (from weir's `js` transform): `script` (the source), `mode` (`string` or `json`),
//! `remove_nulls` (`true`/`false`), `hash_salt_secret`.
//!
//! Output framing, private to weir's `js` transform: each output value is a little-endian `u32`
//! `n`, then `n` bytes of HTTP headers as a JSON object (`n` = 0: none), then the new payload.
//!
//! One difference from Snowbridge: Snowbridge builds a new JavaScript runtime for every message;
//! this guest keeps one per instance (that is what makes it fast), so a script's global
//! variables outlive a record. Scripts written for Snowbridge do not rely on either.

#![deny(unsafe_op_in_unsafe_fn)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use boa_engine::context::time::JsInstant;
use boa_engine::context::{Clock, ContextBuilder, HostHooks};
use boa_engine::object::builtins::{JsArray, JsProxy};
use boa_engine::object::FunctionObjectBuilder;
use boa_engine::property::PropertyKey;
use boa_engine::string::JsStrVariant;
use boa_engine::{
    js_string, Context, Finalize, JsData, JsError, JsObject, JsResult, JsString, JsSymbol, JsValue,
    NativeFunction, Source, Trace,
};
use serde_json::{Map, Value};
use weir_transform_sdk::{Config, Emit, Error, FlatMap, Record};

thread_local! {
    /// `hash_salt_secret`, for `hash()` (a guest instance is single-threaded).
    static SALT: RefCell<String> = const { RefCell::new(String::new()) };
}

#[cfg(target_arch = "wasm32")]
thread_local! {
    /// The state of the generator behind `Math.random` (see `__getrandom_v03_custom`).
    static RANDOM: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Boa's `Math.random` asks getrandom; a WebAssembly guest has no entropy source, so it gets a
/// generator seeded from the host's clock (Snowbridge's scripts use it for sampling, not keys).
#[cfg(target_arch = "wasm32")]
#[no_mangle]
unsafe extern "Rust" fn __getrandom_v03_custom(
    dest: *mut u8,
    len: usize,
) -> Result<(), getrandom::Error> {
    // SAFETY: getrandom hands a writable buffer of `len` bytes.
    let buf = unsafe { std::slice::from_raw_parts_mut(dest, len) };
    fill_random(buf);
    Ok(())
}

#[cfg(target_arch = "wasm32")]
fn fill_random(buf: &mut [u8]) {
    RANDOM.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = (weir_transform_sdk::now_ms() as u64) ^ 0x9e37_79b9_7f4a_7c15;
        }
        for chunk in buf.chunks_mut(8) {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        s.set(x);
    });
}

/// `Date.now()` and friends read the host's clock (the guest has none of its own).
struct HostClock;

impl Clock for HostClock {
    fn now(&self) -> JsInstant {
        let ms = weir_transform_sdk::now_ms().max(0) as u64;
        JsInstant::new(ms / 1000, ((ms % 1000) * 1_000_000) as u32)
    }
}

/// Local time is UTC, as in Snowbridge's images.
struct Hooks;

impl HostHooks for Hooks {
    fn local_timezone_offset_seconds(&self, _unix_time_seconds: i64) -> i32 {
        0
    }
}

/// How `input.Data` is made from a record.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The payload as a string.
    Text,
    /// The payload parsed as a JSON object (`json_mode`, and `snowplow_mode` after weir turned
    /// the enriched TSV into the analytics-SDK JSON).
    Json,
}

pub struct Js {
    ctx: Context,
    main: JsObject,
    /// The handler of the proxies that stand for `input.Data` in mode `json` ([`lazy`]).
    lazy_handler: JsObject,
    mode: Mode,
    remove_nulls: bool,
    out: Vec<u8>,
}

impl FlatMap for Js {
    fn new(config: &Config) -> Result<Self, Error> {
        config.check_keys(&["script", "mode", "remove_nulls", "hash_salt_secret"])?;
        let script = config.require("script")?;
        let mode = match config.get("mode").unwrap_or("string") {
            "string" => Mode::Text,
            "json" => Mode::Json,
            other => return Err(format!("mode: expected string or json, found {other}").into()),
        };
        let remove_nulls = config.parse::<bool>("remove_nulls")?.unwrap_or(false);
        SALT.with(|s| *s.borrow_mut() = config.get("hash_salt_secret").unwrap_or("").into());
        let mut ctx = ContextBuilder::default()
            .clock(Rc::new(HostClock))
            .host_hooks(Rc::new(Hooks))
            .build()
            .map_err(|e| format!("cannot start the JavaScript engine: {e}"))?;
        register_helpers(&mut ctx).map_err(|e| format!("cannot define the helpers: {e}"))?;
        // Snowbridge compiles scripts in strict mode.
        let source = format!("'use strict';\n{script}");
        ctx.eval(Source::from_bytes(source.as_bytes()))
            .map_err(|e| format!("could not load JavaScript code: {}", describe(&e, &mut ctx)))?;
        let main = ctx
            .global_object()
            .get(js_string!("main"), &mut ctx)
            .ok()
            .and_then(|v| v.as_callable())
            .ok_or("could not assert as function: \"main\"")?;
        let lazy_handler = lazy::handler(&mut ctx)
            .map_err(|e| format!("cannot start the JavaScript engine: {e}"))?;
        Ok(Js {
            ctx,
            main,
            lazy_handler,
            mode,
            remove_nulls,
            out: Vec::new(),
        })
    }

    fn flat_map(&mut self, record: &Record<'_>, out: &mut Emit<'_>) -> Result<(), Error> {
        let data = match self.mode {
            Mode::Text => JsValue::from(JsString::from(
                String::from_utf8_lossy(record.value()).as_ref(),
            )),
            Mode::Json => {
                let raw = record.value();
                lazy::check_object(raw)?;
                lazy::data(raw, &self.lazy_handler, &mut self.ctx)
                    .map_err(|e| format!("failed making input for the JavaScript runtime: {e}"))?
            }
        };
        let ctx = &mut self.ctx;
        let input = JsObject::with_object_proto(ctx.intrinsics());
        let set = |k: JsString, v: JsValue, ctx: &mut Context| {
            input
                .create_data_property_or_throw(k, v, ctx)
                .map(|_| ())
                .map_err(|e| format!("failed making input for the JavaScript runtime: {e}"))
        };
        set(js_string!("Data"), data, ctx)?;
        set(js_string!("PartitionKey"), js_string!("").into(), ctx)?;
        set(js_string!("FilterOut"), false.into(), ctx)?;
        set(js_string!("HTTPHeaders"), JsValue::null(), ctx)?;
        let result = self
            .main
            .call(&JsValue::undefined(), &[input.into()], ctx)
            .map_err(|e| {
                format!(
                    "error running JavaScript function [main]: {}",
                    describe(&e, ctx)
                )
            })?;
        let protocol = Protocol::read(&result, ctx)
            .map_err(|e| format!("failed to validate JS engine output: {e}"))?;
        if protocol.filter_out {
            return Ok(());
        }
        self.out.clear();
        self.out.extend_from_slice(&[0; 4]);
        if let Some(headers) = &protocol.headers {
            serde_json::to_writer(&mut self.out, headers).expect("a map of strings serialises");
            let n = (self.out.len() - 4) as u32;
            self.out[..4].copy_from_slice(&n.to_le_bytes());
        }
        match protocol.data {
            Some(d) if d.is_string() => {
                let s = std_string(&d.as_string().expect("checked"));
                self.out.extend_from_slice(s.as_bytes());
            }
            Some(d) if d.is_object() && !is_array(&d) && !d.is_callable() => {
                let v = to_json(&d, ctx, &mut Vec::new())
                    .map_err(|e| format!("error encoding message data: {}", describe(&e, ctx)))?
                    .unwrap_or(Value::Null);
                let v = if self.remove_nulls {
                    remove_nulls(v)
                } else {
                    v
                };
                go_json(&v, &mut self.out);
            }
            _ => {
                return Err(
                    "invalid return type from JavaScript transformation; expected string \
                            or object"
                        .into(),
                )
            }
        }
        match protocol.partition_key {
            Some(pk) if !pk.is_empty() && Some(pk.as_bytes()) != record.key() => {
                out.emit_with_key(&self.out, pk.as_bytes())
            }
            _ => out.emit(&self.out),
        }
        Ok(())
    }
}

weir_transform_sdk::export_flat_map!(Js);

/// What `main` returned, decoded as Snowbridge decodes it (`mapstructure` into
/// `engineProtocol`).
struct Protocol {
    filter_out: bool,
    partition_key: Option<String>,
    data: Option<JsValue>,
    headers: Option<Map<String, Value>>,
}

impl Protocol {
    fn read(v: &JsValue, ctx: &mut Context) -> Result<Protocol, String> {
        if v.is_null_or_undefined() {
            return Err(
                "invalid return type from JavaScript transformation; got null or undefined".into(),
            );
        }
        let obj = match v.as_object() {
            Some(o) if !is_array(v) && !v.is_callable() => o.clone(),
            _ => return Err("invalid return type from JavaScript transformation".into()),
        };
        let violation = || "protocol violation in return value from JavaScript transformation";
        let keys = obj.own_property_keys(ctx).map_err(|e| e.to_string())?;
        let find = |name: &str, ctx: &mut Context| -> Result<Option<JsValue>, String> {
            let exact = keys.iter().find(|k| key_is(k, name, false));
            let key = exact.or_else(|| keys.iter().find(|k| key_is(k, name, true)));
            match key {
                None => Ok(None),
                Some(k) => {
                    let v = obj.get(k.clone(), ctx).map_err(|e| e.to_string())?;
                    Ok((!v.is_null_or_undefined()).then_some(v))
                }
            }
        };
        let filter_out = match find("FilterOut", ctx)? {
            None => false,
            Some(v) => v.as_boolean().ok_or_else(violation)?,
        };
        let partition_key = match find("PartitionKey", ctx)? {
            None => None,
            Some(v) => Some(std_string(&v.as_string().ok_or_else(violation)?)),
        };
        let data = find("Data", ctx)?;
        let headers = match find("HTTPHeaders", ctx)? {
            None => None,
            Some(v) => {
                let o = v
                    .as_object()
                    .filter(|_| !is_array(&v))
                    .ok_or_else(violation)?;
                let mut m = Map::new();
                for k in o.own_property_keys(ctx).map_err(|e| e.to_string())? {
                    let PropertyKey::String(name) = &k else {
                        continue;
                    };
                    let hv = o.get(k.clone(), ctx).map_err(|e| e.to_string())?;
                    let s = hv.as_string().ok_or_else(violation)?;
                    m.insert(std_string(name), Value::String(std_string(&s)));
                }
                (!m.is_empty()).then_some(m)
            }
        };
        Ok(Protocol {
            filter_out,
            partition_key,
            data,
            headers,
        })
    }
}

/// A JavaScript string as Rust text, as `to_std_string_escaped` makes it (lone surrogates
/// written as `\uXXXX`), without formatting it character by character when it is Latin-1 (the
/// common case: Boa keeps such strings as bytes).
fn std_string(s: &JsString) -> String {
    match s.as_str().variant() {
        JsStrVariant::Latin1(b) => match std::str::from_utf8(b) {
            Ok(ascii) if b.is_ascii() => ascii.to_owned(),
            _ => b.iter().map(|&c| char::from(c)).collect(),
        },
        JsStrVariant::Utf16(_) => s.to_std_string_escaped(),
    }
}

/// Whether a JavaScript string is `name` (ASCII), without making a Rust string of it.
fn js_str_is(s: &JsString, name: &[u8], ignore_case: bool) -> bool {
    match s.as_str().variant() {
        JsStrVariant::Latin1(b) if ignore_case => b.eq_ignore_ascii_case(name),
        JsStrVariant::Latin1(b) => b == name,
        JsStrVariant::Utf16(w) => {
            w.len() == name.len()
                && w.iter().zip(name).all(|(&c, &n)| {
                    u8::try_from(c).is_ok_and(|c| {
                        if ignore_case {
                            c.eq_ignore_ascii_case(&n)
                        } else {
                            c == n
                        }
                    })
                })
        }
    }
}

fn key_is(k: &PropertyKey, name: &str, ignore_case: bool) -> bool {
    match k {
        PropertyKey::String(s) => js_str_is(s, name.as_bytes(), ignore_case),
        _ => false,
    }
}

fn is_array(v: &JsValue) -> bool {
    v.as_object().is_some_and(|o| o.is_array())
}

/// A value as JSON, as Boa's `JsValue::to_json` makes it (`undefined` members left out, in
/// arrays `null`; symbols, bigints and cycles are errors), except that objects are read through
/// their internal methods — Boa's own reads an object's property storage, where a proxy (such as
/// the lazy `input.Data`) has nothing.
fn to_json(v: &JsValue, ctx: &mut Context, seen: &mut Vec<JsObject>) -> JsResult<Option<Value>> {
    let Some(obj) = v.as_object() else {
        if let Some(s) = v.as_string() {
            return Ok(Some(Value::String(std_string(&s))));
        }
        return v.to_json(ctx);
    };
    // A lazy `input.Data`: read its target, made whole, directly (through the proxy every key
    // and value would be a trap call).
    let obj = lazy::whole_target(&obj, ctx)?.unwrap_or_else(|| obj.clone());
    if seen.iter().any(|o| JsObject::equals(o, &obj)) {
        return Err(JsError::from_opaque(
            js_string!("cyclic object value").into(),
        ));
    }
    seen.push(obj.clone());
    let out = if obj.is_array() {
        let len = obj.get(js_string!("length"), ctx)?.to_length(ctx)?;
        let mut arr = Vec::with_capacity(len.min(1 << 16) as usize);
        for k in 0..len {
            let item = obj.get(k, ctx)?;
            arr.push(to_json(&item, ctx, seen)?.unwrap_or(Value::Null));
        }
        Value::Array(arr)
    } else {
        let mut map = Map::new();
        for key in obj.own_property_keys(ctx)? {
            let name = match &key {
                PropertyKey::String(s) => std_string(s),
                PropertyKey::Index(i) => i.get().to_string(),
                PropertyKey::Symbol(_) => {
                    return Err(JsError::from_opaque(
                        js_string!("cannot convert Symbol to JSON").into(),
                    ))
                }
            };
            let item = obj.get(key, ctx)?;
            if let Some(item) = to_json(&item, ctx, seen)? {
                map.insert(name, item);
            }
        }
        Value::Object(map)
    };
    seen.pop();
    Ok(Some(out))
}

/// `input.Data` in mode `json`, built lazily: a `Proxy` over an empty object that holds the
/// record's JSON text and an index of its top-level members. A member becomes a JavaScript value
/// when the script first reads it (or asks whether it is there); anything that needs the whole
/// object — listing its keys, deleting, describing, freezing, `JSON.stringify`, returning it as
/// `Data` — makes every member first, so the script sees the same object it would have had.
/// Building the ~60 members of an analytics-SDK event, nested entities included, was most of the
/// cost of a record (a typical script reads a handful).
mod lazy {
    use super::*;
    use boa_engine::native_function::NativeFunctionPointer;

    /// The record's JSON and its top-level members, carried by the proxy's target.
    #[derive(Trace, Finalize, JsData)]
    struct Members {
        #[unsafe_ignore_trace]
        raw: Vec<u8>,
        /// Each member as (key start, key end, value start, value end) in `raw`.
        #[unsafe_ignore_trace]
        index: Vec<[u32; 4]>,
        /// Whether each member was made (or overridden by the script).
        #[unsafe_ignore_trace]
        made: Vec<Cell<bool>>,
        /// Every member made: the target is the whole object.
        #[unsafe_ignore_trace]
        complete: Cell<bool>,
    }

    /// Fails as parsing the record into a JSON object would (Snowbridge's messages).
    pub(super) fn check_object(raw: &[u8]) -> Result<(), String> {
        serde_json::from_slice::<serde::de::IgnoredAny>(raw)
            .map_err(|e| format!("failed to transform input into JSON: {e}"))?;
        let kind = match raw.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => return Ok(()),
            Some(b'[') => "array",
            Some(b'"') => "string",
            Some(b't' | b'f') => "bool",
            Some(b'n') => "null",
            _ => "number",
        };
        Err(format!(
            "failed to transform input into JSON: json: cannot unmarshal {kind} into Go value of \
             type map[string]interface {{}}"
        ))
    }

    /// `input.Data` for a record that holds a JSON object (checked by [`check_object`]).
    pub(super) fn data(raw: &[u8], handler: &JsObject, ctx: &mut Context) -> JsResult<JsValue> {
        let json = weir_transform_sdk::Json(raw);
        let base = raw.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let mut index = Vec::new();
        for (k, v) in json.members() {
            if k.contains(&b'\\') {
                // A key with escapes (never in events): made the plain way.
                let v: Value = serde_json::from_slice(raw).map_err(js_error)?;
                return JsValue::from_json(&v, ctx);
            }
            let (ks, vs) = (at(k), at(v.raw()));
            index.push([ks, ks + k.len() as u32, vs, vs + v.raw().len() as u32]);
        }
        let members = Members {
            raw: raw.to_vec(),
            made: index.iter().map(|_| Cell::new(false)).collect(),
            index,
            complete: Cell::new(false),
        };
        let proto = ctx.intrinsics().constructors().object().prototype();
        let target = JsObject::from_proto_and_data(proto, members);
        let proxy = ctx.intrinsics().constructors().proxy().constructor();
        proxy
            .construct(&[target.into(), handler.clone().into()], None, ctx)
            .map(JsValue::from)
    }

    thread_local! {
        /// The key under which the `get` trap hands out its target (never visible to scripts:
        /// a symbol only this module holds).
        static TARGET: std::cell::OnceCell<JsSymbol> = const { std::cell::OnceCell::new() };
    }

    fn target_key() -> JsSymbol {
        TARGET.with(|t| {
            t.get_or_init(|| JsSymbol::new(Some(js_string!("weir lazy target"))).expect("a symbol"))
                .clone()
        })
    }

    /// If `obj` is a lazy `input.Data`: its target with every member made.
    pub(super) fn whole_target(obj: &JsObject, ctx: &mut Context) -> JsResult<Option<JsObject>> {
        if JsProxy::from_object(obj.clone()).is_err() {
            return Ok(None);
        }
        let t = obj.get(PropertyKey::Symbol(target_key()), ctx)?;
        Ok(t.as_object()
            .filter(|t| t.downcast_ref::<Members>().is_some()))
    }

    fn js_error(e: impl std::fmt::Display) -> JsError {
        JsError::from_opaque(JsString::from(e.to_string().as_str()).into())
    }

    /// The proxies' handler: made once per engine.
    pub(super) fn handler(ctx: &mut Context) -> JsResult<JsObject> {
        let h = JsObject::with_object_proto(ctx.intrinsics());
        let traps: [(&str, usize, NativeFunctionPointer); 8] = [
            ("get", 3, get),
            ("has", 2, has),
            ("set", 4, set),
            ("getOwnPropertyDescriptor", 2, get_own_property_descriptor),
            ("defineProperty", 3, define_property),
            ("deleteProperty", 2, delete_property),
            ("ownKeys", 1, own_keys),
            ("preventExtensions", 1, prevent_extensions),
        ];
        for (name, len, f) in traps {
            let f = FunctionObjectBuilder::new(ctx.realm(), NativeFunction::from_fn_ptr(f))
                .length(len)
                .build();
            h.create_data_property_or_throw(JsString::from(name), f, ctx)?;
        }
        Ok(h)
    }

    fn target(args: &[JsValue]) -> JsResult<JsObject> {
        args.first()
            .and_then(|t| t.as_object())
            .ok_or_else(|| js_error("a lazy object's trap without its target"))
    }

    fn key(args: &[JsValue], ctx: &mut Context) -> JsResult<PropertyKey> {
        args.get(1)
            .cloned()
            .unwrap_or_default()
            .to_property_key(ctx)
    }

    /// Whether `key` names a member whose key text is `text`.
    fn names(key: &PropertyKey, text: &[u8]) -> bool {
        match key {
            PropertyKey::String(s) => js_str_is(s, text, false),
            // Numeric keys are rare in events: a string per comparison is fine.
            PropertyKey::Index(i) => i.get().to_string().as_bytes() == text,
            PropertyKey::Symbol(_) => false,
        }
    }

    /// Makes member `key` on the target if the record has it and it was not made yet (the last
    /// of duplicate keys wins, as when the JSON is parsed whole).
    fn make(target: &JsObject, key: &PropertyKey, ctx: &mut Context) -> JsResult<()> {
        if matches!(key, PropertyKey::Symbol(_)) {
            return Ok(());
        }
        let value = {
            let Some(m) = target.downcast_ref::<Members>() else {
                return Ok(());
            };
            if m.complete.get() {
                return Ok(());
            }
            let found = m
                .index
                .iter()
                .rposition(|e| names(key, &m.raw[e[0] as usize..e[1] as usize]));
            match found {
                Some(i) if !m.made[i].get() => {
                    m.made[i].set(true);
                    let e = m.index[i];
                    serde_json::from_slice::<Value>(&m.raw[e[2] as usize..e[3] as usize])
                        .map_err(js_error)?
                }
                _ => return Ok(()),
            }
        };
        if !target.has_own_property(key.clone(), ctx)? {
            let v = JsValue::from_json(&value, ctx)?;
            target.create_data_property_or_throw(key.clone(), v, ctx)?;
        }
        Ok(())
    }

    /// Makes every member not made yet.
    fn make_all(target: &JsObject, ctx: &mut Context) -> JsResult<()> {
        let pending: Vec<(String, Value)> = {
            let Some(m) = target.downcast_ref::<Members>() else {
                return Ok(());
            };
            if m.complete.replace(true) {
                return Ok(());
            }
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            // Last first: of duplicate keys, the last wins.
            for (i, e) in m.index.iter().enumerate().rev() {
                let k = &m.raw[e[0] as usize..e[1] as usize];
                if !seen.insert(k) || m.made[i].replace(true) {
                    continue;
                }
                let k = std::str::from_utf8(k).map_err(js_error)?.to_string();
                let v = serde_json::from_slice::<Value>(&m.raw[e[2] as usize..e[3] as usize])
                    .map_err(js_error)?;
                out.push((k, v));
            }
            out
        };
        for (k, v) in pending.into_iter().rev() {
            let key = PropertyKey::from(JsString::from(k.as_str()));
            if !target.has_own_property(key.clone(), ctx)? {
                let v = JsValue::from_json(&v, ctx)?;
                target.create_data_property_or_throw(key, v, ctx)?;
            }
        }
        Ok(())
    }

    fn reflect(name: &str, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
        let reflect = ctx.intrinsics().objects().reflect();
        let f = reflect.get(JsString::from(name), ctx)?;
        let f = f
            .as_callable()
            .ok_or_else(|| js_error("Reflect lost a method"))?;
        f.call(&reflect.into(), args, ctx)
    }

    fn get(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
        let t = target(args)?;
        let k = key(args, ctx)?;
        if matches!(&k, PropertyKey::Symbol(s) if *s == target_key()) {
            make_all(&t, ctx)?;
            return Ok(t.into());
        }
        make(&t, &k, ctx)?;
        t.get(k, ctx)
    }

    fn has(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
        let t = target(args)?;
        let k = key(args, ctx)?;
        make(&t, &k, ctx)?;
        t.has_property(k, ctx).map(JsValue::from)
    }

    fn set(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
        let t = target(args)?;
        let k = key(args, ctx)?;
        let v = args.get(2).cloned().unwrap_or_default();
        make(&t, &k, ctx)?;
        t.set(k, v, false, ctx).map(JsValue::from)
    }

    fn get_own_property_descriptor(
        _: &JsValue,
        args: &[JsValue],
        ctx: &mut Context,
    ) -> JsResult<JsValue> {
        let t = target(args)?;
        let k = key(args, ctx)?;
        make(&t, &k, ctx)?;
        reflect("getOwnPropertyDescriptor", args, ctx)
    }

    fn define_property(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
        let t = target(args)?;
        let k = key(args, ctx)?;
        make(&t, &k, ctx)?;
        reflect("defineProperty", args, ctx)
    }

    fn delete_property(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
        make_all(&target(args)?, ctx)?;
        reflect("deleteProperty", args, ctx)
    }

    fn own_keys(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
        make_all(&target(args)?, ctx)?;
        reflect("ownKeys", args, ctx)
    }

    fn prevent_extensions(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> JsResult<JsValue> {
        make_all(&target(args)?, ctx)?;
        reflect("preventExtensions", args, ctx)
    }
}

/// A thrown value as a message (`Error: text` for errors, the value itself otherwise).
fn describe(e: &JsError, ctx: &mut Context) -> String {
    match e.try_native(ctx) {
        Ok(native) => native.to_string(),
        Err(_) => {
            let v = e.to_opaque(ctx);
            v.to_string(ctx)
                .map(|s| s.to_std_string_escaped())
                .unwrap_or_else(|_| "an exception".into())
        }
    }
}

/// `v` as Snowbridge 5 writes it (jsoniter's `Config{}`: Go's number format, `5` not `5.0`,
/// `1e+21`, `1e-07`; no HTML escaping; control characters other than `\n`, `\r`, `\t` as
/// `\u00XX`), checked against its binary. Keys sorted (serde_json's map is ordered) where
/// Snowbridge writes them in Go's random map order.
fn go_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.extend_from_slice(i.to_string().as_bytes()),
            (_, Some(u), _) => out.extend_from_slice(u.to_string().as_bytes()),
            (_, _, Some(f)) => go_float(f, out),
            _ => out.extend_from_slice(b"null"),
        },
        Value::String(s) => go_string(s, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                go_json(x, out);
            }
            out.push(b']');
        }
        Value::Object(m) => {
            out.push(b'{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                go_string(k, out);
                out.push(b':');
                go_json(x, out);
            }
            out.push(b'}');
        }
    }
}

/// Go's float format (`strconv.AppendFloat(f, fmt, -1, 64)`): the shortest representation, in
/// `e` notation below 1e-6 and from 1e21 on, the exponent signed and at least two digits
/// (`1e+21`, `1e-07`).
fn go_float(f: f64, out: &mut Vec<u8>) {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match e.strip_prefix('-') {
            Some(d) => ("-", d),
            None => ("+", e),
        };
        out.extend_from_slice(m.as_bytes());
        out.push(b'e');
        out.extend_from_slice(sign.as_bytes());
        if digits.len() < 2 {
            out.push(b'0');
        }
        out.extend_from_slice(digits.as_bytes());
    } else {
        out.extend_from_slice(format!("{f}").as_bytes());
    }
}

/// A JSON string as jsoniter's `Config{}` writes it.
fn go_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut b = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Snowbridge's `RemoveNullFromMap`: drops nulls, and objects and arrays left empty, at every
/// depth.
fn remove_nulls(v: Value) -> Value {
    fn clean(v: Value) -> Option<Value> {
        match v {
            Value::Null => None,
            Value::Object(m) => {
                let m: Map<String, Value> = m
                    .into_iter()
                    .filter_map(|(k, v)| clean(v).map(|v| (k, v)))
                    .collect();
                (!m.is_empty()).then_some(Value::Object(m))
            }
            Value::Array(a) => {
                let a: Vec<Value> = a.into_iter().filter_map(clean).collect();
                (!a.is_empty()).then_some(Value::Array(a))
            }
            other => Some(other),
        }
    }
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter_map(|(k, v)| clean(v).map(|v| (k, v)))
                .collect(),
        ),
        other => other,
    }
}

/// Snowbridge's `hash`: PBKDF2 (1000 rounds, 24 bytes, hex) with `hash_salt_secret` as salt.
pub fn do_hashing(input: &str, algorithm: &str, salt: &str) -> Result<String, String> {
    let mut out = [0u8; 24];
    let (p, s) = (input.as_bytes(), salt.as_bytes());
    match algorithm {
        "sha1" => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(p, s, 1000, &mut out),
        "sha256" => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(p, s, 1000, &mut out),
        "md5" => pbkdf2::pbkdf2_hmac::<md5::Md5>(p, s, 1000, &mut out),
        other => return Err(format!("unsupported hash function: [{other}]")),
    }
    Ok(out.iter().map(|b| format!("{b:02x}")).collect())
}

fn arg_string(args: &[JsValue], i: usize, ctx: &mut Context) -> JsResult<String> {
    Ok(args
        .get(i)
        .cloned()
        .unwrap_or_default()
        .to_string(ctx)?
        .to_std_string_escaped())
}

fn register_helpers(ctx: &mut Context) -> JsResult<()> {
    ctx.register_global_callable(
        js_string!("hash"),
        2,
        NativeFunction::from_fn_ptr(|_, args, ctx| {
            if args.len() != 2 {
                return Ok(js_string!(
                    "hash() function expects 2 arguments: data and hash_func_name"
                )
                .into());
            }
            let input = arg_string(args, 0, ctx)?;
            let algorithm = arg_string(args, 1, ctx)?;
            // Snowbridge returns "" for an unknown algorithm.
            let h = SALT
                .with(|s| do_hashing(&input, &algorithm, &s.borrow()))
                .unwrap_or_default();
            Ok(JsString::from(h.as_str()).into())
        }),
    )?;
    ctx.register_global_callable(
        js_string!("allContexts"),
        2,
        NativeFunction::from_fn_ptr(|_, args, ctx| {
            if args.len() != 2 {
                return Ok(
                    js_string!("allContexts() expects 2 arguments: data and contextName").into(),
                );
            }
            let prefix = format!("contexts_{}_", arg_string(args, 1, ctx)?);
            let result = JsArray::new(ctx);
            let Some(data) = args[0].as_object().filter(|_| !is_array(&args[0])) else {
                return Ok(result.into());
            };
            // Every version of the context, newest first.
            let mut versions: Vec<(i64, JsValue)> = Vec::new();
            for (k, suffix) in keys_after(&data, &prefix, ctx)? {
                let Ok(version) = suffix.parse::<i64>() else {
                    continue;
                };
                let v = data.get(k, ctx)?;
                if is_array(&v) {
                    versions.push((version, v));
                }
            }
            versions.sort_by_key(|v| std::cmp::Reverse(v.0));
            for (_, v) in versions {
                let arr = v.as_object().expect("an array").clone();
                let n = arr.get(js_string!("length"), ctx)?.to_length(ctx)?;
                for i in 0..n {
                    result.push(arr.get(i, ctx)?, ctx)?;
                }
            }
            Ok(result.into())
        }),
    )?;
    ctx.register_global_callable(
        js_string!("allUnstruct"),
        2,
        NativeFunction::from_fn_ptr(|_, args, ctx| {
            if args.len() != 2 {
                return Ok(
                    js_string!("allUnstruct() expects 2 arguments: data and eventName").into(),
                );
            }
            let prefix = format!("unstruct_event_{}_", arg_string(args, 1, ctx)?);
            let Some(data) = args[0].as_object().filter(|_| !is_array(&args[0])) else {
                return Ok(JsValue::undefined());
            };
            match keys_after(&data, &prefix, ctx)?
                .into_iter()
                .find(|(_, suffix)| !suffix.contains('_'))
            {
                Some((k, _)) => data.get(k, ctx),
                None => Ok(JsValue::undefined()),
            }
        }),
    )?;
    Ok(())
}

/// The own string keys of `data` that start with `prefix`, each with what follows the prefix.
fn keys_after(
    data: &JsObject,
    prefix: &str,
    ctx: &mut Context,
) -> JsResult<Vec<(PropertyKey, String)>> {
    Ok(data
        .own_property_keys(ctx)?
        .into_iter()
        .filter_map(|k| {
            let PropertyKey::String(name) = &k else {
                return None;
            };
            let suffix = name
                .to_std_string_escaped()
                .strip_prefix(prefix)?
                .to_string();
            Some((k, suffix))
        })
        .collect())
}

#[cfg(test)]
mod tests;
