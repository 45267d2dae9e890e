//! A real Apache Kafka for the tests: KRaft brokers started from the jars that
//! `runtime/tests/setup.sh` fetched (`<target dir>/kafka-<version>/libs`), on free ports of
//! 127.0.0.1, with four client listeners each:
//!
//! | listener   | security                                   | for                        |
//! |------------|--------------------------------------------|----------------------------|
//! | PLAINTEXT  | none                                       | most tests, the checkers   |
//! | SSL        | TLS, server authenticated                  | an untrusted-CA check      |
//! | MTLS       | TLS, client certificate required           | mutual TLS                 |
//! | SASL_SSL   | TLS + SASL SCRAM-SHA-512 or PLAIN          | password authentication    |
//!
//! The certificates (a test CA, a broker certificate for 127.0.0.1/localhost, a client
//! certificate, and a second CA nobody trusts) are made here with `rcgen`; the broker reads them
//! as PEM (`ssl.keystore.type=PEM`). SCRAM credentials are written when the log dir is formatted.
//!
//! A broker process is killed by its PID when its [`Kafka`] is dropped, and (through
//! `PR_SET_PDEATHSIG`, set on a thread that lives as long as the test process) when the test
//! process dies, so no JVM outlives its test. [`shared`] is the one broker of a test binary (its
//! tests use their own topics and groups); tests that stop brokers start their own.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

pub const SCRAM_USER: &str = "weir-scram";
pub const SCRAM_PASSWORD: &str = "scram-Secret-4b1d";
pub const PLAIN_USER: &str = "weir-plain";
pub const PLAIN_PASSWORD: &str = "plain-Secret-77c2";

/// The JVM's heap; `WEIR_KAFKA_HEAP` overrides (e.g. `1g` for a bench).
const DEFAULT_HEAP: &str = "512m";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Kafka version setup.sh pins (its `KAFKA_VERSION=` line: one place to change it).
pub fn kafka_version() -> String {
    let setup = std::fs::read_to_string(repo_root().join("runtime/tests/setup.sh")).unwrap();
    setup
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION="))
        .expect("KAFKA_VERSION= in runtime/tests/setup.sh")
        .trim()
        .to_string()
}

/// The broker's jars: `WEIR_KAFKA_LIBS`, or `kafka-<version>/libs` in the target dir this test
/// binary was built into.
pub fn kafka_libs() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_KAFKA_LIBS") {
        return PathBuf::from(p);
    }
    let want = format!("kafka-{}/libs", kafka_version());
    let exe = std::env::current_exe().expect("test binary path");
    for dir in exe.ancestors() {
        let p = dir.join(&want);
        if p.join(".complete").is_file() {
            return p;
        }
    }
    panic!(
        "Apache Kafka's jars ({want}) not found in the target dir: run `bash runtime/tests/setup.sh` \
         (with the same CARGO_TARGET_DIR) or set WEIR_KAFKA_LIBS"
    );
}

/// PEM files made for one broker (or cluster) and its clients.
pub struct Certs {
    /// The CA that signed the broker's and the client's certificates.
    pub ca: PathBuf,
    /// The broker's key and certificate chain, in one file (Kafka's PEM keystore).
    pub broker: PathBuf,
    /// The client's certificate and key, for mutual TLS.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing the broker presents.
    pub untrusted_ca: PathBuf,
}

impl Certs {
    fn make(dir: &Path) -> Certs {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let issuer = ca("weir test CA");
        let stranger = ca("weir untrusted CA");
        let leaf = |name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose| {
            let mut p =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (broker_cert, broker_key) = leaf(
            "kafka-broker",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf("weir-client", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let w = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Certs {
            ca: w("ca.pem", &issuer.pem()),
            // The broker also authenticates clients (and its own controller connections need
            // none): its chain is its certificate and the CA's.
            broker: w(
                "broker.pem",
                &format!("{broker_key}{broker_cert}{}", issuer.pem()),
            ),
            client_cert: w("client.pem", &client_cert),
            client_key: w("client.key", &client_key),
            untrusted_ca: w("untrusted-ca.pem", &stranger.pem()),
        }
    }
}

/// The ports of one node.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub plaintext: u16,
    pub ssl: u16,
    pub mtls: u16,
    pub sasl_ssl: u16,
    pub controller: u16,
}

impl Ports {
    /// Five ports that were free a moment ago (the OS picks them; a clash with a port taken
    /// since is caught at start-up and retried with new ones).
    fn pick() -> Ports {
        let ls: Vec<std::net::TcpListener> = (0..5)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let p: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
        Ports {
            plaintext: p[0],
            ssl: p[1],
            mtls: p[2],
            sasl_ssl: p[3],
            controller: p[4],
        }
    }
}

struct Node {
    id: u32,
    ports: Ports,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn props(&self) -> PathBuf {
        self.dir.join("server.properties")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("broker.log")
    }
}

/// One broker or a cluster, with its log dirs and certificates in a temporary directory.
pub struct Kafka {
    nodes: Vec<Node>,
    pub certs: Certs,
    cluster_id: String,
    /// Per-node extra broker settings.
    extra: Vec<(String, String)>,
    dir: tempfile::TempDir,
    /// Start-up time of the first start, for the report.
    pub started_in: Duration,
}

/// Options of a broker or cluster.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra `server.properties` lines (override the defaults).
    pub settings: Vec<(String, String)>,
}

impl Kafka {
    /// A single node (broker and controller) with every listener.
    pub fn single() -> Kafka {
        Kafka::start(1, Options::default())
    }

    /// `n` nodes, each broker and controller (a static quorum of `n` voters).
    pub fn cluster(n: usize) -> Kafka {
        Kafka::start(n, Options::default())
    }

    pub fn start(n: usize, opts: Options) -> Kafka {
        clean_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("weir-kafka-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let certs = Certs::make(dir.path());
        let cluster_id = random_uuid();
        let mut kafka = Kafka {
            nodes: Vec::new(),
            certs,
            cluster_id,
            extra: opts.settings,
            dir,
            started_in: Duration::ZERO,
        };
        let t0 = Instant::now();
        // A port taken between picking and binding makes a node exit at once: pick new ports
        // for every node and start over.
        for attempt in 0.. {
            kafka.stop_all();
            kafka.nodes = (1..=n as u32)
                .map(|id| Node {
                    id,
                    ports: Ports::pick(),
                    dir: kafka.dir.path().join(format!("node-{id}-{attempt}")),
                    child: None,
                })
                .collect();
            // Formatting is a JVM start each: all at once.
            let formats: Vec<_> = (0..n).map(|i| kafka.format(i)).collect();
            for f in formats {
                finish_tool(f);
            }
            for i in 0..n {
                kafka.launch(i);
            }
            match kafka.wait_ready(Duration::from_secs(120)) {
                Ok(()) => break,
                Err(e) if attempt < 4 && e.contains("Address already in use") => {
                    eprintln!("kafka: port clash, retrying with new ports: {e}");
                }
                Err(e) => panic!("Kafka did not start: {e}"),
            }
        }
        kafka.started_in = t0.elapsed();
        eprintln!(
            "kafka: {n} node(s) ready in {:.1?} (bootstrap {})",
            kafka.started_in,
            kafka.bootstrap()
        );
        kafka
    }

    fn voters(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.ports.controller))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn write_props(&self, i: usize) {
        let n = &self.nodes[i];
        let p = n.ports;
        let rf = self.nodes.len().min(3);
        let min_isr = if rf >= 3 { 2 } else { 1 };
        let mut settings: Vec<(String, String)> = vec![
            ("process.roles", "broker,controller".to_string()),
            ("node.id", n.id.to_string()),
            ("controller.quorum.voters", self.voters()),
            ("controller.listener.names", "CONTROLLER".into()),
            (
                "listeners",
                format!(
                    "PLAINTEXT://127.0.0.1:{},SSL://127.0.0.1:{},MTLS://127.0.0.1:{},SASL_SSL://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                    p.plaintext, p.ssl, p.mtls, p.sasl_ssl, p.controller
                ),
            ),
            (
                "advertised.listeners",
                format!(
                    "PLAINTEXT://127.0.0.1:{},SSL://127.0.0.1:{},MTLS://127.0.0.1:{},SASL_SSL://127.0.0.1:{}",
                    p.plaintext, p.ssl, p.mtls, p.sasl_ssl
                ),
            ),
            (
                "listener.security.protocol.map",
                "PLAINTEXT:PLAINTEXT,SSL:SSL,MTLS:SSL,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT".into(),
            ),
            ("inter.broker.listener.name", "PLAINTEXT".into()),
            ("log.dirs", n.dir.join("data").display().to_string()),
            // TLS: PEM files, the client certificate required on MTLS only.
            ("ssl.keystore.type", "PEM".into()),
            ("ssl.keystore.location", self.certs.broker.display().to_string()),
            ("ssl.truststore.type", "PEM".into()),
            ("ssl.truststore.location", self.certs.ca.display().to_string()),
            ("listener.name.mtls.ssl.client.auth", "required".into()),
            // SASL over TLS: SCRAM-SHA-512 (credentials written at format time) and PLAIN.
            (
                "listener.name.sasl_ssl.sasl.enabled.mechanisms",
                "SCRAM-SHA-512,PLAIN".into(),
            ),
            (
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config",
                "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
            ),
            (
                "listener.name.sasl_ssl.plain.sasl.jaas.config",
                format!(
                    "org.apache.kafka.common.security.plain.PlainLoginModule required user_{PLAIN_USER}=\"{PLAIN_PASSWORD}\";"
                ),
            ),
            // Internal topics small and replicated as far as the cluster allows.
            ("offsets.topic.replication.factor", rf.to_string()),
            ("offsets.topic.num.partitions", "4".into()),
            ("transaction.state.log.replication.factor", rf.to_string()),
            ("transaction.state.log.min.isr", min_isr.to_string()),
            ("transaction.state.log.num.partitions", "4".into()),
            ("share.coordinator.state.topic.replication.factor", rf.to_string()),
            ("share.coordinator.state.topic.min.isr", min_isr.to_string()),
            ("default.replication.factor", rf.to_string()),
            ("auto.create.topics.enable", "false".into()),
            // Tests kill members and restart at once: no 3 s wait for a new group's first
            // rebalance, and short sessions allowed.
            ("group.initial.rebalance.delay.ms", "0".into()),
            ("group.min.session.timeout.ms", "500".into()),
            // The same for KIP-848's consumer protocol (whose timing is the broker's): a
            // 6 s session, 1 s heartbeats (Kafka's defaults: 45 s and 5 s).
            ("group.consumer.min.session.timeout.ms", "1000".into()),
            ("group.consumer.session.timeout.ms", "6000".into()),
            ("group.consumer.min.heartbeat.interval.ms", "500".into()),
            ("group.consumer.heartbeat.interval.ms", "1000".into()),
            // The log cleaner looks for work often, so compaction happens during a test.
            ("log.cleaner.backoff.ms", "500".into()),
            ("log.segment.delete.delay.ms", "1000".into()),
            ("num.network.threads", "2".into()),
            ("num.io.threads", "4".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in &self.extra {
            settings.retain(|(k2, _)| k2 != k);
            settings.push((k.clone(), v.clone()));
        }
        let text: String = settings.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::create_dir_all(&n.dir).unwrap();
        std::fs::write(n.props(), text).unwrap();
        std::fs::write(
            n.dir.join("log4j2.yaml"),
            format!(
                "Configuration:\n  Appenders:\n    File:\n      name: F\n      fileName: {:?}\n      PatternLayout:\n        pattern: \"[%d] %p %m (%c)%n\"\n  Loggers:\n    Root:\n      level: WARN\n      AppenderRef:\n        - ref: F\n    Logger:\n      - name: kafka.server.KafkaRaftServer\n        level: INFO\n",
                n.dir.join("server.log").display().to_string()
            ),
        )
        .unwrap();
    }

    /// Starts formatting node `i`'s log dir (with the SCRAM credentials); [`finish_tool`] waits.
    fn format(&mut self, i: usize) -> (Vec<String>, Child) {
        self.write_props(i);
        let props = self.nodes[i].props().display().to_string();
        let scram = format!("SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]");
        let args = [
            "format",
            "-t",
            &self.cluster_id,
            "-c",
            &props,
            "--add-scram",
            &scram,
        ];
        (
            args.iter().map(|a| a.to_string()).collect(),
            spawn_tool(&args),
        )
    }

    fn launch(&mut self, i: usize) {
        let n = &self.nodes[i];
        let log = std::fs::File::create(n.log()).unwrap();
        let mut cmd = java();
        cmd.arg(format!(
            "-Dlog4j2.configurationFile={}",
            n.dir.join("log4j2.yaml").display()
        ))
        .arg("kafka.Kafka")
        .arg(n.props())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        let child = spawn_kept(cmd).expect("java starts");
        self.nodes[i].child = Some(child);
    }

    /// Waits until every running node serves metadata on its PLAINTEXT listener and knows every
    /// running broker; on a node's early exit, its log.
    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect();
        for &i in &running {
            loop {
                let n = &mut self.nodes[i];
                if let Some(status) = n.child.as_mut().unwrap().try_wait().unwrap() {
                    n.child = None;
                    let log = std::fs::read_to_string(n.log()).unwrap_or_default()
                        + &std::fs::read_to_string(n.dir.join("server.log")).unwrap_or_default();
                    return Err(format!(
                        "node {} exited ({status}): {}",
                        n.id,
                        tail(&log, 30)
                    ));
                }
                let bs = format!("127.0.0.1:{}", n.ports.plaintext);
                if brokers_known(&bs) >= running.len() {
                    break;
                }
                if start.elapsed() > limit {
                    return Err(format!(
                        "node {} not ready within {limit:?}: {}",
                        n.id,
                        tail(&std::fs::read_to_string(n.log()).unwrap_or_default(), 30)
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The PLAINTEXT bootstrap servers of every node.
    pub fn bootstrap(&self) -> String {
        self.list(|p| p.plaintext)
    }
    pub fn bootstrap_ssl(&self) -> String {
        self.list(|p| p.ssl)
    }
    pub fn bootstrap_mtls(&self) -> String {
        self.list(|p| p.mtls)
    }
    pub fn bootstrap_sasl_ssl(&self) -> String {
        self.list(|p| p.sasl_ssl)
    }
    fn list(&self, f: impl Fn(&Ports) -> u16) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", f(&n.ports)))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node_ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The JVM process of node `id`, if running.
    pub fn pid(&self, id: u32) -> Option<u32> {
        self.node(id).child.as_ref().map(Child::id)
    }

    fn node(&self, id: u32) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("a node id")
    }

    /// SIGKILLs node `id` (an unclean stop: the broker recovers its log on the next start).
    pub fn kill(&mut self, id: u32) {
        let n = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `id` again on its ports and log dir, and waits until the cluster serves.
    pub fn restart(&mut self, id: u32) {
        let i = self.nodes.iter().position(|n| n.id == id).unwrap();
        assert!(self.nodes[i].child.is_none(), "node {id} is running");
        // Its port may be taken a moment longer by connections in TIME_WAIT: the broker sets
        // SO_REUSEADDR, but retry a few times on a clash anyway.
        for attempt in 0..5 {
            self.launch(i);
            match self.wait_ready(Duration::from_secs(120)) {
                Ok(()) => return,
                Err(e) if attempt < 4 && e.contains("Address already in use") => {
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => panic!("node {id} did not restart: {e}"),
            }
        }
    }

    fn stop_all(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// The server log of node `id` (WARN and above, and start/stop lines).
    pub fn server_log(&self, id: u32) -> String {
        let n = self.node(id);
        std::fs::read_to_string(n.dir.join("server.log")).unwrap_or_default()
    }

    /// The data directory of node `id` (`<topic>-<partition>/` inside).
    pub fn data_dir(&self, id: u32) -> PathBuf {
        self.node(id).dir.join("data")
    }

    /// A client config for the PLAINTEXT listener.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }

    /// Creates a topic (replicated `rf` times, with `configs`) and waits until every partition
    /// has a leader.
    pub fn create_topic(&self, name: &str, partitions: i32, rf: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().unwrap();
        let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(rf));
        for (k, v) in configs {
            t = t.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let res = futures::executor::block_on(admin.create_topics([&t], &opts)).unwrap();
        for r in res {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
        let c: BaseConsumer = self.client().create().unwrap();
        let start = Instant::now();
        loop {
            let ready = c
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    md.topics().first().map(|t| {
                        t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "topic {name} has no leaders"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The leader of each partition of `topic`.
    pub fn leaders(&self, topic: &str) -> HashMap<i32, i32> {
        let c: BaseConsumer = self.client().create().unwrap();
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        md.topics()[0]
            .partitions()
            .iter()
            .map(|p| (p.id(), p.leader()))
            .collect()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The broker every test of one test binary shares, started on first use. It is killed when
/// the test process exits (and its directory removed).
pub fn shared() -> &'static Kafka {
    static SHARED: OnceLock<&'static Kafka> = OnceLock::new();
    SHARED.get_or_init(|| {
        let k: &'static Kafka = Box::leak(Box::new(Kafka::single()));
        *AT_EXIT.lock().unwrap() = Some(k as *const Kafka as usize);
        extern "C" fn stop_shared() {
            if let Some(p) = AT_EXIT.lock().ok().and_then(|mut g| g.take()) {
                // SAFETY: the leaked Kafka lives for the rest of the process; at exit nothing
                // else uses it.
                let k = unsafe { &mut *(p as *mut Kafka) };
                k.stop_all();
                let _ = std::fs::remove_dir_all(k.dir.path());
            }
        }
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(stop_shared) };
        k
    })
}

static AT_EXIT: Mutex<Option<usize>> = Mutex::new(None);

fn java() -> Command {
    let heap = std::env::var("WEIR_KAFKA_HEAP").unwrap_or_else(|_| DEFAULT_HEAP.into());
    let mut c = Command::new("java");
    c.arg(format!("-Xmx{heap}"))
        .arg("-Xms128m")
        .args(["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"])
        .arg("-Djava.awt.headless=true")
        .arg("-cp")
        .arg(format!("{}/*", kafka_libs().display()));
    c
}

/// A Kafka cluster id, as `kafka-storage random-uuid` makes one (16 random bytes, base64url
/// without padding), without starting a JVM for it. Like Kafka's `Uuid.randomUuid`, it never
/// starts with `-`: StorageTool would read such an id (1 in 64) as an option and fail to format.
fn random_uuid() -> String {
    use base64::Engine;
    use std::io::Read;
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    loop {
        let mut b = [0u8; 16];
        urandom.read_exact(&mut b).unwrap();
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn spawn_tool(args: &[&str]) -> Child {
    java()
        .arg("kafka.tools.StorageTool")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("java runs (is a JDK >= 17 installed? runtime/tests/setup.sh installs one)")
}

/// Waits for a StorageTool run; its stdout.
fn finish_tool((args, child): (Vec<String>, Child)) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "StorageTool {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| !l.starts_with("SLF4J"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How many brokers the cluster behind `bootstrap` lists (0 if it does not answer).
fn brokers_known(bootstrap: &str) -> usize {
    let c: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create()
    {
        Ok(c) => c,
        Err(_) => return 0,
    };
    c.fetch_metadata(None, Duration::from_millis(1000))
        .map(|md| md.brokers().len())
        .unwrap_or(0)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Spawns `cmd` from a thread that lives as long as the test process, with the child set to be
/// SIGKILLed when that thread (the process) dies: a test that panics or is killed leaves no
/// broker behind. (PR_SET_PDEATHSIG fires when the spawning *thread* exits, so the test's own
/// thread, which ends with the test, must not spawn it.)
fn spawn_kept(cmd: Command) -> std::io::Result<Child> {
    type Req = (Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Req>>> = OnceLock::new();
    let tx = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Req>();
        std::thread::Builder::new()
            .name("kafka-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    use std::os::unix::process::CommandExt;
                    // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
                    unsafe {
                        cmd.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
                // The senders live in a static: never reached, so the thread never exits.
            })
            .unwrap();
        Mutex::new(tx)
    });
    let (reply, rx) = mpsc::channel();
    tx.lock().unwrap().send((cmd, reply)).unwrap();
    rx.recv().unwrap()
}

/// Removes the directories of brokers whose test process is gone (killed before it could).
fn clean_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("weir-kafka-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
