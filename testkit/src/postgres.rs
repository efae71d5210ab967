//! A throwaway PostgreSQL cluster: initdb and pg_ctl from the installed server, run as the
//! `postgres` system user (initdb refuses root), in a temporary directory, listening on
//! 127.0.0.1 on a free port and on a unix socket in that directory. fsync stays on.
//!
//! Drop stops it (immediate mode) and removes the directory, also when a test panics.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::free_port;
use std::sync::atomic::{AtomicU32, Ordering};

/// The superuser the cluster is made with (and the OS user it runs as).
const SUPERUSER: &str = "postgres";

pub struct Postgres {
    dir: tempfile::TempDir,
    /// `dir/data`; the server log and the socket stay outside it, in `dir`.
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    uid: u32,
    gid: u32,
    databases: AtomicU32,
}

/// The newest installed server's bin directory.
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (the test command installs postgresql)")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no initdb under /usr/lib/postgresql")
        .1
}

/// (uid, gid) of the `postgres` system user.
fn system_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&SUPERUSER))
                .then(|| (fields[2].parse().unwrap(), fields[3].parse().unwrap()))
        })
        .expect("no postgres system user (the test command installs postgresql)")
}

fn random_hex() -> String {
    let mut bytes = [0u8; 12];
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut f, &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Postgres {
    /// A new cluster, started.
    pub fn start() -> Postgres {
        let (uid, gid) = system_user();
        // Under the system temp directory: the server user must be able to reach it.
        let dir = tempfile::Builder::new()
            .prefix("nbde-pg-")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let cluster = Postgres {
            data: dir.path().join("data"),
            dir,
            bin: server_bin(),
            port: free_port(),
            password: random_hex(),
            uid,
            gid,
            databases: AtomicU32::new(0),
        };
        let pwfile = cluster.dir.path().join("pwfile");
        std::fs::write(&pwfile, &cluster.password).unwrap();
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        cluster.ok(cluster.as_server_user("initdb").args([
            "-D",
            cluster.data_dir().to_str().unwrap(),
            "-U",
            SUPERUSER,
            "--pwfile",
            pwfile.to_str().unwrap(),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            // Only initdb's own closing sync: the running server keeps fsync on.
            "--no-sync",
        ]));
        std::fs::remove_file(&pwfile).unwrap();
        let settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = on\nsynchronous_commit = on\n\
             # The erasure needs old WAL segments unlinked, not renamed for reuse.\n\
             wal_recycle = off\nmax_connections = 200\n",
            cluster.port,
            cluster.dir.path().display()
        );
        let conf = cluster.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&settings);
        std::fs::write(&conf, text).unwrap();
        cluster.start_again();
        cluster
    }

    fn as_server_user(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn ok(&self, command: &mut Command) -> Output {
        let out = command.output().expect("cannot run a PostgreSQL program");
        assert!(
            out.status.success(),
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut command = self.as_server_user("pg_ctl");
        command
            .args(["-D", self.data_dir().to_str().unwrap(), "-w", "-t", "60"])
            .args(args);
        command
    }

    /// The cluster's data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log, outside the data directory.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A fresh database; its `postgres://` URL (with the superuser's password).
    pub fn create_database(&self) -> String {
        let name = format!("nbde_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        self.psql(&format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// The URL of database `name`, over TCP on 127.0.0.1 with password authentication.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{name}",
            self.password, self.port
        )
    }

    /// The superuser's password (in every URL handed out).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Runs `sql` as the superuser over the unix socket; its output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// `psql`, in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = self.ok(self.as_server_user("psql").args([
            "-h",
            self.dir.path().to_str().unwrap(),
            "-p",
            &self.port.to_string(),
            "-U",
            SUPERUSER,
            "-d",
            db,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Serves TLS with `cert_pem` and `key_pem` and refuses every TCP connection without
    /// it (pg_hba: `hostssl` only); restarts the server.
    pub fn require_tls(&self, cert_pem: &str, key_pem: &str) {
        use std::os::unix::fs::{PermissionsExt, chown};
        for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = self.data_dir().join(name);
            std::fs::write(&path, pem).unwrap();
            chown(&path, Some(self.uid), Some(self.gid)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let conf = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        let hba = self.data_dir().join("pg_hba.conf");
        let rules: String = std::fs::read_to_string(&hba)
            .unwrap()
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&hba, rules).unwrap();
        self.stop();
        self.start_again();
    }

    /// Stops the server (fast: sessions are ended, as when a database is restarted).
    pub fn stop(&self) {
        self.ok(&mut self.pg_ctl(&["-m", "fast", "stop"]));
    }

    /// Starts the server again, on the same port.
    pub fn start_again(&self) {
        let log = self.log_file();
        self.ok(&mut self.pg_ctl(&["-l", log.to_str().unwrap(), "start"]));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Whatever state it is in; an already stopped server makes this fail quietly.
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]).output();
    }
}
