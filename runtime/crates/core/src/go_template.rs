//! Go's `text/template`, the part that Snowbridge's HTTP target templates use, over JSON data:
//! the `http` sink's `template_file` renders a batch (the records, parsed as JSON, as an array)
//! into one request body, as Snowbridge does (`pkg/target/http/http.go`).
//!
//! Supported: text, `{{pipeline}}`, trim markers (`{{-`, `-}}`), comments, `if` / `else if` /
//! `else`, `range` (with `$i, $v :=`, over arrays and objects in key order, with `else`), `with`,
//! variables (`$`, `$x := …`, `$x = …`), fields (`.a.b`, `$x.a`, `(pipeline).a`), literals,
//! pipes, and the functions `prettyPrint` and `env` (Snowbridge's), `index`, `len`, `not`, `and`,
//! `or`, `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `print`, `println`. Values print as Go prints what
//! `json.Unmarshal` gives (`1e+06`, `map[a:1]`, `<no value>`); `prettyPrint` writes JSON as Go's
//! `json.Marshal` does (keys sorted, `<`, `>` and `&` escaped), except that integers JSON wrote
//! exactly stay exact (Go turns every number into a float64 first).
//!
//! Not supported (a parse error names them): `define`, `template`, `block`, `break`,
//! `continue`, `printf` and Go's other functions. Rendering is bounded: a template's output
//! may not exceed [`Template::render`]'s limit, whatever the data.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipe),
    If(Pipe, Vec<Node>, Vec<Node>),
    /// The variables it declares per item, what it ranges over, its body and its `else`.
    Range(Vec<String>, Pipe, Vec<Node>, Vec<Node>),
    With(Pipe, Vec<Node>, Vec<Node>),
}

/// A pipeline, where it is in the template (for errors), and the variables it declares (`:=`)
/// or assigns (`=`).
#[derive(Debug, Clone)]
struct Pipe {
    line: usize,
    text: String,
    vars: Vec<String>,
    assign: bool,
    cmds: Vec<Vec<Arg>>,
}

#[derive(Debug, Clone)]
enum Arg {
    /// `.` followed by fields (`.a.b`; none: the dot itself).
    Dot(Vec<String>),
    /// `$x.a.b`.
    Var(String, Vec<String>),
    /// `(pipeline).a.b`.
    Sub(Box<Pipe>, Vec<String>),
    Func(String),
    Lit(Value),
}

const FUNCS: &[&str] = &[
    "prettyPrint",
    "env",
    "index",
    "len",
    "not",
    "and",
    "or",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "print",
    "println",
];

/// A template error: Go's wording where it has one (`template: HTTP:1: unclosed action`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template: HTTP:{line}: {message}")]
pub struct Error {
    pub line: usize,
    pub message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, Error> {
    Err(Error {
        line,
        message: message.into(),
    })
}

// --- lexing and parsing ---------------------------------------------------------------------

/// One `{{ … }}` or the text between two.
enum Piece {
    Text(String),
    Action { line: usize, body: String },
}

fn split(src: &str) -> Result<Vec<Piece>, Error> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut line = 1;
    let mut trim_next = false;
    while !rest.is_empty() {
        let Some(open) = rest.find("{{") else {
            let text = if trim_next { rest.trim_start() } else { rest };
            out.push(Piece::Text(text.to_string()));
            break;
        };
        let mut text = &rest[..open];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[open + 2..];
        let trim_left =
            after.starts_with("- ") || after.starts_with("-\t") || after.starts_with("-\n");
        if trim_left {
            text = text.trim_end();
        }
        if !text.is_empty() {
            out.push(Piece::Text(text.to_string()));
        }
        line += rest[..open].matches('\n').count();
        let inner = if trim_left { &after[1..] } else { after };
        // The action ends at the first `}}` outside a string or comment.
        let end = action_end(inner).ok_or(Error {
            line,
            message: "unclosed action".into(),
        })?;
        let mut body = &inner[..end];
        trim_next = false;
        if body.ends_with(" -") || body.ends_with("\t-") || body.ends_with("\n-") {
            body = &body[..body.len() - 1];
            trim_next = true;
        }
        out.push(Piece::Action {
            line,
            body: body.to_string(),
        });
        line += body.matches('\n').count();
        rest = &inner[end + 2..];
    }
    Ok(out)
}

fn action_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    if s.trim_start().starts_with("/*") {
        let start = s.find("/*")?;
        let close = s[start + 2..].find("*/")? + start + 4;
        return s[close..].find("}}").map(|e| e + close);
    }
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Field(String),
    Var(String),
    Lit(Value),
    Dot,
    Open,
    Close,
    Pipe,
    Declare,
    Assign,
    Comma,
}

fn lex(line: usize, s: &str) -> Result<Vec<Tok>, Error> {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let word = |i: &mut usize| {
        let start = *i;
        while *i < c.len() && (c[*i].is_alphanumeric() || c[*i] == '_') {
            *i += 1;
        }
        c[start..*i].iter().collect::<String>()
    };
    while i < c.len() {
        let ch = c[i];
        match ch {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1
            }
            ')' => {
                out.push(Tok::Close);
                i += 1
            }
            '|' => {
                out.push(Tok::Pipe);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            ':' if c.get(i + 1) == Some(&'=') => {
                out.push(Tok::Declare);
                i += 2
            }
            '=' => {
                out.push(Tok::Assign);
                i += 1
            }
            '.' if c.get(i + 1).is_some_and(|n| n.is_alphabetic() || *n == '_') => {
                i += 1;
                out.push(Tok::Field(word(&mut i)));
            }
            '.' if c.get(i + 1).is_some_and(|n| n.is_ascii_digit()) => {
                let start = i;
                i += 1;
                while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                    i += 1;
                }
                out.push(Tok::Lit(number(line, &c[start..i])?));
            }
            '.' => {
                out.push(Tok::Dot);
                i += 1
            }
            '$' => {
                i += 1;
                out.push(Tok::Var(format!("${}", word(&mut i))));
            }
            '"' => {
                let start = i;
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                let quoted: String = c[start..i.min(c.len())].iter().collect();
                let v: String = serde_json::from_str(&quoted)
                    .or(err(line, format!("malformed quoted string {quoted}")))?;
                out.push(Tok::Lit(Value::String(v)));
            }
            '`' => {
                let start = i + 1;
                i = start;
                while i < c.len() && c[i] != '`' {
                    i += 1;
                }
                out.push(Tok::Lit(Value::String(c[start..i].iter().collect())));
                i += 1;
            }
            '-' | '+' | '0'..='9' => {
                let start = i;
                i += 1;
                while i < c.len()
                    && (c[i].is_ascii_alphanumeric()
                        || c[i] == '.'
                        || ((c[i] == '+' || c[i] == '-') && matches!(c[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
                out.push(Tok::Lit(number(line, &c[start..i])?));
            }
            _ if ch.is_alphabetic() || ch == '_' => {
                let w = word(&mut i);
                out.push(match w.as_str() {
                    "true" => Tok::Lit(Value::Bool(true)),
                    "false" => Tok::Lit(Value::Bool(false)),
                    "nil" => Tok::Lit(Value::Null),
                    _ => Tok::Ident(w),
                });
            }
            _ => return err(line, format!("unexpected {ch:?} in command")),
        }
    }
    Ok(out)
}

fn number(line: usize, c: &[char]) -> Result<Value, Error> {
    let s: String = c.iter().filter(|c| **c != '_').collect();
    let s = s.strip_prefix('+').unwrap_or(&s);
    if let Ok(i) = s.parse::<i64>() {
        return Ok(Value::from(i));
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Value::from(f)),
        _ => err(line, format!("bad number syntax: {s:?}")),
    }
}

/// Parses `src`, as Snowbridge parses a `template_file`.
pub fn parse(src: &str) -> Result<Template, Error> {
    let pieces = split(src)?;
    let mut at = 0;
    let (nodes, end) = parse_list(&pieces, &mut at)?;
    if let Some((line, word)) = end {
        return err(line, format!("unexpected {{{{{word}}}}}"));
    }
    Ok(Template { nodes })
}

/// The action that ended a list (`end`, `else …`) and its line.
type Ender = (usize, String);

/// Parses nodes until `{{end}}` or `{{else…}}` (returned, with its line and the action).
fn parse_list(pieces: &[Piece], at: &mut usize) -> Result<(Vec<Node>, Option<Ender>), Error> {
    let mut nodes = Vec::new();
    while let Some(p) = pieces.get(*at) {
        *at += 1;
        let (line, body) = match p {
            Piece::Text(t) => {
                nodes.push(Node::Text(t.clone()));
                continue;
            }
            Piece::Action { line, body } => (*line, body.trim()),
        };
        if body.starts_with("/*") {
            continue;
        }
        let (keyword, rest) = match body.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r.trim()),
            None => (body, ""),
        };
        match keyword {
            "end" | "else" => return Ok((nodes, Some((line, body.to_string())))),
            "if" | "range" | "with" => {
                nodes.push(parse_control(pieces, at, line, keyword, rest)?);
            }
            "define" | "template" | "block" | "break" | "continue" => {
                return err(
                    line,
                    format!("`{keyword}` is not supported by weir's templates"),
                )
            }
            _ => nodes.push(Node::Action(parse_pipe(line, body)?)),
        }
    }
    Ok((nodes, None))
}

fn parse_control(
    pieces: &[Piece],
    at: &mut usize,
    line: usize,
    keyword: &str,
    rest: &str,
) -> Result<Node, Error> {
    if rest.is_empty() {
        return err(line, format!("missing value for {keyword}"));
    }
    let pipe = parse_pipe(line, rest)?;
    let (body, end) = parse_list(pieces, at)?;
    let mut els = Vec::new();
    match end {
        None => return err(line, "unexpected EOF"),
        Some((_, e)) if e == "end" => {}
        Some((l, e)) => {
            let tail = e["else".len()..].trim();
            if tail.is_empty() {
                let (b, end) = parse_list(pieces, at)?;
                match end {
                    Some((_, e)) if e == "end" => els = b,
                    None => return err(l, "unexpected EOF"),
                    Some((l, e)) => return err(l, format!("unexpected {{{{{e}}}}}")),
                }
            } else {
                // `{{else if …}}`: an `if` whose `{{end}}` is this one's.
                let (k, r) = tail.split_once(char::is_whitespace).unwrap_or((tail, ""));
                if k != "if" && k != "with" {
                    return err(l, format!("unexpected {{{{{e}}}}}"));
                }
                els = vec![parse_control(pieces, at, l, k, r.trim())?];
            }
        }
    }
    Ok(match keyword {
        "if" => Node::If(pipe, body, els),
        "range" => {
            let mut pipe = pipe;
            let names = std::mem::take(&mut pipe.vars);
            if pipe.assign || names.len() > 2 {
                return err(line, "range can only declare $index, $value :=");
            }
            Node::Range(names, pipe, body, els)
        }
        _ => Node::With(pipe, body, els),
    })
}

fn parse_pipe(line: usize, text: &str) -> Result<Pipe, Error> {
    let toks = lex(line, text)?;
    let mut pos = 0;
    let p = pipe_tokens(line, text, &toks, &mut pos)?;
    if pos != toks.len() {
        return err(line, format!("unexpected {:?} in operand", toks[pos]));
    }
    Ok(p)
}

fn pipe_tokens(line: usize, text: &str, toks: &[Tok], pos: &mut usize) -> Result<Pipe, Error> {
    let mut vars = Vec::new();
    let mut assign = false;
    // `$a :=`, `$a, $b :=` or `$a =`.
    let mut look = *pos;
    let mut names = Vec::new();
    while let Some(Tok::Var(v)) = toks.get(look) {
        names.push(v.clone());
        look += 1;
        match toks.get(look) {
            Some(Tok::Comma) if names.len() == 1 => look += 1,
            Some(Tok::Declare) | Some(Tok::Assign) => {
                assign = toks[look] == Tok::Assign;
                vars = std::mem::take(&mut names);
                *pos = look + 1;
                break;
            }
            _ => break,
        }
    }
    let mut cmds = Vec::new();
    let mut cmd = Vec::new();
    while let Some(t) = toks.get(*pos) {
        *pos += 1;
        let arg = match t {
            Tok::Close => {
                *pos -= 1;
                break;
            }
            Tok::Pipe => {
                if cmd.is_empty() {
                    return err(line, "missing command");
                }
                cmds.push(std::mem::take(&mut cmd));
                continue;
            }
            Tok::Dot => Arg::Dot(Vec::new()),
            Tok::Field(f) => {
                let mut fields = vec![f.clone()];
                fields.extend(more_fields(toks, pos));
                Arg::Dot(fields)
            }
            Tok::Var(v) => Arg::Var(v.clone(), more_fields(toks, pos)),
            Tok::Lit(v) => Arg::Lit(v.clone()),
            Tok::Ident(f) => {
                if !FUNCS.contains(&f.as_str()) {
                    return err(line, format!("function {f:?} not defined"));
                }
                Arg::Func(f.clone())
            }
            Tok::Open => {
                let sub = pipe_tokens(line, text, toks, pos)?;
                if toks.get(*pos) != Some(&Tok::Close) {
                    return err(line, "unclosed left paren");
                }
                *pos += 1;
                Arg::Sub(Box::new(sub), more_fields(toks, pos))
            }
            t => return err(line, format!("unexpected {t:?} in operand")),
        };
        cmd.push(arg);
    }
    if cmd.is_empty() {
        return err(line, "missing value for command");
    }
    cmds.push(cmd);
    Ok(Pipe {
        line,
        text: text.trim().to_string(),
        vars,
        assign,
        cmds,
    })
}

fn more_fields(toks: &[Tok], pos: &mut usize) -> Vec<String> {
    let mut fields = Vec::new();
    while let Some(Tok::Field(f)) = toks.get(*pos) {
        fields.push(f.clone());
        *pos += 1;
    }
    fields
}

// --- execution ------------------------------------------------------------------------------

/// A value during execution: borrowed from the data, made by a function, or Go's "no value"
/// (a missing field).
type Val<'a> = Option<Cow<'a, Value>>;

struct Exec<'a> {
    root: &'a Value,
    vars: Vec<(String, Val<'a>)>,
    out: String,
    limit: usize,
}

impl Template {
    /// Renders the template over `data` (the batch, an array of the records' JSON). The output
    /// may not grow past `limit` bytes.
    pub fn render(&self, data: &Value, limit: usize) -> Result<String, Error> {
        let mut x = Exec {
            root: data,
            vars: vec![("$".into(), Some(Cow::Borrowed(data)))],
            out: String::new(),
            limit,
        };
        x.run(&self.nodes, &Some(Cow::Borrowed(data)))?;
        Ok(x.out)
    }
}

impl<'a> Exec<'a> {
    fn run(&mut self, nodes: &'a [Node], dot: &Val<'a>) -> Result<(), Error> {
        for n in nodes {
            match n {
                Node::Text(t) => self.emit(t, 0)?,
                Node::Action(p) => {
                    let v = self.pipe(p, dot)?;
                    if p.vars.is_empty() {
                        let mut s = String::new();
                        go_print(&mut s, v.as_deref());
                        self.emit(&s, p.line)?;
                    }
                }
                Node::If(p, body, els) => {
                    let mark = self.vars.len();
                    let v = self.pipe(p, dot)?;
                    let r = if truth(v.as_deref()) {
                        self.run(body, dot)
                    } else {
                        self.run(els, dot)
                    };
                    self.vars.truncate(mark);
                    r?
                }
                Node::With(p, body, els) => {
                    let mark = self.vars.len();
                    let v = self.pipe(p, dot)?;
                    let r = if truth(v.as_deref()) {
                        self.run(body, &v)
                    } else {
                        self.run(els, dot)
                    };
                    self.vars.truncate(mark);
                    r?
                }
                Node::Range(names, p, body, els) => {
                    let mark = self.vars.len();
                    let v = self.pipe(p, dot)?;
                    let items: Vec<(Value, Val<'a>)> = match v {
                        None => Vec::new(),
                        Some(Cow::Borrowed(Value::Array(a))) => a
                            .iter()
                            .enumerate()
                            .map(|(i, x)| (Value::from(i), Some(Cow::Borrowed(x))))
                            .collect(),
                        Some(Cow::Borrowed(Value::Object(o))) => {
                            let mut keys: Vec<&String> = o.keys().collect();
                            keys.sort();
                            keys.into_iter()
                                .map(|k| (Value::String(k.clone()), Some(Cow::Borrowed(&o[k]))))
                                .collect()
                        }
                        Some(Cow::Owned(Value::Array(a))) => a
                            .into_iter()
                            .enumerate()
                            .map(|(i, x)| (Value::from(i), Some(Cow::Owned(x))))
                            .collect(),
                        Some(Cow::Owned(Value::Object(o))) => {
                            let mut kv: Vec<(String, Value)> = o.into_iter().collect();
                            kv.sort_by(|a, b| a.0.cmp(&b.0));
                            kv.into_iter()
                                .map(|(k, x)| (Value::String(k), Some(Cow::Owned(x))))
                                .collect()
                        }
                        Some(Cow::Borrowed(Value::Null)) | Some(Cow::Owned(Value::Null)) => {
                            Vec::new()
                        }
                        Some(other) => {
                            return err(
                                p.line,
                                format!("range can't iterate over {}", go_string(Some(&other))),
                            )
                        }
                    };
                    if items.is_empty() {
                        self.run(els, dot)?;
                    }
                    for (k, item) in items {
                        let inner = self.vars.len();
                        match names.as_slice() {
                            [v] => self.vars.push((v.clone(), item.clone())),
                            [k_name, v] => {
                                self.vars.push((k_name.clone(), Some(Cow::Owned(k))));
                                self.vars.push((v.clone(), item.clone()));
                            }
                            _ => {}
                        }
                        self.run(body, &item)?;
                        self.vars.truncate(inner);
                    }
                    self.vars.truncate(mark);
                }
            }
        }
        Ok(())
    }

    fn emit(&mut self, s: &str, line: usize) -> Result<(), Error> {
        if self.out.len() + s.len() > self.limit {
            return err(
                line,
                format!(
                    "the rendered request is over its limit of {} bytes",
                    self.limit
                ),
            );
        }
        self.out.push_str(s);
        Ok(())
    }

    fn pipe(&mut self, p: &'a Pipe, dot: &Val<'a>) -> Result<Val<'a>, Error> {
        let mut last: Option<Val<'a>> = None;
        for cmd in &p.cmds {
            last = Some(self.cmd(p, cmd, dot, last)?);
        }
        let v = last.unwrap_or(None);
        if p.assign {
            for name in &p.vars {
                match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = v.clone(),
                    None => return err(p.line, format!("undefined variable: {name}")),
                }
            }
        } else if let [name] = p.vars.as_slice() {
            self.vars.push((name.clone(), v.clone()));
        }
        Ok(v)
    }

    fn cmd(
        &mut self,
        p: &'a Pipe,
        cmd: &'a [Arg],
        dot: &Val<'a>,
        piped: Option<Val<'a>>,
    ) -> Result<Val<'a>, Error> {
        match &cmd[0] {
            Arg::Func(name) => {
                let mut args = Vec::with_capacity(cmd.len());
                for a in &cmd[1..] {
                    args.push(self.arg(p, a, dot)?);
                }
                if let Some(v) = piped {
                    args.push(v);
                }
                self.call(p, name, args)
            }
            a => {
                if cmd.len() > 1 || piped.is_some() {
                    return err(
                        p.line,
                        format!(
                            "executing at <{}>: can't give argument to non-function",
                            p.text
                        ),
                    );
                }
                self.arg(p, a, dot)
            }
        }
    }

    fn arg(&mut self, p: &'a Pipe, a: &'a Arg, dot: &Val<'a>) -> Result<Val<'a>, Error> {
        match a {
            Arg::Dot(fields) => fields_of(p, dot.clone(), fields),
            Arg::Var(name, fields) => {
                let v = if name == "$" {
                    Some(Cow::Borrowed(self.root))
                } else {
                    match self.vars.iter().rev().find(|(n, _)| n == name) {
                        Some((_, v)) => v.clone(),
                        None => return err(p.line, format!("undefined variable: {name}")),
                    }
                };
                fields_of(p, v, fields)
            }
            Arg::Sub(sub, fields) => {
                let v = self.pipe(sub, dot)?;
                fields_of(p, v, fields)
            }
            Arg::Func(name) => self.call(p, name, Vec::new()),
            Arg::Lit(v) => Ok(Some(Cow::Borrowed(v))),
        }
    }

    fn call(&mut self, p: &Pipe, name: &str, args: Vec<Val<'a>>) -> Result<Val<'a>, Error> {
        let fail = |m: String| {
            err::<Val<'a>>(
                p.line,
                format!(
                    "executing \"HTTP\" at <{}>: error calling {name}: {m}",
                    p.text
                ),
            )
        };
        let want = |n: usize| -> Result<(), Error> {
            if args.len() != n {
                return err(
                    p.line,
                    format!(
                        "wrong number of args for {name}: want {n} got {}",
                        args.len()
                    ),
                );
            }
            Ok(())
        };
        let owned = |v: Value| Ok(Some(Cow::Owned(v)));
        match name {
            "prettyPrint" => {
                want(1)?;
                let mut s = String::new();
                go_json(&mut s, args[0].as_deref().unwrap_or(&Value::Null));
                owned(Value::String(s))
            }
            "env" => {
                want(1)?;
                let n = go_string(args[0].as_deref());
                owned(Value::String(std::env::var(n).unwrap_or_default()))
            }
            "index" => {
                if args.is_empty() {
                    return err(
                        p.line,
                        "wrong number of args for index: want at least 1 got 0",
                    );
                }
                let mut it = args.into_iter();
                let mut v = it.next().unwrap_or(None);
                for i in it {
                    v = match (v, i.as_deref()) {
                        (Some(Cow::Borrowed(Value::Array(a))), Some(Value::Number(n))) => {
                            match n.as_u64().and_then(|n| a.get(n as usize)) {
                                Some(x) => Some(Cow::Borrowed(x)),
                                None => return fail("index out of range".into()),
                            }
                        }
                        (Some(Cow::Owned(Value::Array(mut a))), Some(Value::Number(n))) => {
                            match n.as_u64().filter(|n| (*n as usize) < a.len()) {
                                Some(n) => Some(Cow::Owned(a.swap_remove(n as usize))),
                                None => return fail("index out of range".into()),
                            }
                        }
                        (Some(Cow::Borrowed(Value::Object(o))), Some(Value::String(k))) => {
                            o.get(k).map(Cow::Borrowed)
                        }
                        (Some(Cow::Owned(Value::Object(mut o))), Some(Value::String(k))) => {
                            o.remove(k).map(Cow::Owned)
                        }
                        (None, _) | (Some(Cow::Borrowed(Value::Null)), _) => {
                            return fail("index of untyped nil".into())
                        }
                        (v, i) => {
                            return fail(format!(
                                "can't index {} with {}",
                                go_string(v.as_deref()),
                                go_string(i)
                            ))
                        }
                    };
                }
                Ok(v)
            }
            "len" => {
                want(1)?;
                match args[0].as_deref() {
                    Some(Value::Array(a)) => owned(Value::from(a.len())),
                    Some(Value::Object(o)) => owned(Value::from(o.len())),
                    Some(Value::String(s)) => owned(Value::from(s.len())),
                    v => fail(format!("len of {}", go_string(v))),
                }
            }
            "not" => {
                want(1)?;
                owned(Value::Bool(!truth(args[0].as_deref())))
            }
            "and" | "or" => {
                if args.is_empty() {
                    return err(
                        p.line,
                        format!("wrong number of args for {name}: want at least 1 got 0"),
                    );
                }
                let and = name == "and";
                let mut last = None;
                for a in args {
                    let t = truth(a.as_deref());
                    last = a;
                    if t != and {
                        break;
                    }
                }
                Ok(last)
            }
            "eq" | "ne" | "lt" | "le" | "gt" | "ge" => {
                if name != "eq" {
                    want(2)?;
                } else if args.len() < 2 {
                    return err(p.line, "wrong number of args for eq: want at least 2 got 1");
                }
                let a = args[0].as_deref();
                let ord = |b: Option<&Value>| -> Result<std::cmp::Ordering, Error> {
                    match (a, b) {
                        (Some(Value::Number(x)), Some(Value::Number(y))) => {
                            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                            x.partial_cmp(&y).ok_or(Error { line: p.line, message: "NaN".into() })
                        }
                        (Some(Value::String(x)), Some(Value::String(y))) => Ok(x.cmp(y)),
                        (Some(Value::Bool(x)), Some(Value::Bool(y))) if name == "eq" || name == "ne" => {
                            Ok(x.cmp(y))
                        }
                        _ => err(
                            p.line,
                            format!(
                                "executing \"HTTP\" at <{}>: error calling {name}: incompatible types for comparison",
                                p.text
                            ),
                        ),
                    }
                };
                use std::cmp::Ordering::*;
                let r = match name {
                    "eq" => {
                        let mut any = false;
                        for b in &args[1..] {
                            if ord(b.as_deref())? == Equal {
                                any = true;
                                break;
                            }
                        }
                        any
                    }
                    "ne" => ord(args[1].as_deref())? != Equal,
                    "lt" => ord(args[1].as_deref())? == Less,
                    "le" => ord(args[1].as_deref())? != Greater,
                    "gt" => ord(args[1].as_deref())? == Greater,
                    _ => ord(args[1].as_deref())? != Less,
                };
                owned(Value::Bool(r))
            }
            "print" | "println" => {
                let mut s = String::new();
                for (i, a) in args.iter().enumerate() {
                    let is_str = |v: &Val| matches!(v.as_deref(), Some(Value::String(_)));
                    if i > 0 && (name == "println" || !(is_str(a) || is_str(&args[i - 1]))) {
                        s.push(' ');
                    }
                    go_print(&mut s, a.as_deref());
                }
                if name == "println" {
                    s.push('\n');
                }
                owned(Value::String(s))
            }
            _ => err(p.line, format!("function {name:?} not defined")),
        }
    }
}

fn fields_of<'a>(p: &Pipe, mut v: Val<'a>, fields: &[String]) -> Result<Val<'a>, Error> {
    for f in fields {
        v = match v {
            None | Some(Cow::Borrowed(Value::Null)) | Some(Cow::Owned(Value::Null)) => None,
            Some(Cow::Borrowed(Value::Object(o))) => o.get(f).map(Cow::Borrowed),
            Some(Cow::Owned(Value::Object(mut o))) => o.remove(f).map(Cow::Owned),
            Some(other) => {
                return err(
                    p.line,
                    format!(
                        "executing \"HTTP\" at <{}>: can't evaluate field {f} in type {}",
                        p.text,
                        go_type(&other)
                    ),
                )
            }
        };
    }
    Ok(v)
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "interface {}",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// Go's template truth: false, 0, nil and empty strings, arrays and objects are false.
fn truth(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

fn go_string(v: Option<&Value>) -> String {
    let mut s = String::new();
    go_print(&mut s, v);
    s
}

/// Writes `v` as Go's `fmt.Print` writes what `json.Unmarshal` gives.
fn go_print(out: &mut String, v: Option<&Value>) {
    match v {
        None | Some(Value::Null) => out.push_str("<no value>"),
        Some(v) => go_print_inner(out, v),
    }
}

fn go_print_inner(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => go_float(out, n.as_f64().unwrap_or(0.0), Style::Print),
        Value::String(s) => out.push_str(s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                go_print_inner(out, x);
            }
            out.push(']');
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push_str("map[");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                go_print_inner(out, &o[k]);
            }
            out.push(']');
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    /// `fmt`'s `%v`: `%e` when the exponent is < -4 or ≥ 6 (shortest digits).
    Print,
    /// `encoding/json`: `%e` when |f| < 1e-6 or ≥ 1e21, exponent without leading zero.
    Json,
}

fn go_float(out: &mut String, f: f64, style: Style) {
    // Rust's `{:e}` gives the shortest digits that round-trip, as Go's `-1` precision does.
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let abs = f.abs();
    let exponent = match style {
        Style::Print => !(-4..6).contains(&exp),
        Style::Json => abs != 0.0 && !(1e-6..1e21).contains(&abs),
    };
    if !exponent {
        let _ = write!(out, "{f}");
        return;
    }
    out.push_str(mantissa);
    out.push('e');
    out.push(if exp < 0 { '-' } else { '+' });
    if style == Style::Print && exp.abs() < 10 {
        out.push('0');
    }
    let _ = write!(out, "{}", exp.abs());
}

/// Writes `v` as Go's `json.Marshal` writes what `json.Unmarshal` gives (keys sorted, HTML
/// characters escaped); integers stay exact.
fn go_json(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => {
                let _ = write!(out, "{i}");
            }
            (_, Some(u)) => {
                let _ = write!(out, "{u}");
            }
            _ => go_float(out, n.as_f64().unwrap_or(0.0), Style::Json),
        },
        Value::String(s) => go_json_string(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json(out, x);
            }
            out.push(']');
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json_string(out, k);
                out.push(':');
                go_json(out, &o[k]);
            }
            out.push('}');
        }
    }
}

fn go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, data: &str) -> Result<String, Error> {
        let v: Value = serde_json::from_str(data).unwrap();
        parse(t)?.render(&v, 1 << 20)
    }

    fn json_eq(a: &str, b: &str) {
        let a: Value = serde_json::from_str(a).unwrap_or_else(|e| panic!("{e}: {a}"));
        let b: Value = serde_json::from_str(b).unwrap();
        assert_eq!(a, b);
    }

    // Snowbridge's pkg/target/http/http_templating_test.go, case by case.

    #[test]
    fn snowbridge_with_pretty_print() {
        let t = r#"
  {
    "attributes": [{{range $i, $data := .}}{{if $i}},{{end}}{{.attribute_data}}{{end}}],
    "events": [{{range $i, $data := .}}{{if $i}},{{end}}{{prettyPrint .event_data}}{{end}}]
  }"#;
        let data = r#"[{ "event_data": { "nested": "value1"}, "attribute_data": 1},
            { "event_data": { "nested": "value2"}, "attribute_data": 2},
            { "event_data": { "nested": "value3"}, "attribute_data": 3},
            { "event_data": "text", "attribute_data": 4}]"#;
        json_eq(
            &render(t, data).unwrap(),
            r#"{"attributes": [1,2,3,4], "events": [{"nested":"value1"},{"nested":"value2"},{"nested":"value3"}, "text"]}"#,
        );
    }

    #[test]
    fn snowbridge_no_pretty_printing_prints_go_maps() {
        let t = r#"
  {
    "attributes": [{{range $i, $data := .}}{{if $i}},{{end}}{{.attribute_data}}{{end}}],
    "events": [{{range $i, $data := .}}{{if $i}},{{end}}{{.event_data}}{{end}}]
  }"#;
        let data = r#"[{ "event_data": { "nested": "value1"}, "attribute_data": 1},
            { "event_data": { "nested": "value2"}, "attribute_data": 2},
            { "event_data": { "nested": "value3"}, "attribute_data": 3}]"#;
        assert_eq!(
            render(t, data).unwrap(),
            "\n  {\n    \"attributes\": [1,2,3],\n    \"events\": [map[nested:value1],map[nested:value2],map[nested:value3]]\n  }"
        );
    }

    #[test]
    fn snowbridge_env_and_array_and_missing_fields() {
        std::env::set_var("WEIR_TEMPLATE_TEST_KEY", "supersecret");
        let t = r#"{"api_key": "{{ env "WEIR_TEMPLATE_TEST_KEY" }}", "events": [{{range $i, $data := .}}{{if $i}},{{end}}{{prettyPrint .}}{{end}}]}"#;
        json_eq(
            &render(t, r#"[{ "data": 1}, { "data": 2}]"#).unwrap(),
            r#"{"api_key": "supersecret", "events": [{"data":1},{"data":2}]}"#,
        );
        let t = r#"{"attributes": [{{range $i, $data := .}}{{if $i}},{{end}}{{range $i, $d := $data}}{{if $i}},{{end}}"Value: {{$d}}"{{end}}{{end}}]}"#;
        json_eq(
            &render(t, r#"[["value1", "value2", "value3"]]"#).unwrap(),
            r#"{"attributes": ["Value: value1","Value: value2","Value: value3"]}"#,
        );
        for input in [
            r#"{ "existing": { "nested": "value1"}}"#,
            r#"{ "existing": 100}"#,
            r#"{ "existing": null}"#,
        ] {
            let data = format!("[{input}]");
            assert_eq!(
                render("{{ prettyPrint (index . 0).nonexistent}}", &data).unwrap(),
                "null"
            );
            assert_eq!(
                render("{{ (index . 0).nonexistent}}", &data).unwrap(),
                "<no value>"
            );
        }
    }

    #[test]
    fn snowbridge_errors() {
        assert_eq!(
            parse("{{ ").unwrap_err().to_string(),
            "template: HTTP:1: unclosed action"
        );
        assert_eq!(
            parse("{{ foo }}").unwrap_err().to_string(),
            "template: HTTP:1: function \"foo\" not defined"
        );
        assert_eq!(
            parse("{{ if . }}").unwrap_err().to_string(),
            "template: HTTP:1: unexpected EOF"
        );
        let e = render("a\n{{ index . 1 }}", r#"[{"a":1}]"#)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "template: HTTP:2: executing \"HTTP\" at <index . 1>: error calling index: index out of range"
        );
        let e = render("{{ (index . 0).x }}", r#"["str"]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("can't evaluate field x in type string"), "{e}");
    }

    #[test]
    fn snowbridge_docs_templates() {
        std::env::set_var("SECRET_KEY", "k3y");
        let full = include_str!("sinks/testdata/http-template-full-example.file");
        json_eq(
            &render(full, r#"[{"foo": {"a": 1}}, {"foo": "bar"}, {"x": 1}]"#).unwrap(),
            r#"{"secret_key": "k3y", "data": [{"a":1}, "bar", null]}"#,
        );
        let unwrap = include_str!("sinks/testdata/http-template-unwrap-example.file");
        json_eq(
            &render(unwrap, r#"[{"e": [1, 2]}, {"e": 3}]"#).unwrap(),
            r#"{"e": [1, 2]}"#,
        );
    }

    /// What Go 1.26 printed for the same template and data (`go run`, text/template).
    #[test]
    fn prints_values_as_go_does() {
        let data = r#"[1000000, 123456, 0.0001, 0.00001, 1.5e-7, 1e21, 12345678901234567890, 2.5, -3, {"b":[1,"x",null,true],"a":"<&>"}]"#;
        let t = r#"{{range $i, $x := .}}{{$i}}={{$x}};{{end}}|{{len .}}|{{index . 9 "b"}}|{{(index . 9).zz}}|{{with (index . 9).a}}W{{.}}{{end}}|{{if and (index . 0) (index . 3)}}y{{else}}n{{end}}|{{print 1 "a" 2}}|{{eq (index . 7) 2.5}}"#;
        assert_eq!(
            render(t, data).unwrap(),
            "0=1e+06;1=123456;2=0.0001;3=1e-05;4=1.5e-07;5=1e+21;6=1.2345678901234567e+19;7=2.5;8=-3;9=map[a:<&> b:[1 x <nil> true]];|10|[1 x <nil> true]|<no value>|W<&>|y|1a2|true"
        );
        // json.Marshal of the same, but for the integer Go cannot hold in a float64.
        assert_eq!(
            render("{{prettyPrint .}}", data).unwrap(),
            r#"[1000000,123456,0.0001,0.00001,1.5e-7,1e+21,12345678901234567890,2.5,-3,{"a":"\u003c\u0026\u003e","b":[1,"x",null,true]}]"#
        );
        assert_eq!(
            render("{{- 3 }} {{ 4 -}}  x {{/* c */}}{{.}}", "null").unwrap(),
            "3 4x <no value>"
        );
    }

    #[test]
    fn variables_pipes_and_else_if() {
        let t = r#"{{$n := len .}}{{range .}}{{if eq .k "a"}}A{{else if eq .k "b"}}B{{else}}?{{end}}{{end}}/{{$n}}/{{. | len}}/{{(index . 0).k | printf_free}}"#;
        assert!(
            parse(t).is_err(),
            "unknown functions are refused at parse time"
        );
        let t = r#"{{$n := len .}}{{range .}}{{if eq .k "a"}}A{{else if eq .k "b"}}B{{else}}?{{end}}{{end}}/{{$n}}/{{. | len}}/{{range $k, $v := index . 0}}{{$k}}={{$v}}{{end}}"#;
        assert_eq!(
            render(t, r#"[{"k":"a"},{"k":"b"},{"k":"c"}]"#).unwrap(),
            "AB?/3/3/k=a"
        );
        assert!(parse("{{define \"x\"}}{{end}}")
            .unwrap_err()
            .message
            .contains("not supported"));
    }

    #[test]
    fn output_is_bounded() {
        let t = parse("{{range .}}{{range $}}{{prettyPrint $}}{{end}}{{end}}").unwrap();
        let data: Value =
            serde_json::from_str(&format!("[{}]", vec!["\"xxxxxxxxxx\""; 100].join(","))).unwrap();
        let e = t.render(&data, 64 << 10).unwrap_err();
        assert!(e.message.contains("over its limit of 65536 bytes"), "{e}");
    }
}
