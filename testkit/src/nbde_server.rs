//! `nbde-server` processes for tests: on a SQLite data directory of their own, or on a
//! PostgreSQL database that several of them (replicas) share.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{bin, run_ok, tempdir};

/// A running `nbde-server` on a free loopback port with its own data directory, ended by
/// PID when dropped. `token` is the owner token `init` printed; `kek` the key-encryption
/// key file, in a directory of its own (never inside the data directory).
pub struct NbdeServer {
    pub data: tempfile::TempDir,
    pub kek: PathBuf,
    _kek_dir: tempfile::TempDir,
    pub url: String,
    pub token: String,
    /// CA file the admin CLI trusts when the server speaks HTTPS.
    pub cacert: Option<PathBuf>,
    /// The PostgreSQL URL the server runs on instead of `data` (which then stays empty).
    pub database: Option<String>,
    extra_args: Vec<String>,
    child: Option<std::process::Child>,
    /// Every line the server wrote to stderr (its log), across restarts.
    log: Arc<Mutex<Vec<String>>>,
    /// `NBDE_LOG` for the process, when not the default.
    log_filter: Option<String>,
}

impl NbdeServer {
    pub fn start(extra_args: &[&str]) -> NbdeServer {
        NbdeServer::start_on(0, extra_args)
    }

    /// As `start`, on a given port (0: any free one).
    pub fn start_on(port: u16, extra_args: &[&str]) -> NbdeServer {
        NbdeServer::start_with_data(tempdir(), port, extra_args)
    }

    /// As `start`, with its data directory made inside `parent` (a file system of the
    /// test's choosing).
    pub fn start_in(parent: &Path, extra_args: &[&str]) -> NbdeServer {
        let data = tempfile::tempdir_in(parent).unwrap();
        NbdeServer::start_with_data(data, 0, extra_args)
    }

    fn start_with_data(data: tempfile::TempDir, port: u16, extra_args: &[&str]) -> NbdeServer {
        let kek_dir = tempdir();
        let kek = kek_dir.path().join("kek");
        let out = run_ok(
            &bin("nbde-server"),
            &[
                "init",
                "--data",
                data.path().to_str().unwrap(),
                "--kek-file",
                kek.to_str().unwrap(),
            ],
            b"",
        );
        let token = String::from_utf8(out)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_owned();
        let mut server = NbdeServer {
            data,
            kek,
            _kek_dir: kek_dir,
            url: format!("http://127.0.0.1:{port}"),
            token,
            cacert: None,
            database: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            log: Arc::default(),
            log_filter: None,
        };
        server.restart();
        server
    }

    /// A server on the PostgreSQL database at `url`, which `init` creates (any free port).
    pub fn start_on_database(url: &str, extra_args: &[&str]) -> NbdeServer {
        let kek_dir = tempdir();
        let kek = kek_dir.path().join("kek");
        let out = run_ok(
            &bin("nbde-server"),
            &[
                "init",
                "--database",
                url,
                "--kek-file",
                kek.to_str().unwrap(),
            ],
            b"",
        );
        let token = String::from_utf8(out)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_owned();
        NbdeServer::attach(url, token, &kek, extra_args)
    }

    /// Another server process on this one's database (a replica), on any free port.
    pub fn replica(&self, extra_args: &[&str]) -> NbdeServer {
        let url = self
            .database
            .as_deref()
            .expect("a replica shares a database: start_on_database");
        NbdeServer::attach(url, self.token.clone(), &self.kek, extra_args)
    }

    /// A server process on an initialised database whose owner token is `token` (after a
    /// `migrate`, say) and whose keys `kek` opens (copied: each replica has its own copy,
    /// as on machines of their own), on any free port.
    pub fn attach(url: &str, token: String, kek: &Path, extra_args: &[&str]) -> NbdeServer {
        let kek_dir = tempdir();
        let own = kek_dir.path().join("kek");
        std::fs::copy(kek, &own).unwrap();
        let mut server = NbdeServer {
            data: tempdir(),
            kek: own,
            _kek_dir: kek_dir,
            url: "http://127.0.0.1:0".into(),
            token,
            cacert: None,
            database: Some(url.to_owned()),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            log: Arc::default(),
            log_filter: None,
        };
        server.restart();
        server
    }

    /// Stops (SIGTERM, as a service manager would) and starts again on the same port,
    /// so the URLs in existing bindings still point at it.
    pub fn restart(&mut self) {
        self.stop();
        let listen = match self.url.rsplit_once(':') {
            Some((_, port)) => format!("127.0.0.1:{port}"),
            None => "127.0.0.1:0".into(),
        };
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            listen,
            "--kek-file".into(),
            self.kek.to_str().unwrap().into(),
        ];
        match &self.database {
            Some(url) => args.extend(["--database".into(), url.clone()]),
            None => args.extend(["--data".into(), self.data.path().to_str().unwrap().into()]),
        }
        args.extend(self.extra_args.iter().cloned());
        let mut command = Command::new(bin("nbde-server"));
        if let Some(filter) = &self.log_filter {
            command.env("NBDE_LOG", filter);
        }
        let mut child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (found, port) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut sent = false;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if !sent && let Some(url) = line.strip_prefix("nbde-server: listening on ") {
                    let _ = found.send(url.to_owned());
                    sent = true;
                }
                log.lock().unwrap().push(line);
            }
        });
        self.url = port
            .recv_timeout(Duration::from_secs(30))
            .expect("nbde-server did not start listening");
        self.child = Some(child);
    }

    /// Restarts with `NBDE_LOG` set to `filter` (debug lines of a module, say).
    pub fn restart_logging(&mut self, filter: &str) {
        self.log_filter = Some(filter.to_owned());
        self.restart();
    }

    /// The lines of its log so far that contain `text`.
    pub fn log_lines(&self, text: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(text)).cloned().collect()
    }

    pub fn stop(&mut self) {
        self.signal("-TERM");
    }

    /// As a crash would: no shutdown, connections cut mid-request.
    pub fn kill9(&mut self) {
        self.signal("-KILL");
    }

    fn signal(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            // Ends only the process this harness started, by its PID.
            let _ = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// `host:port`, for raw requests.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// Runs an admin verb through the CLI against this server.
    pub fn admin(&self, args: &[&str]) -> Output {
        let mut full = vec!["--server", &self.url];
        full.extend_from_slice(args);
        let mut command = Command::new(bin("nbde-server"));
        command.args(&full).env("NBDE_TOKEN", &self.token);
        if let Some(ca) = &self.cacert {
            command.env("NBDE_CACERT", ca);
        }
        command.output().unwrap()
    }

    /// Runs an admin verb that must succeed; returns stdout.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(
            out.status.success(),
            "nbde-server {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Adds `org` (if needed) and `device`; returns (unlock URL, thp).
    pub fn add_device(&self, org: &str, device: &str, curve: Option<&str>) -> (String, String) {
        let _ = self.admin(&["org", "add", org]);
        let mut args = vec!["device", "add", "--org", org, device, "--json"];
        if let Some(curve) = curve {
            args.extend(["--curve", curve]);
        }
        let v: serde_json::Value = serde_json::from_str(&self.admin_ok(&args)).unwrap();
        (
            v["url"].as_str().unwrap().to_owned(),
            v["thp"].as_str().unwrap().to_owned(),
        )
    }

    /// The decision history as JSON rows, newest first (all of it: tests stay well under
    /// the limit).
    /// A raw `POST /rec` for `org/device`: its path (with the advertised kid) and a body
    /// holding a fresh client key on the device's curve.
    pub fn rec_request(&self, org: &str, device: &str) -> (String, Vec<u8>) {
        let list: serde_json::Value =
            serde_json::from_str(&self.admin_ok(&["device", "list", "--org", org, "--json"]))
                .unwrap();
        let d = list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == device)
            .unwrap()
            .clone();
        let curve = nbde_proto::Curve::from_name(d["curve"].as_str().unwrap()).unwrap();
        let mut body = nbde_proto::Jwk::from_point(&curve.random_scalar().unwrap().public_point());
        body.set("alg", "ECMR".into());
        (
            format!("/o/{org}/d/{device}/rec/{}", d["kid"].as_str().unwrap()),
            body.to_value().to_string().into_bytes(),
        )
    }

    pub fn history(&self, device: Option<&str>) -> Vec<serde_json::Value> {
        let mut args = vec!["history", "--json", "--limit", "100000"];
        if let Some(d) = device {
            args.extend(["--device", d]);
        }
        let v: serde_json::Value = serde_json::from_str(&self.admin_ok(&args)).unwrap();
        v["history"].as_array().unwrap().clone()
    }
}

impl Drop for NbdeServer {
    fn drop(&mut self) {
        self.stop();
    }
}
