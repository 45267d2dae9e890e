//! A throwaway PostgreSQL server for the tests: Debian's `postgresql` package (installed by
//! runtime/tests/setup.sh), `initdb` into a temp dir and `pg_ctl start` on a free loopback port,
//! trust authentication, run as the `postgres` user when the tests run as root (the server
//! refuses root). Stopped and deleted when dropped. Queries go through `psql`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// With TLS: the CA that signed the server's certificate, and one that signed nothing.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The newest installed server's bin dir (`/usr/lib/postgresql/<major>/bin`), or `$PG_BIN`.
fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (bash runtime/tests/setup.sh installs Debian's package)")
        .filter_map(|e| {
            let e = e.ok()?;
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
        .1
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(false)
    }

    /// A server that also takes TLS (`ssl = on`), its certificate (for `localhost` and
    /// `127.0.0.1`) signed by a CA the test makes.
    pub fn start_tls() -> Postgres {
        Postgres::start_with(true)
    }

    fn start_with(tls: bool) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("weir-pg-")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let mut pg = Postgres {
            bin: bin_dir(),
            port: free_port(),
            dir,
            tls: None,
        };
        if tls {
            pg.tls = Some(pg.make_certs());
        }
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown to the postgres user");
        }
        let data = pg.data();
        pg.as_server_user(pg.server_cmd("initdb").arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]));
        pg.resume();
        pg
    }

    /// A CA, the server's certificate and key (key mode 0600, as the server demands), and a
    /// stranger CA.
    fn make_certs(&self) -> (PathBuf, PathBuf) {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let issuer = ca("weir test PostgreSQL CA");
        let stranger = ca("weir untrusted CA");
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "postgres");
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        let d = self.dir.path();
        std::fs::write(d.join("server.crt"), cert.pem()).unwrap();
        std::fs::write(d.join("server.key"), key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(d.join("ca.pem"), issuer.pem()).unwrap();
        std::fs::write(d.join("stranger.pem"), stranger.pem()).unwrap();
        (d.join("ca.pem"), d.join("stranger.pem"))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server program's command, run as `postgres` when the tests run as root.
    fn server_cmd(&self, program: &str) -> Command {
        if is_root() {
            let mut r = Command::new("runuser");
            r.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
            r
        } else {
            Command::new(self.bin.join(program))
        }
    }

    /// Runs a server program; fails the test if it fails.
    fn as_server_user(&self, c: &mut Command) {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{:?} failed:\n{}\n{}\n{}",
            c,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Starts (again) the server on its port, waiting until it accepts connections.
    pub fn resume(&self) {
        let mut opts = format!(
            "-k {} -h 127.0.0.1 -p {} -c fsync=off -c max_connections=50",
            self.dir.path().display(),
            self.port
        );
        if self.tls.is_some() {
            let d = self.dir.path().display();
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key"
            ));
        }
        self.as_server_user(
            self.server_cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "60", "-o", &opts, "-l"])
                .arg(self.dir.path().join("server.log"))
                .arg("start"),
        );
    }

    /// Stops the server: `fast` disconnects clients and shuts down cleanly, `immediate` is a crash.
    pub fn stop(&self, mode: &str) {
        self.as_server_user(
            self.server_cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-m", mode, "stop"]),
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `sql`'s result rows, fields separated by `|` (psql's unaligned output).
    pub fn query(&self, sql: &str) -> Vec<String> {
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
