//! `weir transform …`: the transform author's dev loop.
//!
//! * `weir transform test --wasm FILE [--config K=V]… INPUT` runs a transform on a file of
//!   records (one per line) the way a pipeline would, and prints every output record (with the
//!   input it came from), every dropped record and every failed record with its reason.
//! * `weir transform new NAME` writes a Rust transform crate that builds and tests as is.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;

use weir_core::record::Record;
use weir_core::state::MemoryBackend;
use weir_core::wasm::engine::LoadKind;
use weir_core::wasm::guest::{Guest, GuestOptions, Limits};

#[derive(Debug, clap::Subcommand)]
pub enum TransformCommand {
    /// Run a WebAssembly transform on a file of records (one per line) and print its outputs,
    /// the records it dropped and the records that failed, with the reasons.
    Test(TestArgs),
    /// Write a new Rust transform crate (builds with `cargo build --release --target
    /// wasm32-unknown-unknown`, tests with `cargo test`).
    New(NewArgs),
}

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The transform (.wasm: a component, or a core module built with the SDK).
    #[arg(long)]
    pub wasm: PathBuf,
    /// A setting of the transform's `config`, as KEY=VALUE (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Records per batch (one guest call each).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Time limit per batch, e.g. 500ms.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Memory limit in MiB.
    #[arg(long, default_value_t = 64)]
    pub max_memory_mib: usize,
    /// Print whole records instead of the first 120 characters.
    #[arg(long)]
    pub full: bool,
    /// Print only the summary.
    #[arg(long)]
    pub summary: bool,
    /// Records, one per line ("-" for stdin).
    pub input: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// Name of the transform (a crate name, e.g. `my-filter`).
    pub name: String,
    /// Directory to create (default: ./NAME).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Path to the weir-transform-sdk crate (default: the one in weir's source tree, if found).
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

pub fn main(cmd: TransformCommand) -> ExitCode {
    let r = match cmd {
        TransformCommand::Test(a) => test(a),
        TransformCommand::New(a) => new(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(super::EXIT_CONFIG)
        }
    }
}

fn excerpt(b: &[u8], full: bool) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.replace('\t', "→");
    if full || s.chars().count() <= 120 {
        s
    } else {
        let cut: String = s.chars().take(120).collect();
        format!("{cut}… ({} bytes)", b.len())
    }
}

fn test(a: TestArgs) -> anyhow::Result<ExitCode> {
    let mut config = Vec::new();
    for kv in &a.config {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--config {kv:?}: expected KEY=VALUE"))?;
        config.push((k.to_string(), v.to_string()));
    }
    anyhow::ensure!(a.batch > 0, "--batch: expected at least 1");
    let lines = read_lines(&a.input)?;
    let t = Instant::now();
    let mut g = Guest::new(
        &a.wasm,
        GuestOptions {
            label: a.wasm.display().to_string(),
            config,
            limits: Limits {
                timeout: a.timeout,
                max_memory: a.max_memory_mib << 20,
                ..Limits::default()
            },
            state: MemoryBackend::new(),
            cache_dir: weir_core::wasm::cache::default_dir(),
        },
    )
    .with_context(|| a.wasm.display().to_string())?;
    let (kind, took) = g.load;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: {} in {:.1} ms; instance ready in {:.1} ms",
        a.wasm.display(),
        match kind {
            LoadKind::Compiled => "compiled (and cached)",
            LoadKind::Cached => "loaded from the compile cache",
            LoadKind::Memory => "already loaded",
        },
        took.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    )?;
    if let Some(f) = g.fields() {
        let names: Vec<&str> = f.iter().map(|&i| weir_snowplow::FIELDS[i].name).collect();
        writeln!(out, "weir sends only these fields: {}", names.join(", "))?;
    }
    let n = lines.len();
    let batches = n.div_ceil(a.batch);
    writeln!(
        out,
        "input: {n} records from {} in {batches} batch(es)",
        a.input.display()
    )?;

    let mut outputs: Vec<(usize, Record)> = Vec::new();
    let mut filtered: Vec<usize> = Vec::new();
    let mut failed: Vec<(usize, String)> = Vec::new();
    let mut in_guest = Duration::ZERO;
    let read_at = weir_snowplow::now_ms();
    for (bi, chunk) in lines.chunks(a.batch).enumerate() {
        let base = bi * a.batch;
        let records: Vec<Record> = chunk.iter().map(|v| Record::new(v.clone())).collect();
        let t = Instant::now();
        let o = g.run(records, read_at);
        in_guest += t.elapsed();
        outputs.extend(o.sources.iter().map(|s| base + s).zip(o.records));
        filtered.extend(o.filtered.iter().map(|(i, _)| base + i));
        failed.extend(o.failed.into_iter().map(|(i, _, m)| (base + i, m)));
    }
    let flushed = g.flush();
    let line_no = |i: usize| format!("line {}", i + 1);
    if !a.summary {
        writeln!(out, "\n== outputs ({}) ==", outputs.len())?;
        for (i, r) in &outputs {
            write!(out, "  {:>9} | {}", line_no(*i), excerpt(&r.value, a.full))?;
            if let Some(k) = &r.key {
                write!(out, "  [key: {}]", excerpt(k, a.full))?;
            }
            writeln!(out)?;
        }
        writeln!(out, "\n== filtered ({}) ==", filtered.len())?;
        for i in &filtered {
            writeln!(
                out,
                "  {:>9} | {}",
                line_no(*i),
                excerpt(&lines[*i], a.full)
            )?;
        }
        writeln!(out, "\n== failed ({}) ==", failed.len())?;
        for (i, reason) in &failed {
            let rec = lines
                .get(*i)
                .map(|l| excerpt(l, a.full))
                .unwrap_or_default();
            writeln!(out, "  {:>9} | {rec}", line_no(*i))?;
            for l in reason.lines() {
                writeln!(out, "            {l}")?;
            }
        }
        if !flushed.is_empty() {
            writeln!(out, "\n== flushed at end of input ({}) ==", flushed.len())?;
            for r in &flushed {
                writeln!(out, "  {}", excerpt(&r.value, a.full))?;
            }
        }
    }
    writeln!(
        out,
        "\nsummary: {n} in → {} out, {} filtered, {} failed{}; {} guest call(s), {} trap(s), {:.2} ms in the transform",
        outputs.len() + flushed.len(),
        filtered.len(),
        failed.len(),
        if flushed.is_empty() {
            String::new()
        } else {
            format!(" ({} from flush)", flushed.len())
        },
        g.stats.calls,
        g.stats.traps,
        in_guest.as_secs_f64() * 1e3
    )?;
    Ok(ExitCode::SUCCESS)
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<Bytes>> {
    let mut data = Vec::new();
    if path == Path::new("-") {
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut data)
            .context("cannot read stdin")?;
    } else {
        data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    }
    let data = Bytes::from(data);
    let mut out = Vec::new();
    let mut start = 0;
    for i in memchr::memchr_iter(b'\n', &data) {
        let end = if i > start && data[i - 1] == b'\r' {
            i - 1
        } else {
            i
        };
        if end > start {
            out.push(data.slice(start..end));
        }
        start = i + 1;
    }
    if start < data.len() {
        out.push(data.slice(start..));
    }
    Ok(out)
}

const TEMPLATE_CARGO: &str = include_str!("../../../transforms/template/Cargo.toml.tmpl");
const TEMPLATE_LIB: &str = include_str!("../../../transforms/template/lib.rs.tmpl");
const TEMPLATE_CARGO_CONFIG: &str =
    include_str!("../../../transforms/template/cargo-config.toml.tmpl");
const TEMPLATE_README: &str = include_str!("../../../transforms/template/README.md.tmpl");

fn new(a: NewArgs) -> anyhow::Result<ExitCode> {
    let name = a.name.trim();
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic()),
        "expected a crate name (letters, digits, - and _; starting with a letter), found {name:?}"
    );
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    anyhow::ensure!(
        !dir.exists() || std::fs::read_dir(&dir)?.next().is_none(),
        "{} exists and is not empty",
        dir.display()
    );
    let sdk = match &a.sdk {
        Some(p) => Some(p.clone()),
        None => {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../transforms/sdk");
            p.join("Cargo.toml").is_file().then_some(p)
        }
    };
    let sdk_dep = match sdk {
        Some(p) => {
            let p = std::fs::canonicalize(&p).with_context(|| format!("--sdk {}", p.display()))?;
            format!(
                "weir-transform-sdk = {{ path = {:?} }}",
                p.display().to_string()
            )
        }
        None => "weir-transform-sdk = \"0.1\"".to_string(),
    };
    let ty: String = name
        .split(['-', '_'])
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate_name}}", &name.replace('-', "_"))
            .replace("{{Type}}", &ty)
            .replace("{{sdk_dependency}}", &sdk_dep)
    };
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    std::fs::write(dir.join("Cargo.toml"), fill(TEMPLATE_CARGO))?;
    std::fs::write(dir.join("src/lib.rs"), fill(TEMPLATE_LIB))?;
    std::fs::write(dir.join(".cargo/config.toml"), fill(TEMPLATE_CARGO_CONFIG))?;
    std::fs::write(dir.join("README.md"), fill(TEMPLATE_README))?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    println!(
        "created {} ({name}: a filter on event_name)\n\nnext:\n  cd {}\n  cargo test\n  \
         cargo build --release --target wasm32-unknown-unknown\n  weir transform test --wasm \
         target/wasm32-unknown-unknown/release/{}.wasm events.tsv",
        dir.display(),
        dir.display(),
        name.replace('-', "_")
    );
    Ok(ExitCode::SUCCESS)
}
