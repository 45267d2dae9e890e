//! Snowbridge 5.x HCL configs, read as weir configs.
//!
//! A Snowbridge config (`source`, `transform`, `target`, `failure_target`, `filter_target`, …
//! with the `use "name" { … }` component syntax) is translated into the same config tree weir's
//! TOML gives, so that validation, errors and the pipeline are shared. `weir config convert`
//! prints that tree as TOML.
//!
//! * Expressions are evaluated; `env("X")` and `env.X` read the environment (a variable that is
//!   not set is an error naming it).
//! * Snowbridge's defaults: stdin source, stdout target and stdout failure target when omitted;
//!   the silent filter target (weir acknowledges filtered records without writing them).
//! * Snowbridge's option names are mapped onto weir's components, option by option. An option
//!   with no weir equivalent yet is accepted and reported as a [`Note`] (logged as a warning by
//!   `weir run` and `weir validate`, written as a comment by `weir config convert`); a component
//!   weir lacks is an error naming it and the issue that adds it.
//! * Errors name the file and the HCL key path (`source.use "kafka".topic`), including errors
//!   found later by weir's own checks (mapped back from weir's key path).
//!
//! The mapping is weir's own, written from Snowbridge's documented option names.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::{Block, BlockLabel, Body, Expression, Structure, TraversalOperator};

use crate::config::{unknown_key_message, ConfigError};

/// Whether `path` names a Snowbridge HCL config.
pub fn is_hcl(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("hcl")
}

/// A value of the translated config tree, keys in the order they were written.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Str(String),
    /// A string read from an environment variable that holds a secret: `weir config convert`
    /// does not print it.
    Secret(String, Option<String>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Arr(Vec<V>),
    Table(Vec<(String, V)>),
}

impl V {
    fn table() -> V {
        V::Table(Vec::new())
    }

    fn set(&mut self, key: &str, v: V) {
        if let V::Table(t) = self {
            if let Some(e) = t.iter_mut().find(|(k, _)| k == key) {
                e.1 = v;
            } else {
                t.push((key.to_string(), v));
            }
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        match self {
            V::Table(t) => t.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The table at `key`, created if absent.
    fn table_at(&mut self, key: &str) -> &mut V {
        if self.get_mut(key).is_none() {
            self.set(key, V::table());
        }
        self.get_mut(key).expect("just set")
    }

    fn is_empty_table(&self) -> bool {
        matches!(self, V::Table(t) if t.is_empty())
    }

    /// Into the `config` crate's tree, as weir's TOML loader gives it.
    pub fn to_config(&self) -> config::Value {
        use config::ValueKind as K;
        let kind = match self {
            V::Str(s) | V::Secret(s, _) => K::String(s.clone()),
            V::Int(i) => K::I64(*i),
            V::Float(f) => K::Float(*f),
            V::Bool(b) => K::Boolean(*b),
            V::Arr(a) => K::Array(a.iter().map(V::to_config).collect()),
            V::Table(t) => K::Table(
                t.iter()
                    .map(|(k, v)| (k.clone(), v.to_config()))
                    .collect::<config::Map<_, _>>(),
            ),
        };
        config::Value::new(None, kind)
    }
}

/// Something of the Snowbridge config that weir does not do the same way, at its HCL path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub path: String,
    pub message: String,
    /// Behaviour differs from Snowbridge's (logged as a warning); otherwise only informative.
    pub warn: bool,
}

/// A translated Snowbridge config.
#[derive(Debug, Clone)]
pub struct Translated {
    pub file: String,
    /// weir's config tree (`source`, `transforms`, `sink`, …).
    pub tree: V,
    pub notes: Vec<Note>,
    /// weir's log filter for Snowbridge's `log_level`, if set.
    pub log_level: Option<String>,
    /// weir key path → HCL key path, to report weir's own errors where the user wrote them.
    pub paths: Vec<(String, String)>,
}

impl Translated {
    pub fn root(&self) -> config::Value {
        self.tree.to_config()
    }

    /// Re-key an error found by weir's validation of the translated tree to the HCL key path.
    pub fn map_error(&self, mut e: ConfigError) -> ConfigError {
        let best = self
            .paths
            .iter()
            .filter(|(w, _)| {
                e.key == *w
                    || (e.key.starts_with(w.as_str())
                        && matches!(e.key.as_bytes().get(w.len()), Some(b'.' | b'[')))
            })
            .max_by_key(|(w, _)| w.len());
        if let Some((w, h)) = best {
            let rest = &e.key[w.len()..];
            e.key = format!("{h}{rest}");
        }
        e.file = self.file.clone();
        e
    }
}

/// Read and translate the HCL file at `path`, with `env` as the environment.
/// `top_level_keys` are the sections weir's config knows (a `retry` block is kept only if weir
/// has `retry`).
pub fn load(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
    top_level_keys: &[&str],
) -> Result<Translated, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        key: String::new(),
        message: format!("cannot read the file: {e}"),
    })?;
    translate(&file, &text, env.into_iter().collect(), top_level_keys)
}

/// Translate the text of a Snowbridge HCL config.
pub fn translate(
    file: &str,
    text: &str,
    env: HashMap<String, String>,
    top_level_keys: &[&str],
) -> Result<Translated, ConfigError> {
    let body: Body = hcl::parse(text).map_err(|e| ConfigError {
        file: file.to_string(),
        key: String::new(),
        message: format!("cannot parse the HCL: {e}"),
    })?;
    let mut cx = Cx::new(file, env);
    cx.retry_supported = top_level_keys.contains(&"retry");
    let top = Section::new(&cx, "", &body)?;
    let tree = translate_top(&mut cx, &top)?;
    Ok(Translated {
        file: file.to_string(),
        tree,
        notes: cx.notes,
        log_level: cx.log_level,
        paths: cx.paths,
    })
}

// ---------------------------------------------------------------------------------------------
// Reading HCL

struct Cx {
    file: String,
    env: HashMap<String, String>,
    eval: Context<'static>,
    notes: Vec<Note>,
    paths: Vec<(String, String)>,
    log_level: Option<String>,
    retry_supported: bool,
}

/// `env("X")` where the argument is not a literal (resolved before evaluation otherwise).
fn env_func(args: FuncArgs) -> Result<hcl::Value, String> {
    let name = args[0].as_str().unwrap_or_default().to_string();
    std::env::var(&name)
        .map(hcl::Value::String)
        .map_err(|_| format!("environment variable `{name}` is not set"))
}

impl Cx {
    fn new(file: &str, env: HashMap<String, String>) -> Cx {
        let mut eval = Context::new();
        let obj: hcl::Map<String, hcl::Value> = env
            .iter()
            .map(|(k, v)| (k.clone(), hcl::Value::String(v.clone())))
            .collect();
        eval.declare_var("env", hcl::Value::Object(obj));
        eval.declare_func(
            "env",
            FuncDef::builder().param(ParamType::String).build(env_func),
        );
        Cx {
            file: file.to_string(),
            env,
            eval,
            notes: Vec::new(),
            paths: Vec::new(),
            log_level: None,
            retry_supported: false,
        }
    }

    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn note(&mut self, path: &str, message: impl Into<String>) {
        self.notes.push(Note {
            path: path.to_string(),
            message: message.into(),
            warn: false,
        });
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.notes.push(Note {
            path: path.to_string(),
            message: message.into(),
            warn: true,
        });
    }

    fn map(&mut self, weir: impl Into<String>, hcl: impl Into<String>) {
        self.paths.push((weir.into(), hcl.into()));
    }

    /// Replace `env.X` and `env("X")` by the variable's value; an unset variable is an error.
    /// Returns the name of the last variable read (to keep secrets out of `convert`).
    fn resolve_env(
        &self,
        e: &mut Expression,
        key: &str,
        used: &mut Option<String>,
    ) -> Result<(), ConfigError> {
        let lookup = |name: &str, used: &mut Option<String>| {
            *used = Some(name.to_string());
            self.env
                .get(name)
                .cloned()
                .ok_or_else(|| self.err(key, format!("environment variable `{name}` is not set")))
        };
        match e {
            Expression::Traversal(t) => {
                if matches!(&t.expr, Expression::Variable(v) if v.as_str() == "env") {
                    if let Some(TraversalOperator::GetAttr(name)) = t.operators.first() {
                        let value = lookup(name.as_str(), used)?;
                        t.operators.remove(0);
                        t.expr = Expression::String(value);
                        if t.operators.is_empty() {
                            *e = t.expr.clone();
                        }
                        return Ok(());
                    }
                }
                self.resolve_env(&mut t.expr, key, used)?;
                for op in &mut t.operators {
                    if let TraversalOperator::Index(i) = op {
                        self.resolve_env(i, key, used)?;
                    }
                }
            }
            Expression::FuncCall(f) => {
                for a in &mut f.args {
                    self.resolve_env(a, key, used)?;
                }
                if f.name.namespace.is_empty() && f.name.name.as_str() == "env" {
                    if let [Expression::String(name)] = f.args.as_slice() {
                        let value = lookup(name, used)?;
                        *e = Expression::String(value);
                    }
                }
            }
            Expression::Array(a) => {
                for x in a {
                    self.resolve_env(x, key, used)?;
                }
            }
            Expression::Object(o) => {
                for (_, x) in o.iter_mut() {
                    self.resolve_env(x, key, used)?;
                }
            }
            Expression::Parenthesis(x) => self.resolve_env(x, key, used)?,
            Expression::Conditional(c) => {
                self.resolve_env(&mut c.cond_expr, key, used)?;
                self.resolve_env(&mut c.true_expr, key, used)?;
                self.resolve_env(&mut c.false_expr, key, used)?;
            }
            Expression::Operation(op) => match op.as_mut() {
                hcl::expr::Operation::Unary(u) => self.resolve_env(&mut u.expr, key, used)?,
                hcl::expr::Operation::Binary(b) => {
                    self.resolve_env(&mut b.lhs_expr, key, used)?;
                    self.resolve_env(&mut b.rhs_expr, key, used)?;
                }
            },
            _ => {}
        }
        Ok(())
    }

    fn eval(
        &self,
        expr: &Expression,
        key: &str,
    ) -> Result<(hcl::Value, Option<String>), ConfigError> {
        let mut e = expr.clone();
        let mut used = None;
        self.resolve_env(&mut e, key, &mut used)?;
        // hcl-rs's arithmetic panics on some numbers instead of failing (found by fuzzing:
        // `2 % 0` divides by zero in hcl-primitives 0.1, `-9223372036854775808 % -1`
        // overflows), also inside templates and for-expressions. A config is read once, at
        // start: such a panic is caught here and becomes an error naming the key.
        let v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.evaluate(&self.eval)))
            .map_err(|_| {
                self.err(
                    key,
                    "cannot evaluate the expression: its arithmetic divides by zero or \
                     overflows",
                )
            })?
            .map_err(|err| self.err(key, format!("cannot evaluate the expression: {err}")))?;
        Ok((v, used))
    }
}

/// The attributes and blocks of one HCL body, at an HCL key path.
struct Section<'a> {
    path: String,
    attrs: Vec<(&'a str, &'a Expression)>,
    blocks: Vec<&'a Block>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(v: &hcl::Value) -> &'static str {
    match v {
        hcl::Value::Null => "null",
        hcl::Value::Bool(_) => "a boolean",
        hcl::Value::Number(_) => "a number",
        hcl::Value::String(_) => "a string",
        hcl::Value::Array(_) => "a list",
        hcl::Value::Object(_) => "an object",
    }
}

impl<'a> Section<'a> {
    fn new(cx: &Cx, path: &str, body: &'a Body) -> Result<Section<'a>, ConfigError> {
        let mut s = Section {
            path: path.to_string(),
            attrs: Vec::new(),
            blocks: Vec::new(),
        };
        for st in body.iter() {
            match st {
                Structure::Attribute(a) => {
                    let k = a.key.as_str();
                    if s.attrs.iter().any(|(n, _)| *n == k) {
                        return Err(cx.err(&join(path, k), format!("`{k}` is set twice")));
                    }
                    s.attrs.push((k, &a.expr));
                }
                Structure::Block(b) => s.blocks.push(b),
            }
        }
        Ok(s)
    }

    fn key(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// Every attribute and block must be one of `attrs` / `blocks`.
    fn known(&self, cx: &Cx, attrs: &[&str], blocks: &[&str]) -> Result<(), ConfigError> {
        let all: Vec<&str> = attrs.iter().chain(blocks).copied().collect();
        for (name, _) in &self.attrs {
            if !attrs.contains(name) {
                let mut m = unknown_key_message(name, &all);
                if blocks.contains(name) {
                    m = format!("`{name}` is a block here: write `{name} {{ … }}`");
                }
                return Err(cx.err(&self.key(name), m));
            }
        }
        for b in &self.blocks {
            let name = b.identifier.as_str();
            if !blocks.contains(&name) {
                let mut m = unknown_key_message(name, &all);
                if attrs.contains(&name) {
                    m = format!("`{name}` is an attribute here: write `{name} = …`");
                }
                return Err(cx.err(&self.key(name), m.replace("unknown key", "unknown block")));
            }
        }
        Ok(())
    }

    fn value(
        &self,
        cx: &Cx,
        name: &str,
    ) -> Result<Option<(hcl::Value, Option<String>)>, ConfigError> {
        match self.attrs.iter().find(|(n, _)| *n == name) {
            None => Ok(None),
            Some((_, e)) => {
                let (v, env) = cx.eval(e, &self.key(name))?;
                Ok(if v == hcl::Value::Null {
                    None
                } else {
                    Some((v, env))
                })
            }
        }
    }

    fn has(&self, name: &str) -> bool {
        self.attrs.iter().any(|(n, _)| *n == name)
    }

    fn string_env(
        &self,
        cx: &Cx,
        name: &str,
    ) -> Result<Option<(String, Option<String>)>, ConfigError> {
        Ok(match self.value(cx, name)? {
            None => None,
            Some((hcl::Value::String(s), env)) => Some((s, env)),
            // As Snowbridge's HCL decoding does, numbers and booleans convert to strings.
            Some((hcl::Value::Number(n), env)) => Some((n.to_string(), env)),
            Some((hcl::Value::Bool(b), env)) => Some((b.to_string(), env)),
            Some((v, _)) => {
                return Err(cx.err(
                    &self.key(name),
                    format!("expected a string, found {}", kind(&v)),
                ))
            }
        })
    }

    /// An object of strings (`headers`, `tags`) as a table.
    fn string_table(&self, cx: &Cx, name: &str) -> Result<Option<V>, ConfigError> {
        let Some((v, _)) = self.value(cx, name)? else {
            return Ok(None);
        };
        let hcl::Value::Object(o) = v else {
            return Err(cx.err(
                &self.key(name),
                format!("expected an object of strings, found {}", kind(&v)),
            ));
        };
        let mut t = V::table();
        for (k, x) in o {
            match x {
                hcl::Value::String(x) => t.set(&k, V::Str(x)),
                other => {
                    return Err(cx.err(
                        &format!("{}.{k}", self.key(name)),
                        format!("expected a string, found {}", kind(&other)),
                    ))
                }
            }
        }
        Ok(Some(t))
    }

    fn string(&self, cx: &Cx, name: &str) -> Result<Option<String>, ConfigError> {
        Ok(self.string_env(cx, name)?.map(|(s, _)| s))
    }

    fn int(&self, cx: &Cx, name: &str) -> Result<Option<i64>, ConfigError> {
        let bad = |found: String| {
            cx.err(
                &self.key(name),
                format!("expected a whole number, found {found}"),
            )
        };
        Ok(match self.value(cx, name)? {
            None => None,
            Some((hcl::Value::Number(n), _)) => match n.as_i64() {
                Some(i) => Some(i),
                None => match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9e15 => Some(f as i64),
                    _ => return Err(bad(n.to_string())),
                },
            },
            Some((hcl::Value::String(s), _)) => match s.trim().parse::<i64>() {
                Ok(i) => Some(i),
                Err(_) => return Err(bad(format!("\"{s}\""))),
            },
            Some((v, _)) => return Err(bad(kind(&v).to_string())),
        })
    }

    fn bool(&self, cx: &Cx, name: &str) -> Result<Option<bool>, ConfigError> {
        Ok(match self.value(cx, name)? {
            None => None,
            Some((hcl::Value::Bool(b), _)) => Some(b),
            Some((hcl::Value::String(s), _)) if s == "true" || s == "false" => Some(s == "true"),
            Some((v, _)) => {
                return Err(cx.err(
                    &self.key(name),
                    format!("expected a boolean (true or false), found {}", kind(&v)),
                ))
            }
        })
    }

    fn required<T>(&self, cx: &Cx, name: &str, v: Option<T>) -> Result<T, ConfigError> {
        v.ok_or_else(|| cx.err(&self.key(name), format!("missing required key `{name}`")))
    }

    /// The block `name`, at most one.
    fn block(&self, cx: &Cx, name: &str) -> Result<Option<&'a Block>, ConfigError> {
        let mut found = self.blocks.iter().filter(|b| b.identifier.as_str() == name);
        let first = found.next().copied();
        if found.next().is_some() {
            return Err(cx.err(
                &self.key(name),
                format!("expected one `{name}` block, found several"),
            ));
        }
        Ok(first)
    }

    fn sub(&self, cx: &Cx, b: &'a Block) -> Result<Section<'a>, ConfigError> {
        let path = self.key(b.identifier.as_str());
        if !b.labels.is_empty() {
            return Err(cx.err(
                &path,
                format!(
                    "expected `{} {{ … }}` without a label",
                    b.identifier.as_str()
                ),
            ));
        }
        Section::new(cx, &path, &b.body)
    }
}

/// A `use "name" { … }` component: its name and its settings.
struct Use<'a> {
    name: String,
    body: Section<'a>,
}

fn label(b: &Block) -> Option<String> {
    match b.labels.as_slice() {
        [BlockLabel::String(s)] => Some(s.clone()),
        [BlockLabel::Identifier(i)] => Some(i.as_str().to_string()),
        _ => None,
    }
}

/// The `use` blocks of a component block such as `target { use "kafka" { … } }`.
fn uses<'a>(cx: &Cx, s: &Section<'a>) -> Result<Vec<Use<'a>>, ConfigError> {
    let mut out = Vec::new();
    let all: Vec<&&Block> = s
        .blocks
        .iter()
        .filter(|b| b.identifier.as_str() == "use")
        .collect();
    for b in all {
        let Some(name) = label(b) else {
            return Err(cx.err(
                &s.key("use"),
                "expected one label naming the component, as in `use \"kafka\" { … }`",
            ));
        };
        let path = s.key(&format!("use \"{name}\""));
        out.push(Use {
            body: Section::new(cx, &path, &b.body)?,
            name,
        });
    }
    Ok(out)
}

/// The single `use` of a source or target block.
fn one_use<'a>(cx: &Cx, b: &'a Block, path: &str) -> Result<Use<'a>, ConfigError> {
    if !b.labels.is_empty() {
        return Err(cx.err(path, format!("expected `{path} {{ use \"…\" {{ … }} }}`")));
    }
    let s = Section::new(cx, path, &b.body)?;
    s.known(cx, &[], &["use"])?;
    let mut u = uses(cx, &s)?;
    match u.len() {
        0 => Err(cx.err(
            path,
            "missing `use \"<component>\" { … }` naming the component to use",
        )),
        1 => Ok(u.remove(0)),
        _ => Err(cx.err(&s.key("use"), "expected one `use` block, found several")),
    }
}

// ---------------------------------------------------------------------------------------------
// Translation

const TOP_ATTRS: &[&str] = &["log_level", "user_provided_id", "disable_telemetry"];
const TOP_BLOCKS: &[&str] = &[
    "source",
    "transform",
    "target",
    "failure_target",
    "filter_target",
    "failure_parser",
    "retry",
    "stats_receiver",
    "sentry",
    "monitoring",
    "metrics",
    "license",
];

fn unsupported(what: &str, name: &str, issue: u32) -> String {
    format!("{what} `{name}` is not supported by weir yet (issue #{issue})")
}

fn translate_top(cx: &mut Cx, top: &Section) -> Result<V, ConfigError> {
    top.known(cx, TOP_ATTRS, TOP_BLOCKS)?;
    for b in &top.blocks {
        if b.identifier.as_str() != "transform" {
            top.block(cx, b.identifier.as_str())?;
        }
    }
    let mut root = V::table();

    // source (default: stdin)
    let source = match top.block(cx, "source")? {
        Some(b) => {
            let u = one_use(cx, b, "source")?;
            cx.map("source", u.body.path.clone());
            source(cx, &u)?
        }
        None => V::Table(vec![("type".into(), V::Str("stdin".into()))]),
    };
    root.set("source", source);

    // transforms, in order: the `use` blocks of the `transform` block (several `transform`
    // blocks, as older Snowbridge versions wrote them, are read in order too)
    let mut transforms = Vec::new();
    let tblocks: Vec<&Block> = top
        .blocks
        .iter()
        .copied()
        .filter(|b| b.identifier.as_str() == "transform")
        .collect();
    let mut all_uses = Vec::new();
    for b in &tblocks {
        let s = top.sub(cx, b)?;
        s.known(cx, &["worker_pool"], &["use"])?;
        if let Some(n) = s.int(cx, "worker_pool")? {
            if n > 0 {
                root.set("workers", V::Int(n));
                cx.map("workers", s.key("worker_pool"));
            } else {
                cx.note(
                    &s.key("worker_pool"),
                    "0 (Snowbridge: one worker per CPU + 1): weir runs 1 transform worker unless `workers` is set",
                );
            }
        }
        all_uses.extend(uses(cx, &s)?);
    }
    for (i, u) in all_uses.iter().enumerate() {
        let dup = all_uses.iter().filter(|x| x.name == u.name).count() > 1;
        let path = if dup {
            format!("transform.use[{i}] \"{}\"", u.name)
        } else {
            u.body.path.clone()
        };
        let body = Section {
            path: path.clone(),
            attrs: u.body.attrs.clone(),
            blocks: u.body.blocks.clone(),
        };
        cx.map(format!("transforms[{i}]"), path);
        transforms.push(transform(cx, &u.name, &body)?);
    }
    if !transforms.is_empty() {
        root.set("transforms", V::Arr(transforms));
    }

    // target (default: stdout), failure target (default: stdout), filter target (default: silent)
    let mut batch = V::table();
    let mut limits = V::table();
    let sink = match top.block(cx, "target")? {
        Some(b) => {
            let u = one_use(cx, b, "target")?;
            cx.map("sink", u.body.path.clone());
            target(cx, &u, "sink", Some((&mut batch, &mut limits)))?
        }
        None => stdout(),
    };
    root.set("sink", sink);
    let failure = match top.block(cx, "failure_target")? {
        Some(b) => {
            let u = one_use(cx, b, "failure_target")?;
            cx.map("failure", u.body.path.clone());
            target(cx, &u, "failure", None)?
        }
        None => stdout(),
    };
    root.set("failure", failure);
    if let Some(b) = top.block(cx, "filter_target")? {
        let u = one_use(cx, b, "filter_target")?;
        cx.map("filtered", u.body.path.clone());
        let t = target(cx, &u, "filtered", None)?;
        // `silent` is what weir does without a filtered sink: acknowledge, write nothing.
        if u.name != "silent" {
            root.set("filtered", t);
        }
    }
    if !batch.is_empty_table() {
        root.set("batch", batch);
    }
    if !limits.is_empty_table() {
        root.set("limits", limits);
    }

    if let Some(b) = top.block(cx, "failure_parser")? {
        let s = top.sub(cx, b)?;
        s.known(cx, &["format"], &[])?;
        match s.string(cx, "format")?.as_deref() {
            None | Some("snowplow") => {}
            Some(f @ "event_forwarding") => {
                let mut t = V::table();
                t.set("format", V::Str(f.to_string()));
                root.set("bad_rows", t);
            }
            Some(other) => {
                return Err(cx.err(
                    &s.key("format"),
                    format!("expected one of `snowplow`, `event_forwarding`, found `{other}`"),
                ))
            }
        }
    }

    if let Some(b) = top.block(cx, "retry")? {
        retry(cx, &top.sub(cx, b)?, &mut root)?;
    }

    if let Some(b) = top.block(cx, "stats_receiver")? {
        let s = top.sub(cx, b)?;
        s.known(cx, &["buffer_sec", "timeout_sec"], &["use"])?;
        let buffer = s.int(cx, "buffer_sec")?.unwrap_or(60);
        if buffer < 1 {
            return Err(cx.err(
                &s.key("buffer_sec"),
                format!("expected at least 1 second, found {buffer}"),
            ));
        }
        if s.int(cx, "timeout_sec")?.is_some() {
            cx.note(
                &s.key("timeout_sec"),
                "ignored, as in Snowbridge (deprecated)",
            );
        }
        match uses(cx, &s)?.first() {
            Some(u) if u.name == "statsd" => {
                let b = &u.body;
                b.known(cx, &["address", "prefix", "tags"], &[])?;
                let mut t = V::table();
                // Snowbridge's defaults.
                let address = b.string(cx, "address")?.filter(|a| !a.is_empty());
                t.set(
                    "address",
                    V::Str(address.unwrap_or_else(|| "127.0.0.1:8125".into())),
                );
                let prefix = b.string(cx, "prefix")?.filter(|p| !p.is_empty());
                t.set(
                    "prefix",
                    V::Str(prefix.unwrap_or_else(|| "snowplow.snowbridge".into())),
                );
                t.set("flush_interval", V::Str(format!("{buffer}s")));
                if let Some(tags) = json_tags(cx, b, "tags")? {
                    t.set("tags", tags);
                }
                cx.map("metrics.statsd", b.path.clone());
                root.table_at("metrics").set("statsd", t);
            }
            Some(u) => return Err(cx.err(&u.body.path, unsupported("stats receiver", &u.name, 18))),
            None => cx.note(
                &s.path,
                "without a stats receiver this block does nothing; weir serves Prometheus \
                 metrics (`[http]`)",
            ),
        }
    }
    if let Some(b) = top.block(cx, "sentry")? {
        let b = top.sub(cx, b)?;
        b.known(cx, &["dsn", "tags", "debug"], &[])?;
        let mut t = V::table();
        let dsn = match b.string_env(cx, "dsn")? {
            // The DSN holds a key: read from the environment, it stays there.
            Some((_, Some(var))) => V::Table(vec![("env".into(), V::Str(var))]),
            Some((dsn, None)) => V::Secret(dsn, None),
            None => return Err(cx.err(&b.key("dsn"), "missing required key `dsn`")),
        };
        t.set("dsn", dsn);
        if let Some(tags) = json_tags(cx, &b, "tags")? {
            t.set("tags", tags);
        }
        if let Some(debug) = b.bool(cx, "debug")? {
            t.set("debug", V::Bool(debug));
        }
        cx.map("monitoring.sentry", b.path.clone());
        root.table_at("monitoring").set("sentry", t);
    }
    if let Some(b) = top.block(cx, "monitoring")? {
        let s = top.sub(cx, b)?;
        s.known(cx, &[], &["webhook", "metadata_reporter"])?;
        if let Some(m) = s.block(cx, "metadata_reporter")? {
            let m = s.sub(cx, m)?;
            m.known(cx, &["endpoint", "tags"], &[])?;
            let mut t = V::table();
            let endpoint = m.string(cx, "endpoint")?;
            t.set("endpoint", V::Str(m.required(cx, "endpoint", endpoint)?));
            if let Some(tags) = m.string_table(cx, "tags")? {
                t.set("tags", tags);
            }
            // Snowbridge reports at the stats receiver's interval (`buffer_sec`, default 60 s).
            let every = match top.block(cx, "stats_receiver")? {
                Some(b) => top.sub(cx, b)?.int(cx, "buffer_sec")?.unwrap_or(60),
                None => 60,
            };
            t.set("interval", V::Str(format!("{}s", every.max(1))));
            cx.map("monitoring.metadata_reporter", m.path.clone());
            root.table_at("monitoring").set("metadata_reporter", t);
        }
        if let Some(w) = s.block(cx, "webhook")? {
            let w = s.sub(cx, w)?;
            w.known(cx, &["endpoint", "tags", "heartbeat_interval_seconds"], &[])?;
            let mut t = V::table();
            let endpoint = w.string(cx, "endpoint")?;
            t.set("endpoint", V::Str(w.required(cx, "endpoint", endpoint)?));
            if let Some(tags) = w.string_table(cx, "tags")? {
                t.set("tags", tags);
            }
            // Snowbridge's default: 300 s.
            let every = w.int(cx, "heartbeat_interval_seconds")?.unwrap_or(300);
            if every < 1 {
                return Err(cx.err(
                    &w.key("heartbeat_interval_seconds"),
                    format!("expected at least 1 second, found {every}"),
                ));
            }
            t.set("heartbeat_interval", V::Str(format!("{every}s")));
            cx.map("monitoring.webhook", w.path.clone());
            root.table_at("monitoring").set("webhook", t);
        }
    }
    if let Some(b) = top.block(cx, "metrics")? {
        let s = top.sub(cx, b)?;
        s.known(
            cx,
            &["enable_e2e_latency", "enable_kinsumer_memory_metrics"],
            &[],
        )?;
        if let Some(on) = s.bool(cx, "enable_e2e_latency")? {
            root.table_at("metrics").set("e2e_latency", V::Bool(on));
            cx.map("metrics.e2e_latency", s.key("enable_e2e_latency"));
            if on {
                cx.note(
                    &s.key("enable_e2e_latency"),
                    "weir_e2e_latency_seconds (a histogram) at /metrics when an [http] address \
                     is set",
                );
            }
        }
        if s.bool(cx, "enable_kinsumer_memory_metrics")?.is_some() {
            cx.note(
                &s.key("enable_kinsumer_memory_metrics"),
                "a Snowbridge Kinesis-client metric; weir's Kinesis source has its own metrics",
            );
        }
    }
    if let Some(b) = top.block(cx, "license")? {
        let s = top.sub(cx, b)?;
        s.known(cx, &["accept"], &[])?;
        s.bool(cx, "accept")?;
        cx.note(
            &s.path,
            "Snowplow's licence for Snowbridge; weir (Apache-2.0) needs no acceptance",
        );
    }
    if let Some(level) = top.string(cx, "log_level")? {
        let weir = match level.to_ascii_lowercase().as_str() {
            "debug" => "debug",
            "info" => "info",
            "warning" | "warn" => "warn",
            "error" | "fatal" | "panic" => "error",
            _ => {
                return Err(cx.err(
                    "log_level",
                    format!(
                        "expected one of `debug`, `info`, `warning`, `error`, `fatal`, `panic`, \
                         found `{level}`"
                    ),
                ))
            }
        };
        cx.log_level = Some(weir.to_string());
        cx.note(
            "log_level",
            format!("weir logs at `{weir}` (the environment variable WEIR_LOG, if set, wins)"),
        );
    }
    top.bool(cx, "disable_telemetry")?;
    top.string(cx, "user_provided_id")?;
    for k in ["disable_telemetry", "user_provided_id"] {
        if top.has(k) {
            cx.note(k, "weir sends no telemetry; accepted and ignored");
        }
    }
    Ok(root)
}

fn stdout() -> V {
    V::Table(vec![("type".into(), V::Str("stdout".into()))])
}

fn typed(t: &str) -> V {
    V::Table(vec![("type".into(), V::Str(t.into()))])
}

/// Set `weir_key` from a string option and record where it came from.
fn put_str(
    cx: &mut Cx,
    s: &Section,
    out: &mut V,
    prefix: &str,
    hcl: &str,
    weir: &str,
    required: bool,
) -> Result<Option<String>, ConfigError> {
    let v = s.string(cx, hcl)?;
    let v = if required {
        Some(s.required(cx, hcl, v)?)
    } else {
        v
    };
    if let Some(v) = &v {
        out.set(weir, V::Str(v.clone()));
        cx.map(format!("{prefix}.{weir}"), s.key(hcl));
    }
    Ok(v)
}

// --- sources --------------------------------------------------------------------------------

const KAFKA_SECURITY: &[&str] = &[
    "enable_sasl",
    "sasl_username",
    "sasl_password",
    "sasl_algorithm",
    "sasl_version",
    "enable_tls",
    "cert_file",
    "key_file",
    "ca_file",
    "skip_verify_tls",
];

fn source(cx: &mut Cx, u: &Use) -> Result<V, ConfigError> {
    let s = &u.body;
    match u.name.as_str() {
        "stdin" => {
            s.known(cx, &[], &[])?;
            Ok(typed("stdin"))
        }
        "kafka" => {
            let opts: Vec<&str> = [
                "brokers",
                "topic_name",
                "consumer_name",
                "offsets_initial",
                "assignor",
                "target_version",
            ]
            .into_iter()
            .chain(KAFKA_SECURITY.iter().copied())
            .collect();
            s.known(cx, &opts, &[])?;
            let mut out = typed("kafka");
            put_str(
                cx,
                s,
                &mut out,
                "source",
                "brokers",
                "bootstrap_servers",
                true,
            )?;
            let topic = s.string(cx, "topic_name")?;
            let topic = s.required(cx, "topic_name", topic)?;
            out.set("topics", V::Arr(vec![V::Str(topic.clone())]));
            cx.map("source.topics", s.key("topic_name"));
            let consumer = s.string(cx, "consumer_name")?;
            let consumer = s.required(cx, "consumer_name", consumer)?;
            // Snowbridge's consumer group is `<consumer_name>-<topic_name>`.
            out.set("group_id", V::Str(format!("{consumer}-{topic}")));
            cx.map("source.group_id", s.key("consumer_name"));
            let offsets = s.int(cx, "offsets_initial")?;
            let start = match s.required(cx, "offsets_initial", offsets)? {
                -2 => "earliest",
                -1 => "latest",
                other => {
                    return Err(cx.err(
                        &s.key("offsets_initial"),
                        format!("expected -1 (newest) or -2 (oldest), found {other}"),
                    ))
                }
            };
            out.set("start", V::Str(start.into()));
            cx.map("source.start", s.key("offsets_initial"));
            let mut options = V::table();
            if let Some(a) = s.string(cx, "assignor")? {
                let strategy = match a.as_str() {
                    "range" => "range",
                    "roundrobin" => "roundrobin",
                    "sticky" => "cooperative-sticky",
                    other => {
                        return Err(cx.err(
                            &s.key("assignor"),
                            format!(
                                "expected one of `range`, `roundrobin`, `sticky`, found `{other}`"
                            ),
                        ))
                    }
                };
                options.set("partition.assignment.strategy", V::Str(strategy.into()));
                cx.map("source.options", s.key("assignor"));
            } else {
                cx.note(
                    &s.path,
                    "weir's consumer uses the cooperative-sticky assignor (Snowbridge's default is \
                     range); set `assignor` to choose",
                );
            }
            kafka_common(cx, s, "source", &mut options)?;
            if !options.is_empty_table() {
                out.set("options", options);
            }
            Ok(out)
        }
        "kinesis" => {
            s.known(
                cx,
                &[
                    "stream_name",
                    "region",
                    "app_name",
                    "role_arn",
                    "start_timestamp",
                    "read_throttle_delay_ms",
                    "custom_aws_endpoint",
                    "shard_check_freq_seconds",
                    "leader_action_freq_seconds",
                    "client_name",
                    "get_records_limit",
                    "max_concurrent_shards",
                ],
                &[],
            )?;
            let mut out = typed("kinesis");
            put_str(cx, s, &mut out, "source", "stream_name", "stream", true)?;
            put_str(cx, s, &mut out, "source", "region", "region", true)?;
            let app = s.string(cx, "app_name")?;
            let app = s.required(cx, "app_name", app)?;
            let table = format!("{app}_leases");
            out.set("lease_table", V::Str(table.clone()));
            cx.map("source.lease_table", s.key("app_name"));
            cx.note(
                &s.key("app_name"),
                format!(
                    "weir keeps shard leases and checkpoints in the DynamoDB table `{table}`; \
                     Snowbridge's checkpoints (`{app}_checkpoints`) are not read, so a first run \
                     starts at `start_timestamp` or the oldest record"
                ),
            );
            if let Some(ts) = s.string(cx, "start_timestamp")? {
                let rfc = snowbridge_timestamp(&ts).ok_or_else(|| {
                    cx.err(
                        &s.key("start_timestamp"),
                        format!("expected a time such as \"2020-01-01 10:00:00\" or \"2020-01-01 10:00:00.123\" (UTC), found \"{ts}\""),
                    )
                })?;
                out.set("initial_position", V::Str("at_timestamp".into()));
                out.set("timestamp", V::Str(rfc));
                cx.map("source.initial_position", s.key("start_timestamp"));
                cx.map("source.timestamp", s.key("start_timestamp"));
            }
            put_str(
                cx,
                s,
                &mut out,
                "source",
                "custom_aws_endpoint",
                "endpoint_url",
                false,
            )?;
            put_str(cx, s, &mut out, "source", "client_name", "worker_id", false)?;
            if let Some(n) = s.int(cx, "get_records_limit")? {
                out.set("max_records_per_call", V::Int(n));
                cx.map("source.max_records_per_call", s.key("get_records_limit"));
            }
            aws_role(cx, s, &mut out, "source")?;
            if let Some(ms) = s.int(cx, "read_throttle_delay_ms")? {
                if ms < 0 {
                    return Err(cx.err(
                        &s.key("read_throttle_delay_ms"),
                        format!("expected 0 or more milliseconds, found {ms}"),
                    ));
                }
                out.set("read_interval", V::Str(format!("{ms}ms")));
                cx.map("source.read_interval", s.key("read_throttle_delay_ms"));
            }
            if let Some(n) = s.int(cx, "max_concurrent_shards")? {
                if n < 1 {
                    return Err(cx.err(
                        &s.key("max_concurrent_shards"),
                        format!("expected at least 1, found {n}"),
                    ));
                }
                out.set("max_shards", V::Int(n));
                cx.map("source.max_shards", s.key("max_concurrent_shards"));
            }
            for (k, why, warn) in [
                (
                    "shard_check_freq_seconds",
                    "weir's leases are renewed and taken over by `lease_duration` instead",
                    false,
                ),
                (
                    "leader_action_freq_seconds",
                    "weir's leases are renewed and taken over by `lease_duration` instead",
                    false,
                ),
            ] {
                if s.has(k) {
                    s.int(cx, k)?;
                    if warn {
                        cx.warn(&s.key(k), format!("ignored: {why}"));
                    } else {
                        cx.note(&s.key(k), format!("ignored: {why}"));
                    }
                }
            }
            Ok(out)
        }
        "sqs" => {
            s.known(
                cx,
                &[
                    "queue_name",
                    "region",
                    "role_arn",
                    "custom_aws_endpoint",
                    "concurrent_writes",
                ],
                &[],
            )?;
            let mut out = typed("sqs");
            put_str(cx, s, &mut out, "source", "queue_name", "queue", true)?;
            put_str(cx, s, &mut out, "source", "region", "region", true)?;
            put_str(
                cx,
                s,
                &mut out,
                "source",
                "custom_aws_endpoint",
                "endpoint_url",
                false,
            )?;
            if s.has("concurrent_writes") {
                s.int(cx, "concurrent_writes")?;
                cx.note(
                    &s.key("concurrent_writes"),
                    "ignored: weir's SQS source receives with `receivers` long polls and holds at \
                     most `max_in_flight` messages; transforms and sinks run on their own",
                );
            }
            aws_role(cx, s, &mut out, "source")?;
            Ok(out)
        }
        "pubsub" => {
            s.known(
                cx,
                &[
                    "project_id",
                    "subscription_id",
                    "max_outstanding_messages",
                    "max_outstanding_bytes",
                    "min_extension_period_seconds",
                    "streaming_pull_goroutines",
                    "grpc_connection_pool_size",
                    "credentials_path",
                ],
                &[],
            )?;
            let mut out = typed("pubsub");
            put_str(cx, s, &mut out, "source", "project_id", "project_id", true)?;
            put_str(
                cx,
                s,
                &mut out,
                "source",
                "subscription_id",
                "subscription",
                true,
            )?;
            put_str(
                cx,
                s,
                &mut out,
                "source",
                "credentials_path",
                "credentials_path",
                false,
            )?;
            // Snowbridge's defaults: 1,000 messages, 1e9 bytes, one pull at a time.
            for (hcl, weir, min) in [
                ("max_outstanding_messages", "max_in_flight", 1),
                ("max_outstanding_bytes", "max_in_flight_bytes", 1),
                ("streaming_pull_goroutines", "receivers", 1),
                ("grpc_connection_pool_size", "pool_size", 1),
            ] {
                if let Some(n) = s.int(cx, hcl)? {
                    // Snowbridge (the Go client) takes 0 or less as its default.
                    if n >= min {
                        out.set(weir, V::Int(n));
                        cx.map(format!("source.{weir}"), s.key(hcl));
                    }
                }
            }
            if let Some(secs) = s.int(cx, "min_extension_period_seconds")? {
                // The Go client extends leases by at least this; weir leases for this long, in
                // Pub/Sub's range (0: the client's default, weir's 60 s).
                if secs > 0 {
                    out.set("ack_deadline", V::Str(format!("{}s", secs.clamp(10, 600))));
                    cx.map("source.ack_deadline", s.key("min_extension_period_seconds"));
                }
            }
            Ok(out)
        }
        "http" => Err(cx.err(&s.path, unsupported("source", &u.name, 18))),
        other => Err(cx.err(
            &s.path,
            unknown_component(
                "source",
                other,
                &["stdin", "kafka", "kinesis", "pubsub", "sqs", "http"],
            ),
        )),
    }
}

fn unknown_component(role: &str, name: &str, known: &[&str]) -> String {
    let mut m = format!(
        "unknown {role} `{name}`; Snowbridge's {role}s are {}",
        known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(s) = crate::config::suggest(name, known.iter().copied()) {
        m.push_str(&format!("; did you mean `{s}`?"));
    }
    m
}

fn aws_role(cx: &mut Cx, s: &Section, out: &mut V, prefix: &str) -> Result<(), ConfigError> {
    // Snowbridge leaves an empty `role_arn` to the default credentials, as weir does without one.
    if s.string(cx, "role_arn")?.is_some_and(|arn| !arn.is_empty()) {
        put_str(cx, s, out, prefix, "role_arn", "role_arn", false)?;
    }
    Ok(())
}

/// `2020-01-01 10:00:00[.123]` (UTC, Snowbridge's format) → RFC 3339.
fn snowbridge_timestamp(ts: &str) -> Option<String> {
    let (date, time) = ts.trim().split_once(' ')?;
    let d: Vec<&str> = date.split('-').collect();
    let (hms, frac) = match time.split_once('.') {
        Some((h, f)) => (h, Some(f)),
        None => (time, None),
    };
    let t: Vec<&str> = hms.split(':').collect();
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let ok = d.len() == 3
        && digits(d[0], 4)
        && digits(d[1], 2)
        && digits(d[2], 2)
        && t.len() == 3
        && t.iter().all(|x| digits(x, 2))
        && frac
            .is_none_or(|f| !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return None;
    }
    Some(match frac {
        Some(f) => format!("{date}T{hms}.{f}Z"),
        None => format!("{date}T{hms}Z"),
    })
}

/// SASL and TLS options (sources and targets alike) into librdkafka settings.
fn kafka_common(
    cx: &mut Cx,
    s: &Section,
    prefix: &str,
    options: &mut V,
) -> Result<(), ConfigError> {
    let sasl = s.bool(cx, "enable_sasl")?.unwrap_or(false);
    let tls = s.bool(cx, "enable_tls")?.unwrap_or(false);
    if let Some(v) = s.string(cx, "target_version")? {
        cx.note(
            &s.key("target_version"),
            format!("`{v}`: librdkafka negotiates protocol versions with the broker; ignored"),
        );
    }
    let protocol = match (sasl, tls) {
        (true, true) => Some("SASL_SSL"),
        (true, false) => Some("SASL_PLAINTEXT"),
        (false, true) => Some("SSL"),
        (false, false) => None,
    };
    let opt_path = format!("{prefix}.options");
    if let Some(p) = protocol {
        options.set("security.protocol", V::Str(p.into()));
        cx.map(opt_path.clone(), s.path.clone());
    }
    let algorithm = s.string(cx, "sasl_algorithm")?;
    let user = s.string(cx, "sasl_username")?;
    let password = s.string_env(cx, "sasl_password")?;
    let version = s.int(cx, "sasl_version")?;
    if let Some(v) = version {
        if v != 0 && v != 1 {
            return Err(cx.err(
                &s.key("sasl_version"),
                format!("expected 0 or 1, found {v}"),
            ));
        }
    }
    if sasl {
        let mechanism = match algorithm.as_deref().unwrap_or("sha512") {
            "sha512" => "SCRAM-SHA-512",
            "sha256" => "SCRAM-SHA-256",
            "plaintext" => "PLAIN",
            other => {
                return Err(cx.err(
                    &s.key("sasl_algorithm"),
                    format!("expected one of `sha256`, `sha512`, `plaintext`, found `{other}`"),
                ))
            }
        };
        options.set("sasl.mechanism", V::Str(mechanism.into()));
        if let Some(u) = user {
            options.set("sasl.username", V::Str(u));
        }
        if let Some((p, env)) = password {
            options.set("sasl.password", V::Secret(p, env));
        }
        if version.is_some() {
            cx.note(
                &s.key("sasl_version"),
                "librdkafka picks the SASL handshake version itself; ignored",
            );
        }
    } else {
        for k in [
            "sasl_username",
            "sasl_password",
            "sasl_algorithm",
            "sasl_version",
        ] {
            if s.has(k) {
                cx.note(
                    &s.key(k),
                    "ignored, as in Snowbridge, because `enable_sasl` is false",
                );
            }
        }
    }
    let files = [
        ("cert_file", "ssl.certificate.location"),
        ("key_file", "ssl.key.location"),
        ("ca_file", "ssl.ca.location"),
    ];
    let skip = s.bool(cx, "skip_verify_tls")?.unwrap_or(false);
    if tls {
        for (k, opt) in files {
            if let Some(v) = s.string(cx, k)? {
                if !v.is_empty() {
                    options.set(opt, V::Str(v));
                }
            }
        }
        if skip {
            options.set(
                "enable.ssl.certificate.verification",
                V::Str("false".into()),
            );
            options.set(
                "ssl.endpoint.identification.algorithm",
                V::Str("none".into()),
            );
        }
    } else {
        for (k, _) in files {
            s.string(cx, k)?;
        }
        for k in ["cert_file", "key_file", "ca_file", "skip_verify_tls"] {
            if s.has(k) {
                cx.note(
                    &s.key(k),
                    "ignored, as in Snowbridge, because `enable_tls` is false",
                );
            }
        }
    }
    Ok(())
}

// --- targets --------------------------------------------------------------------------------

const BATCHING: &[&str] = &[
    "max_batch_messages",
    "max_batch_bytes",
    "max_message_bytes",
    "max_concurrent_batches",
    "flush_period_millis",
];

/// A target's `batching` block: the main target's goes to weir's pipeline-wide `[batch]` and
/// `[limits]` (weir batches at the source, and every sink writes whole batches).
struct Batching {
    max_batch_messages: Option<i64>,
    max_batch_bytes: Option<i64>,
    max_message_bytes: Option<i64>,
    max_concurrent_batches: Option<i64>,
}

fn batching(
    cx: &mut Cx,
    s: &Section,
    main: Option<(&mut V, &mut V)>,
) -> Result<Batching, ConfigError> {
    let Some(b) = s.block(cx, "batching")? else {
        return Ok(Batching {
            max_batch_messages: None,
            max_batch_bytes: None,
            max_message_bytes: None,
            max_concurrent_batches: None,
        });
    };
    let b = s.sub(cx, b)?;
    b.known(cx, BATCHING, &[])?;
    let mut vals = HashMap::new();
    for k in BATCHING {
        if let Some(v) = b.int(cx, k)? {
            if v < 1 {
                return Err(cx.err(&b.key(k), format!("expected at least 1, found {v}")));
            }
            vals.insert(*k, v);
        }
    }
    match main {
        Some((batch, limits)) => {
            for (k, section, weir, v) in [
                (
                    "max_batch_messages",
                    "batch",
                    "max_records",
                    vals.get("max_batch_messages").map(|v| V::Int(*v)),
                ),
                (
                    "max_batch_bytes",
                    "batch",
                    "max_bytes",
                    vals.get("max_batch_bytes").map(|v| V::Int(*v)),
                ),
                (
                    "flush_period_millis",
                    "batch",
                    "flush_interval",
                    vals.get("flush_period_millis")
                        .map(|v| V::Str(format!("{v}ms"))),
                ),
                (
                    "max_message_bytes",
                    "limits",
                    "max_record_bytes",
                    vals.get("max_message_bytes").map(|v| V::Int(*v)),
                ),
            ] {
                if let Some(v) = v {
                    let t = if section == "batch" {
                        &mut *batch
                    } else {
                        &mut *limits
                    };
                    t.set(weir, v);
                    cx.map(format!("{section}.{weir}"), b.key(k));
                }
            }
        }
        None => {
            for k in [
                "max_batch_messages",
                "max_batch_bytes",
                "flush_period_millis",
            ] {
                if vals.contains_key(k) {
                    cx.note(
                        &b.key(k),
                        "ignored: weir batches once, at the source; the main target's batching sets it",
                    );
                }
            }
        }
    }
    Ok(Batching {
        max_batch_messages: vals.get("max_batch_messages").copied(),
        max_batch_bytes: vals.get("max_batch_bytes").copied(),
        max_message_bytes: vals.get("max_message_bytes").copied(),
        max_concurrent_batches: vals.get("max_concurrent_batches").copied(),
    })
}

fn target(
    cx: &mut Cx,
    u: &Use,
    prefix: &str,
    main: Option<(&mut V, &mut V)>,
) -> Result<V, ConfigError> {
    let s = &u.body;
    let concurrency_note = |cx: &mut Cx, b: &Batching| {
        if b.max_concurrent_batches.is_some() {
            cx.note(
                &s.key("batching.max_concurrent_batches"),
                "ignored: weir writes one batch at a time per sink, in order",
            );
        }
    };
    match u.name.as_str() {
        "stdout" => {
            s.known(cx, &["data_only_output"], &["batching"])?;
            let b = batching(cx, s, main)?;
            concurrency_note(cx, &b);
            if s.bool(cx, "data_only_output")? != Some(true) {
                cx.note(
                    &s.path,
                    "weir's stdout sink writes the data only, as Snowbridge does with \
                     `data_only_output = true` (not its `PartitionKey:…,Data:…` debug lines)",
                );
            }
            Ok(stdout())
        }
        "silent" => {
            s.known(cx, &[], &["batching"])?;
            batching(cx, s, main)?;
            Ok(typed("null"))
        }
        "kafka" => {
            let opts: Vec<&str> = [
                "brokers",
                "topic_name",
                "target_version",
                "max_retries",
                "compress",
                "wait_for_all",
                "idempotent",
                "force_sync_producer",
            ]
            .into_iter()
            .chain(KAFKA_SECURITY.iter().copied())
            .collect();
            s.known(cx, &opts, &["batching"])?;
            let b = batching(cx, s, main)?;
            concurrency_note(cx, &b);
            let mut out = typed("kafka");
            put_str(
                cx,
                s,
                &mut out,
                prefix,
                "brokers",
                "bootstrap_servers",
                true,
            )?;
            put_str(cx, s, &mut out, prefix, "topic_name", "topic", true)?;
            let compress = s.bool(cx, "compress")?.unwrap_or(false);
            out.set(
                "compression",
                V::Str(if compress { "snappy" } else { "none" }.into()),
            );
            cx.map(format!("{prefix}.compression"), s.key("compress"));
            let idempotent = s.bool(cx, "idempotent")?.unwrap_or(false);
            out.set("idempotence", V::Bool(idempotent));
            cx.map(format!("{prefix}.idempotence"), s.key("idempotent"));
            // Snowbridge's default maximum message size is 1 MiB, as weir's.
            out.set(
                "max_message_bytes",
                V::Int(b.max_message_bytes.unwrap_or(1 << 20)),
            );
            cx.map(
                format!("{prefix}.max_message_bytes"),
                s.key("batching.max_message_bytes"),
            );
            let mut options = V::table();
            if s.bool(cx, "wait_for_all")? == Some(true) {
                options.set("acks", V::Str("all".into()));
            }
            if let Some(n) = s.int(cx, "max_retries")? {
                cx.note(
                    &s.key("max_retries"),
                    format!("{n}: weir's producer retries until `delivery_timeout`, then the pipeline retries the batch"),
                );
            }
            if s.bool(cx, "force_sync_producer")? == Some(true) {
                cx.note(
                    &s.key("force_sync_producer"),
                    "weir's producer always waits for every record of a batch to be acknowledged",
                );
            }
            kafka_common(cx, s, prefix, &mut options)?;
            if !options.is_empty_table() {
                out.set("options", options);
                cx.map(format!("{prefix}.options"), s.path.clone());
            }
            Ok(out)
        }
        "kinesis" => {
            s.known(
                cx,
                &["stream_name", "region", "role_arn", "custom_aws_endpoint"],
                &["batching"],
            )?;
            let b = batching(cx, s, main)?;
            let mut out = typed("kinesis");
            put_str(cx, s, &mut out, prefix, "stream_name", "stream", true)?;
            put_str(cx, s, &mut out, prefix, "region", "region", true)?;
            put_str(
                cx,
                s,
                &mut out,
                prefix,
                "custom_aws_endpoint",
                "endpoint_url",
                false,
            )?;
            // Snowbridge's default: 5 batches in flight.
            out.set("concurrency", V::Int(b.max_concurrent_batches.unwrap_or(5)));
            cx.map(
                format!("{prefix}.concurrency"),
                s.key("batching.max_concurrent_batches"),
            );
            if b.max_message_bytes.is_some() {
                cx.note(
                    &s.key("batching.max_message_bytes"),
                    "weir's Kinesis sink refuses records over Kinesis's own 1 MiB limit",
                );
            }
            aws_role(cx, s, &mut out, prefix)?;
            Ok(out)
        }
        "sqs" => {
            s.known(
                cx,
                &["queue_name", "region", "role_arn", "custom_aws_endpoint"],
                &["batching"],
            )?;
            let b = batching(cx, s, main)?;
            let mut out = typed("sqs");
            put_str(cx, s, &mut out, prefix, "queue_name", "queue", true)?;
            put_str(cx, s, &mut out, prefix, "region", "region", true)?;
            put_str(
                cx,
                s,
                &mut out,
                prefix,
                "custom_aws_endpoint",
                "endpoint_url",
                false,
            )?;
            // Snowbridge's default: 5 batches in flight.
            out.set("concurrency", V::Int(b.max_concurrent_batches.unwrap_or(5)));
            cx.map(
                format!("{prefix}.concurrency"),
                s.key("batching.max_concurrent_batches"),
            );
            if b.max_message_bytes.is_some() {
                cx.note(
                    &s.key("batching.max_message_bytes"),
                    "weir's SQS sink refuses records over the queue's own MaximumMessageSize",
                );
            }
            aws_role(cx, s, &mut out, prefix)?;
            Ok(out)
        }
        "http" => http_target(cx, s, prefix, main),
        "eventhub" => eventhub_target(cx, s, prefix, main),
        "pubsub" => {
            s.known(
                cx,
                &["project_id", "topic_name", "credentials_path"],
                &["batching"],
            )?;
            let b = batching(cx, s, main)?;
            let mut out = typed("pubsub");
            put_str(cx, s, &mut out, prefix, "project_id", "project_id", true)?;
            put_str(cx, s, &mut out, prefix, "topic_name", "topic", true)?;
            put_str(
                cx,
                s,
                &mut out,
                prefix,
                "credentials_path",
                "credentials_path",
                false,
            )?;
            // Snowbridge's defaults: 100 messages and 10 MiB a request, 5 requests in flight.
            out.set(
                "max_batch_messages",
                V::Int(b.max_batch_messages.unwrap_or(100).min(1000)),
            );
            cx.map(
                format!("{prefix}.max_batch_messages"),
                s.key("batching.max_batch_messages"),
            );
            if let Some(bytes) = b.max_batch_bytes {
                out.set("max_batch_bytes", V::Int(bytes.min(10 * 1024 * 1024)));
                cx.map(
                    format!("{prefix}.max_batch_bytes"),
                    s.key("batching.max_batch_bytes"),
                );
            }
            out.set("concurrency", V::Int(b.max_concurrent_batches.unwrap_or(5)));
            cx.map(
                format!("{prefix}.concurrency"),
                s.key("batching.max_concurrent_batches"),
            );
            Ok(out)
        }
        other => Err(cx.err(
            &s.path,
            unknown_component(
                "target",
                other,
                &[
                    "stdout", "silent", "kafka", "kinesis", "pubsub", "sqs", "eventhub", "http",
                ],
            ),
        )),
    }
}

/// Where Event Hubs' Kafka endpoint listens: `<namespace>.servicebus.windows.net:9093`, or a
/// namespace given as a host name (with a dot: another Azure cloud, e.g.
/// `ns.servicebus.chinacloudapi.cn`) and optional port, as it is.
pub const EVENTHUB_DOMAIN: &str = "servicebus.windows.net";
/// The connection string's variable, as Snowbridge's Event Hubs client reads it.
pub const EVENTHUB_CONNECTION_STRING: &str = "EVENTHUB_CONNECTION_STRING";

/// Snowbridge's `eventhub` target (`pkg/target/eventhub`) as weir's `kafka` sink on Event Hubs'
/// Kafka endpoint: SASL PLAIN over TLS, user `$ConnectionString`, the connection string from
/// `EVENTHUB_CONNECTION_STRING` as the password (read when weir runs, never written out).
fn eventhub_target(
    cx: &mut Cx,
    s: &Section,
    prefix: &str,
    main: Option<(&mut V, &mut V)>,
) -> Result<V, ConfigError> {
    s.known(
        cx,
        &[
            "namespace",
            "name",
            "max_auto_retries",
            "context_timeout_in_seconds",
            "set_eh_partition_key",
        ],
        &["batching"],
    )?;
    let b = batching(cx, s, main)?;
    let mut out = typed("kafka");
    let Some(namespace) = s.string(cx, "namespace")?.filter(|n| !n.is_empty()) else {
        return Err(cx.err(
            &s.key("namespace"),
            "expected the Event Hubs namespace, found nothing",
        ));
    };
    let host = if namespace.contains('.') {
        namespace.clone()
    } else {
        format!("{namespace}.{EVENTHUB_DOMAIN}")
    };
    let bootstrap = if host.contains(':') {
        host
    } else {
        format!("{host}:9093")
    };
    out.set("bootstrap_servers", V::Str(bootstrap));
    cx.map(format!("{prefix}.bootstrap_servers"), s.key("namespace"));
    put_str(cx, s, &mut out, prefix, "name", "topic", true)?;
    let mut tls = V::table();
    tls.set("verify", V::Bool(true));
    out.set("tls", tls);
    let mut sasl = V::table();
    sasl.set("mechanism", V::Str("PLAIN".into()));
    sasl.set("username", V::Str("$ConnectionString".into()));
    let mut password = V::table();
    password.set("env", V::Str(EVENTHUB_CONNECTION_STRING.into()));
    sasl.set("password", password);
    out.set("sasl", sasl);
    cx.map(format!("{prefix}.sasl"), s.path.clone());
    cx.note(
        &s.path,
        format!(
            "weir writes to Event Hubs through its Kafka endpoint, authenticated by \
             `{EVENTHUB_CONNECTION_STRING}` (EVENTHUB_KEY_NAME / EVENTHUB_KEY_VALUE and Azure AD \
             credentials are not supported)"
        ),
    );
    // Snowbridge's default maximum message size is 1,000,000 bytes (Event Hubs' own limit is
    // 1 MiB per event on the standard tier).
    out.set(
        "max_message_bytes",
        V::Int(b.max_message_bytes.unwrap_or(1_000_000)),
    );
    cx.map(
        format!("{prefix}.max_message_bytes"),
        s.key("batching.max_message_bytes"),
    );
    if let Some(n) = s.int(cx, "max_auto_retries")? {
        cx.note(
            &s.key("max_auto_retries"),
            format!("{n}: weir's producer retries until `delivery_timeout`, then the pipeline retries the batch"),
        );
    }
    if let Some(secs) = s.int(cx, "context_timeout_in_seconds")? {
        if secs < 1 {
            return Err(cx.err(
                &s.key("context_timeout_in_seconds"),
                format!("expected at least 1 second, found {secs}"),
            ));
        }
        out.set("delivery_timeout", V::Str(format!("{secs}s")));
        cx.map(
            format!("{prefix}.delivery_timeout"),
            s.key("context_timeout_in_seconds"),
        );
    }
    if s.bool(cx, "set_eh_partition_key")? == Some(false) {
        cx.note(
            &s.key("set_eh_partition_key"),
            "false: weir still sends a record's partition key, when it has one, as the Kafka key",
        );
    }
    Ok(out)
}

/// Snowbridge's `http` target (`pkg/target/http/http.go`) as weir's `http` sink.
fn http_target(
    cx: &mut Cx,
    s: &Section,
    prefix: &str,
    main: Option<(&mut V, &mut V)>,
) -> Result<V, ConfigError> {
    s.known(
        cx,
        &[
            "url",
            "request_timeout_in_millis",
            "content_type",
            "headers",
            "basic_auth_username",
            "basic_auth_password",
            "enable_tls",
            "cert_file",
            "key_file",
            "ca_file",
            "skip_verify_tls",
            "dynamic_headers",
            "oauth2_client_id",
            "oauth2_client_secret",
            "oauth2_refresh_token",
            "oauth2_token_url",
            "template_file",
            "include_timing_headers",
            "rejection_threshold_in_millis",
            "metadata_safe_mode",
        ],
        &["batching", "response_rules"],
    )?;
    let b = batching(cx, s, main)?;
    let mut out = typed("http");
    put_str(cx, s, &mut out, prefix, "url", "url", true)?;
    // A value read from the environment stays a reference to it in weir's config.
    let secret = |v: (String, Option<String>)| match v {
        (_, Some(env)) => V::Table(vec![("env".into(), V::Str(env))]),
        (text, None) => V::Str(text),
    };
    for (hcl, weir, default) in [
        ("request_timeout_in_millis", "timeout", 5000),
        ("rejection_threshold_in_millis", "rejection_threshold", 150),
    ] {
        let ms = s.int(cx, hcl)?.unwrap_or(default);
        if ms < 1 {
            return Err(cx.err(&s.key(hcl), format!("expected at least 1, found {ms}")));
        }
        out.set(weir, V::Str(format!("{ms}ms")));
        cx.map(format!("{prefix}.{weir}"), s.key(hcl));
    }
    put_str(
        cx,
        s,
        &mut out,
        prefix,
        "content_type",
        "content_type",
        false,
    )?;
    if let Some(t) = s.string_table(cx, "headers")? {
        out.set("headers", t);
        cx.map(format!("{prefix}.headers"), s.key("headers"));
    }
    let user = s.string_env(cx, "basic_auth_username")?;
    let password = s.string_env(cx, "basic_auth_password")?;
    let oauth_id = s.string_env(cx, "oauth2_client_id")?;
    // As Snowbridge: OAuth2 when a client id is set (its token then replaces basic auth's
    // header), else basic auth when either of its values is set.
    let basic = user.iter().chain(&password).any(|(v, _)| !v.is_empty());
    if let Some(id) = oauth_id.filter(|(v, _)| !v.is_empty()) {
        let mut t = V::table();
        t.set("client_id", secret(id));
        for (hcl, weir) in [
            ("oauth2_client_secret", "client_secret"),
            ("oauth2_refresh_token", "refresh_token"),
        ] {
            if let Some(v) = s.string_env(cx, hcl)? {
                t.set(weir, secret(v));
            }
        }
        let url = s.string(cx, "oauth2_token_url")?;
        t.set(
            "token_url",
            V::Str(s.required(cx, "oauth2_token_url", url)?),
        );
        if basic {
            cx.note(
                &s.key("basic_auth_username"),
                "ignored, as in Snowbridge, whose OAuth2 token replaces the basic auth header",
            );
        }
        out.set("oauth2", t);
        cx.map(format!("{prefix}.oauth2"), s.path.clone());
    } else if basic {
        let mut t = V::table();
        for (k, v) in [("username", user), ("password", password)] {
            if let Some(v) = v {
                t.set(k, secret(v));
            }
        }
        out.set("basic_auth", t);
        cx.map(format!("{prefix}.basic_auth"), s.path.clone());
    }
    let tls = s.bool(cx, "enable_tls")?.unwrap_or(false);
    let files: Vec<(&str, Option<String>)> = ["cert_file", "key_file", "ca_file"]
        .into_iter()
        .map(|k| Ok((k, s.string(cx, k)?.filter(|v| !v.is_empty()))))
        .collect::<Result<_, ConfigError>>()?;
    let skip = s.bool(cx, "skip_verify_tls")?.unwrap_or(false);
    // Snowbridge applies its TLS settings only with a client certificate and key.
    if tls && files[0].1.is_some() && files[1].1.is_some() {
        let mut t = V::table();
        for (k, v) in &files {
            if let Some(v) = v {
                t.set(k, V::Str(v.clone()));
            }
        }
        if files[2].1.is_some() {
            cx.note(
                &s.key("ca_file"),
                "weir trusts only the CAs of ca_file; Snowbridge adds them to the system's",
            );
        }
        t.set("verify", V::Bool(!skip));
        out.set("tls", t);
        cx.map(format!("{prefix}.tls"), s.path.clone());
    } else {
        for k in ["cert_file", "key_file", "ca_file", "skip_verify_tls"] {
            if s.has(k) {
                cx.note(
                    &s.key(k),
                    "ignored, as in Snowbridge, which applies TLS settings only with enable_tls, cert_file and key_file",
                );
            }
        }
    }
    for (hcl, weir) in [
        ("dynamic_headers", "dynamic_headers"),
        ("include_timing_headers", "include_timing_headers"),
    ] {
        if let Some(v) = s.bool(cx, hcl)? {
            out.set(weir, V::Bool(v));
            cx.map(format!("{prefix}.{weir}"), s.key(hcl));
        }
    }
    if s.bool(cx, "metadata_safe_mode")? == Some(false) {
        out.set("response_body_in_errors", V::Bool(true));
        cx.map(
            format!("{prefix}.response_body_in_errors"),
            s.key("metadata_safe_mode"),
        );
    }
    put_str(
        cx,
        s,
        &mut out,
        prefix,
        "template_file",
        "template_file",
        false,
    )?;
    for (weir, v, hcl, default) in [
        (
            "max_batch_messages",
            b.max_batch_messages,
            "max_batch_messages",
            50,
        ),
        (
            "max_batch_bytes",
            b.max_batch_bytes,
            "max_batch_bytes",
            1 << 20,
        ),
        (
            "max_message_bytes",
            b.max_message_bytes,
            "max_message_bytes",
            1 << 20,
        ),
        (
            "concurrency",
            b.max_concurrent_batches,
            "max_concurrent_batches",
            5,
        ),
    ] {
        out.set(weir, V::Int(v.unwrap_or(default)));
        cx.map(
            format!("{prefix}.{weir}"),
            s.key(&format!("batching.{hcl}")),
        );
    }
    if let Some(rules) = s.block(cx, "response_rules")? {
        let rules = s.sub(cx, rules)?;
        rules.known(cx, &[], &["rule"])?;
        let mut list = Vec::new();
        for (i, r) in rules.blocks.iter().enumerate() {
            let r = rules.sub(cx, r)?;
            r.known(cx, &["type", "http_codes", "body"], &[])?;
            let mut t = V::table();
            let kind_ = r.string(cx, "type")?.unwrap_or_default();
            if !["invalid", "setup", "throttle", "fatal"].contains(&kind_.as_str()) {
                return Err(cx.err(
                    &r.key("type"),
                    format!(
                        "expected one of `invalid`, `setup`, `throttle`, `fatal`, found `{kind_}`"
                    ),
                ));
            }
            t.set("type", V::Str(kind_));
            let codes = match r.value(cx, "http_codes")? {
                None => Vec::new(),
                Some((hcl::Value::Array(a), _)) => a
                    .iter()
                    .map(|c| match c.as_u64() {
                        Some(c) if c <= 999 => Ok(V::Int(c as i64)),
                        _ => Err(cx.err(
                            &r.key("http_codes"),
                            format!("expected status codes (0 to 999), found {c}"),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                Some((v, _)) => {
                    return Err(cx.err(
                        &r.key("http_codes"),
                        format!("expected a list of status codes, found {}", kind(&v)),
                    ))
                }
            };
            t.set("http_codes", V::Arr(codes));
            if let Some(body) = r.string(cx, "body")? {
                t.set("body", V::Str(body));
            }
            cx.map(format!("{prefix}.response_rules[{i}]"), r.path.clone());
            list.push(t);
        }
        out.set("response_rules", V::Arr(list));
    }
    Ok(out)
}

/// Snowbridge's `tags`: an escaped JSON object of strings (empty: none), as a table.
fn json_tags(cx: &Cx, b: &Section<'_>, name: &str) -> Result<Option<V>, ConfigError> {
    let Some(tags) = b.string(cx, name)? else {
        return Ok(None);
    };
    let parsed: std::collections::BTreeMap<String, String> =
        serde_json::from_str(if tags.is_empty() { "{}" } else { &tags }).map_err(|e| {
            cx.err(
                &b.key(name),
                format!("expected a JSON object of strings, found {tags:?}: {e}"),
            )
        })?;
    let mut m = V::table();
    for (k, v) in parsed {
        m.set(&k, V::Str(v));
    }
    Ok(Some(m))
}

// --- transforms -----------------------------------------------------------------------------

const SNOWBRIDGE_TRANSFORMS: &[&str] = &[
    "spEnrichedFilter",
    "spEnrichedFilterContext",
    "spEnrichedFilterUnstructEvent",
    "spEnrichedSetPk",
    "spEnrichedToJson",
    "spGtmssPreview",
    "base64Encode",
    "base64Decode",
    "jq",
    "jqFilter",
    "js",
];

fn transform(cx: &mut Cx, name: &str, s: &Section) -> Result<V, ConfigError> {
    if !SNOWBRIDGE_TRANSFORMS.contains(&name) {
        return Err(cx.err(
            &s.path,
            unknown_component("transformation", name, SNOWBRIDGE_TRANSFORMS),
        ));
    }
    if !crate::transforms::REGISTRY.iter().any(|r| r.name == name) {
        return Err(cx.err(&s.path, unsupported("transformation", name, 17)));
    }
    // weir's transforms of the same name take Snowbridge's option names: pass them through and
    // let weir's strict config check them. Snowbridge requires `filter_action`; weir would
    // default it, so require it here.
    if name.starts_with("spEnrichedFilter") && !s.has("filter_action") {
        return Err(cx.err(
            &s.key("filter_action"),
            "missing required key `filter_action`",
        ));
    }
    if let Some(b) = s.blocks.first() {
        return Err(cx.err(
            &s.key(b.identifier.as_str()),
            format!(
                "unknown block `{}`: {name} takes no blocks",
                b.identifier.as_str()
            ),
        ));
    }
    let mut out = typed(name);
    for (k, _) in &s.attrs {
        if *k == "type" {
            return Err(cx.err(&s.key(k), unknown_key_message(k, &[])));
        }
        let (v, env) = s.value(cx, k)?.expect_or_null();
        let v = match env {
            // A secret stays in the environment: weir reads `{ env = "X" }` itself, so the
            // converted config names the variable and never holds the value.
            Some(var) if k.ends_with("_secret") => V::Table(vec![("env".into(), V::Str(var))]),
            // A script's path is not a secret: the converted config holds it.
            _ => to_v(v, None),
        };
        out.set(k, v);
    }
    Ok(out)
}

trait NullExt {
    fn expect_or_null(self) -> (hcl::Value, Option<String>);
}
impl NullExt for Option<(hcl::Value, Option<String>)> {
    fn expect_or_null(self) -> (hcl::Value, Option<String>) {
        self.unwrap_or((hcl::Value::Null, None))
    }
}

fn to_v(v: hcl::Value, env: Option<String>) -> V {
    match v {
        hcl::Value::Null => V::Str(String::new()),
        hcl::Value::Bool(b) => V::Bool(b),
        hcl::Value::Number(n) => match n.as_i64() {
            Some(i) => V::Int(i),
            None => V::Float(n.as_f64().unwrap_or_default()),
        },
        hcl::Value::String(s) if env.is_some() => V::Secret(s, env),
        hcl::Value::String(s) => V::Str(s),
        hcl::Value::Array(a) => V::Arr(a.into_iter().map(|x| to_v(x, None)).collect()),
        hcl::Value::Object(o) => V::Table(o.into_iter().map(|(k, x)| (k, to_v(x, None))).collect()),
    }
}

// --- retry ----------------------------------------------------------------------------------

fn retry(cx: &mut Cx, s: &Section, root: &mut V) -> Result<(), ConfigError> {
    s.known(cx, &[], &["transient", "setup", "throttle"])?;
    let supported = cx.retry_supported;
    let mut out = V::table();
    for class in ["transient", "setup", "throttle"] {
        let Some(b) = s.block(cx, class)? else {
            continue;
        };
        let c = s.sub(cx, b)?;
        c.known(cx, &["delay_ms", "max_attempts", "invalid_after_max"], &[])?;
        let t = out.table_at(class);
        for k in ["delay_ms", "max_attempts"] {
            if let Some(v) = c.int(cx, k)? {
                if v < 0 {
                    return Err(cx.err(&c.key(k), format!("expected 0 or more, found {v}")));
                }
                t.set(k, V::Int(v));
                cx.map(format!("retry.{class}.{k}"), c.key(k));
            }
        }
        if let Some(v) = c.bool(cx, "invalid_after_max")? {
            t.set("invalid_after_max", V::Bool(v));
            cx.map(
                format!("retry.{class}.invalid_after_max"),
                c.key("invalid_after_max"),
            );
        }
    }
    if supported {
        cx.map("retry", s.path.clone());
        root.set("retry", out);
    } else {
        cx.warn(
            &s.path,
            "ignored: this weir build has no retry policy yet (issue #17); a failed write is \
             retried until it succeeds",
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TOML output

/// weir's TOML for a translated config, with the notes as comments.
pub fn to_toml(t: &Translated) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# weir config converted from the Snowbridge config {} by `weir config convert`.",
        t.file
    );
    if !t.notes.is_empty() {
        out.push_str("#\n# What weir does differently or ignores:\n");
        for n in &t.notes {
            let _ = writeln!(out, "# - `{}`: {}", n.path, n.message);
        }
    }
    if let Some(level) = &t.log_level {
        let _ = writeln!(
            out,
            "#\n# log_level: weir's log level is set by the environment: WEIR_LOG={level}"
        );
    }
    out.push('\n');
    let V::Table(top) = &t.tree else {
        return out;
    };
    // Scalars first, then tables in a readable order.
    for (k, v) in top {
        if !matches!(v, V::Table(_)) && !is_table_array(v) {
            write_kv(&mut out, k, v);
        }
    }
    for (k, v) in top {
        match v {
            V::Table(_) => write_table(&mut out, k, v),
            v if is_table_array(v) => {
                if let V::Arr(items) = v {
                    for item in items {
                        out.push('\n');
                        let _ = writeln!(out, "[[{}]]", toml_key(k));
                        write_body(&mut out, k, item);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn is_table_array(v: &V) -> bool {
    matches!(v, V::Arr(a) if !a.is_empty() && a.iter().all(|x| matches!(x, V::Table(_))))
}

fn write_table(out: &mut String, path: &str, v: &V) {
    out.push('\n');
    let _ = writeln!(out, "[{}]", path_key(path));
    write_body(out, path, v);
}

fn write_body(out: &mut String, path: &str, v: &V) {
    let V::Table(t) = v else { return };
    for (k, x) in t {
        if !matches!(x, V::Table(_)) {
            write_kv(out, k, x);
        }
    }
    for (k, x) in t {
        if matches!(x, V::Table(_)) {
            write_table(out, &format!("{path}\u{0}{k}"), x);
        }
    }
}

fn path_key(path: &str) -> String {
    path.split('\u{0}')
        .map(toml_key)
        .collect::<Vec<_>>()
        .join(".")
}

fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        toml_str(k)
    }
}

fn toml_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(o, "\\u{:04X}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn toml_value(v: &V) -> String {
    match v {
        V::Str(s) | V::Secret(s, None) => toml_str(s),
        V::Secret(_, Some(_)) => "\"\"".into(),
        V::Int(i) => i.to_string(),
        V::Float(f) => {
            let s = f.to_string();
            if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
                s
            } else {
                format!("{s}.0")
            }
        }
        V::Bool(b) => b.to_string(),
        V::Arr(a) => format!(
            "[{}]",
            a.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        V::Table(t) => format!(
            "{{ {} }}",
            t.iter()
                .map(|(k, x)| format!("{} = {}", toml_key(k), toml_value(x)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn write_kv(out: &mut String, k: &str, v: &V) {
    if let V::Secret(_, Some(env)) = v {
        // weir's TOML has no env(): keep the secret out of the printed config.
        let _ = writeln!(
            out,
            "# {} = \"…\"  # read from the environment variable {env} in the HCL config: put the secret here",
            toml_key(k)
        );
        return;
    }
    let _ = writeln!(out, "{} = {}", toml_key(k), toml_value(v));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn tr(text: &str) -> Translated {
        translate(
            "t.hcl",
            text,
            env(&[("SASL_PASSWORD", "pw"), ("HOSTNAME", "h1")]),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> ConfigError {
        translate("t.hcl", text, env(&[]), &[]).expect_err("an error")
    }

    fn get<'a>(v: &'a V, path: &str) -> &'a V {
        let mut cur = v;
        for seg in path.split('.') {
            cur = match (cur, seg.parse::<usize>()) {
                (V::Arr(a), Ok(i)) => &a[i],
                (V::Table(t), _) => {
                    &t.iter()
                        .find(|(k, _)| k == seg)
                        .unwrap_or_else(|| panic!("no `{seg}` in {path}: {cur:?}"))
                        .1
                }
                _ => panic!("cannot index {seg} in {cur:?}"),
            };
        }
        cur
    }

    fn s(x: &str) -> V {
        V::Str(x.into())
    }

    #[test]
    fn the_http_target_becomes_the_http_sink() {
        let hcl = r#"
target {
  use "http" {
    url = "https://acme.com/x"
    request_timeout_in_millis = 2000
    headers = { Accept-Language = "en-US" }
    basic_auth_username = "me"
    basic_auth_password = env.SASL_PASSWORD
    enable_tls = true
    cert_file = "c.crt"
    key_file = "c.key"
    skip_verify_tls = true
    dynamic_headers = true
    metadata_safe_mode = false
    batching {
      max_batch_messages = 20
      max_concurrent_batches = 2
    }
    response_rules {
      rule {
        type = "invalid"
        http_codes = [400]
        body = "bad"
      }
      rule {
        type = "throttle"
        http_codes = [429, 0]
      }
    }
  }
}"#;
        let t = tr(hcl);
        let k = |p: &str| get(&t.tree, &format!("sink.{p}")).clone();
        assert_eq!(k("type"), s("http"));
        assert_eq!(k("timeout"), s("2000ms"));
        assert_eq!(k("headers.Accept-Language"), s("en-US"));
        assert_eq!(k("basic_auth.username"), s("me"));
        assert_eq!(k("basic_auth.password.env"), s("SASL_PASSWORD"));
        assert_eq!(k("tls.cert_file"), s("c.crt"));
        assert_eq!(k("tls.verify"), V::Bool(false));
        assert_eq!(k("dynamic_headers"), V::Bool(true));
        assert_eq!(k("response_body_in_errors"), V::Bool(true));
        assert_eq!(k("max_batch_messages"), V::Int(20));
        assert_eq!(k("concurrency"), V::Int(2));
        assert_eq!(get(&t.tree, "batch.max_records"), &V::Int(20));
        assert_eq!(k("response_rules.0.type"), s("invalid"));
        assert_eq!(k("response_rules.0.body"), s("bad"));
        assert_eq!(
            k("response_rules.1.http_codes"),
            V::Arr(vec![V::Int(429), V::Int(0)])
        );
        let e = err("target {\n use \"http\" {\n url = \"https://x\"\n response_rules {\n rule {\n type = \"retry\"\n }\n }\n }\n}");
        assert_eq!(e.key, r#"target.use "http".response_rules.rule.type"#);
        assert!(e.message.contains("found `retry`"), "{}", e.message);
    }

    /// Found by fuzzing (runtime/fuzz, target `config`): hcl-rs panicked on `2 % 0`.
    #[test]
    fn arithmetic_that_panics_in_hcl_rs_is_a_config_error() {
        for expr in ["2 % 0", "\"${7 % (1 - 1)}\"", "[for x in [0]: 1 % x][0]"] {
            let e = err(&format!(
                "target {{\n use \"kinesis\" {{\n batching {{\n max_batch_messages = {expr}\n }}\n }}\n}}"
            ));
            assert_eq!(
                e.key, "target.use \"kinesis\".batching.max_batch_messages",
                "{expr}"
            );
            assert!(
                e.message.contains("divides by zero or overflows"),
                "{expr}: {e}"
            );
        }
    }

    #[test]
    fn an_empty_config_is_stdin_to_stdout() {
        let t = tr("");
        assert_eq!(get(&t.tree, "source.type"), &s("stdin"));
        assert_eq!(get(&t.tree, "sink.type"), &s("stdout"));
        assert_eq!(get(&t.tree, "failure.type"), &s("stdout"));
        assert!(t.tree.clone().get_mut("filtered").is_none());
    }

    #[test]
    fn kafka_source_options_map() {
        let t = tr(r#"
            source {
              use "kafka" {
                brokers = "b1:9092,b2:9092"
                topic_name = "good"
                consumer_name = "sb"
                offsets_initial = -1
                enable_sasl = true
                sasl_username = "u"
                sasl_password = env.SASL_PASSWORD
                sasl_algorithm = "sha256"
                enable_tls = true
                ca_file = "ca.pem"
                skip_verify_tls = true
              }
            }"#);
        let src = get(&t.tree, "source");
        assert_eq!(get(src, "bootstrap_servers"), &s("b1:9092,b2:9092"));
        assert_eq!(get(src, "topics"), &V::Arr(vec![s("good")]));
        assert_eq!(get(src, "group_id"), &s("sb-good"));
        assert_eq!(get(src, "start"), &s("latest"));
        let mut o = get(src, "options").clone();
        let mut o = |k: &str| o.get_mut(k).cloned().unwrap_or_else(|| panic!("no {k}"));
        assert_eq!(&o("security.protocol"), &s("SASL_SSL"));
        assert_eq!(&o("sasl.mechanism"), &s("SCRAM-SHA-256"));
        assert_eq!(&o("sasl.username"), &s("u"));
        assert_eq!(
            &o("sasl.password"),
            &V::Secret("pw".into(), Some("SASL_PASSWORD".into()))
        );
        assert_eq!(&o("ssl.ca.location"), &s("ca.pem"));
        assert_eq!(&o("enable.ssl.certificate.verification"), &s("false"));
        // the secret never reaches the TOML
        let toml = to_toml(&t);
        assert!(!toml.contains("\"pw\""), "{toml}");
        assert!(toml.contains("SASL_PASSWORD"), "{toml}");
    }

    #[test]
    fn kinesis_options_map() {
        let t = tr(r#"
            source {
              use "kinesis" {
                stream_name = "s"
                region = "eu-west-1"
                app_name = "app"
                start_timestamp = "2020-01-01 10:00:00.5"
                custom_aws_endpoint = "http://127.0.0.1:4566"
                client_name = env("HOSTNAME")
                get_records_limit = 500
                role_arn = "arn:aws:iam::1:role/r"
              }
            }
            target {
              use "kinesis" {
                batching { max_concurrent_batches = 2 }
                stream_name = "out"
                region = "eu-west-1"
              }
            }"#);
        assert_eq!(get(&t.tree, "source.stream"), &s("s"));
        assert_eq!(get(&t.tree, "source.lease_table"), &s("app_leases"));
        assert_eq!(get(&t.tree, "source.initial_position"), &s("at_timestamp"));
        assert_eq!(
            get(&t.tree, "source.timestamp"),
            &s("2020-01-01T10:00:00.5Z")
        );
        assert_eq!(get(&t.tree, "source.worker_id"), &s("h1"));
        assert_eq!(get(&t.tree, "source.max_records_per_call"), &V::Int(500));
        assert_eq!(get(&t.tree, "sink.stream"), &s("out"));
        assert_eq!(get(&t.tree, "sink.concurrency"), &V::Int(2));
        assert_eq!(
            get(&t.tree, "source.role_arn"),
            &s("arn:aws:iam::1:role/r"),
            "the role is assumed, not ignored"
        );
        assert!(!t.notes.iter().any(|n| n.path.ends_with("role_arn")));
    }

    #[test]
    fn transforms_keep_order_and_names() {
        let t = tr(r#"
            transform {
              use "spEnrichedFilter" {
                atomic_field = "app_id"
                regex = "^a"
                filter_action = "keep"
              }
              use "spEnrichedSetPk" { atomic_field = "app_id" }
              use "spEnrichedToJson" {}
              worker_pool = 3
            }"#);
        assert_eq!(get(&t.tree, "transforms.0.type"), &s("spEnrichedFilter"));
        assert_eq!(get(&t.tree, "transforms.0.regex"), &s("^a"));
        assert_eq!(get(&t.tree, "transforms.1.type"), &s("spEnrichedSetPk"));
        assert_eq!(get(&t.tree, "transforms.2.type"), &s("spEnrichedToJson"));
        assert_eq!(get(&t.tree, "workers"), &V::Int(3));
    }

    #[test]
    fn main_target_batching_sets_weirs_batch() {
        let t = tr(r#"
            target {
              use "kafka" {
                batching {
                  max_batch_messages = 20
                  max_batch_bytes = 10000
                  max_message_bytes = 5000
                  flush_period_millis = 100
                }
                brokers = "b:9092"
                topic_name = "t"
                compress = true
                wait_for_all = true
              }
            }"#);
        assert_eq!(get(&t.tree, "batch.max_records"), &V::Int(20));
        assert_eq!(get(&t.tree, "batch.max_bytes"), &V::Int(10000));
        assert_eq!(get(&t.tree, "batch.flush_interval"), &s("100ms"));
        assert_eq!(get(&t.tree, "limits.max_record_bytes"), &V::Int(5000));
        assert_eq!(get(&t.tree, "sink.max_message_bytes"), &V::Int(5000));
        assert_eq!(get(&t.tree, "sink.compression"), &s("snappy"));
        assert_eq!(get(&t.tree, "sink.idempotence"), &V::Bool(false));
        let mut o = get(&t.tree, "sink.options").clone();
        assert_eq!(o.get_mut("acks"), Some(&mut s("all")));
    }

    #[test]
    fn unknown_keys_name_the_hcl_path_and_suggest() {
        let e = err("source {\n use \"kafka\" {\n topic = \"x\"\n }\n}");
        assert_eq!(e.key, r#"source.use "kafka".topic"#);
        assert!(e.message.contains("did you mean `topic_name`?"), "{e}");
        let e = err("log_levle = \"info\"");
        assert_eq!(e.key, "log_levle");
        assert!(e.message.contains("did you mean `log_level`?"), "{e}");
    }

    #[test]
    fn missing_required_options_and_env_vars_are_errors() {
        let e = err("source {\n use \"kinesis\" {\n stream_name = \"s\"\n region = \"r\"\n }\n}");
        assert_eq!(e.key, r#"source.use "kinesis".app_name"#);
        assert_eq!(e.message, "missing required key `app_name`");
        let e =
            err("target {\n use \"kinesis\" {\n stream_name = env.NOPE_X\n region = \"r\"\n }\n}");
        assert_eq!(e.key, r#"target.use "kinesis".stream_name"#);
        assert_eq!(e.message, "environment variable `NOPE_X` is not set");
        let e = err(
            "target {\n use \"kinesis\" {\n stream_name = env(\"NOPE_Y\")\n region = \"r\"\n }\n}",
        );
        assert_eq!(e.message, "environment variable `NOPE_Y` is not set");
        let e = err(r#"transform {
                 use "spEnrichedFilter" {
                   atomic_field = "app_id"
                   regex = "x"
                 }
               }"#);
        assert_eq!(e.key, r#"transform.use "spEnrichedFilter".filter_action"#);
    }

    #[test]
    fn components_weir_lacks_are_named() {
        let e = err("source {\n use \"http\" {}\n}");
        assert_eq!(e.key, r#"source.use "http""#);
        assert_eq!(
            e.message,
            "source `http` is not supported by weir yet (issue #18)"
        );
        let e = err("source {\n use \"pubsub\" {\n project_id = \"p\"\n }\n}");
        assert_eq!(e.key, r#"source.use "pubsub".subscription_id"#);
        let t = tr("source {\n use \"pubsub\" {\n project_id = \"acme-project\"\n subscription_id = \"s\"\n max_outstanding_bytes = 2e9\n min_extension_period_seconds = 5\n streaming_pull_goroutines = 0\n }\n}\ntarget {\n use \"pubsub\" {\n project_id = \"acme-project\"\n topic_name = \"t\"\n batching {\n max_batch_messages = 20\n }\n }\n}");
        assert_eq!(get(&t.tree, "source.type"), &s("pubsub"));
        assert_eq!(get(&t.tree, "source.subscription"), &s("s"));
        assert_eq!(
            get(&t.tree, "source.max_in_flight_bytes"),
            &V::Int(2_000_000_000)
        );
        assert_eq!(get(&t.tree, "source.ack_deadline"), &s("10s"));
        let V::Table(src) = get(&t.tree, "source") else {
            panic!()
        };
        assert!(
            !src.iter().any(|(k, _)| k == "receivers"),
            "0 is the client's default"
        );
        assert_eq!(get(&t.tree, "sink.topic"), &s("t"));
        assert_eq!(get(&t.tree, "sink.max_batch_messages"), &V::Int(20));
        assert_eq!(get(&t.tree, "sink.concurrency"), &V::Int(5));
        let e = err("stats_receiver {\n use \"prometheus\" {}\n}");
        assert_eq!(
            e.message,
            "stats receiver `prometheus` is not supported by weir yet (issue #18)"
        );
        let t = tr("stats_receiver {\n use \"statsd\" {\n address = \"h:8125\"\n tags = \"{\\\"aKey\\\": \\\"aValue\\\"}\"\n }\n buffer_sec = 20\n}\nmetrics {\n enable_e2e_latency = true\n}");
        assert_eq!(get(&t.tree, "metrics.statsd.address"), &s("h:8125"));
        assert_eq!(
            get(&t.tree, "metrics.statsd.prefix"),
            &s("snowplow.snowbridge")
        );
        assert_eq!(get(&t.tree, "metrics.statsd.flush_interval"), &s("20s"));
        assert_eq!(get(&t.tree, "metrics.statsd.tags.aKey"), &s("aValue"));
        assert_eq!(get(&t.tree, "metrics.e2e_latency"), &V::Bool(true));
        let t = tr(r#"sentry {
              dsn = "https://k@sentry.example/28"
              debug = true
              tags = "{\"aKey\":\"aValue\"}"
            }"#);
        assert_eq!(
            get(&t.tree, "monitoring.sentry.dsn"),
            &V::Secret("https://k@sentry.example/28".into(), None)
        );
        assert_eq!(get(&t.tree, "monitoring.sentry.debug"), &V::Bool(true));
        assert_eq!(get(&t.tree, "monitoring.sentry.tags.aKey"), &s("aValue"));
        let e = err("sentry {\n debug = true\n}");
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("sentry.dsn", "missing required key `dsn`")
        );
        let e = err("sentry {\n dsn = \"https://k@h/1\"\n tags = \"[1]\"\n}");
        assert_eq!(e.key, "sentry.tags");
        let e = err("target {\n use \"kafak\" {}\n}");
        assert!(e.message.contains("did you mean `kafka`?"), "{e}");
    }

    #[test]
    fn telemetry_and_licence_blocks_are_accepted() {
        let t = tr(r#"
            license { accept = true }
            disable_telemetry = true
            user_provided_id = "me"
            log_level = "warning"
            failure_parser { format = "snowplow" }
            metrics { enable_e2e_latency = true }
        "#);
        assert_eq!(t.log_level.as_deref(), Some("warn"));
        assert_eq!(get(&t.tree, "metrics.e2e_latency"), &V::Bool(true));
        let e = err("log_level = \"loud\"");
        assert_eq!(e.key, "log_level");
    }

    #[test]
    fn timestamps_convert() {
        assert_eq!(
            snowbridge_timestamp("2020-01-01 10:00:00").as_deref(),
            Some("2020-01-01T10:00:00Z")
        );
        assert_eq!(snowbridge_timestamp("2020-01-01T10:00:00"), None);
        assert_eq!(snowbridge_timestamp("yesterday"), None);
    }

    #[test]
    fn toml_output_reads_back_as_the_same_tree() {
        let t = tr(r#"
            source {
              use "kafka" {
                brokers = "b:9092"
                topic_name = "t"
                consumer_name = "c"
                offsets_initial = -2
                assignor = "roundrobin"
              }
            }
            transform {
              use "spEnrichedFilter" {
                atomic_field = "event_name"
                regex = "^page_\"view$"
                filter_action = "drop"
              }
            }
            target {
              use "stdout" {
                data_only_output = true
              }
            }
            filter_target {
              use "stdout" {}
            }
        "#);
        let text = to_toml(&t);
        let back: config::Value = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .build()
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
            .try_deserialize()
            .unwrap();
        assert_eq!(
            format!("{:?}", sorted(&back)),
            format!("{:?}", sorted(&t.root())),
            "{text}"
        );
    }

    fn sorted(v: &config::Value) -> String {
        match &v.kind {
            config::ValueKind::Table(t) => {
                let mut ks: Vec<_> = t.iter().collect();
                ks.sort_by(|a, b| a.0.cmp(b.0));
                ks.iter()
                    .map(|(k, x)| format!("{k}={}", sorted(x)))
                    .collect::<Vec<_>>()
                    .join(",")
            }
            config::ValueKind::Array(a) => a.iter().map(sorted).collect::<Vec<_>>().join(";"),
            other => format!("{other}"),
        }
    }
}
