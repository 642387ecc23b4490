//! Harness for peerbot's end-to-end tests: real `peerbot` processes on
//! loopback, real git repositories in temporary directories.
//!
//! Every process is killed when its handle drops; every wait is for a
//! condition, with a generous bound, never a bare sleep.

pub mod browser;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// Polls `f` until it returns `Some`, or fails after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// A git repository in a temporary directory, committed to by "Alice".
pub struct GitRepo {
    dir: tempfile::TempDir,
}

impl GitRepo {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("peerbot-repo-").tempdir()?;
        let r = GitRepo { dir };
        r.git(&["init", "-q", "-b", "main"])?;
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn git(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args(["-c", "user.name=Alice Example", "-c", "user.email=alice@example.org", "-c", "commit.gpgsign=false"])
            .args(args)
            .output()
            .context("running git")?;
        if !out.status.success() {
            bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Writes the files and commits them; returns the new commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> anyhow::Result<String> {
        self.commit_as("Alice Example <alice@example.org>", files, &[], message)
    }

    /// Writes and removes files and commits as `author` ("Name <email>").
    pub fn commit_as(
        &self,
        author: &str,
        files: &[(&str, &str)],
        remove: &[&str],
        message: &str,
    ) -> anyhow::Result<String> {
        for name in remove {
            fs::remove_file(self.path().join(name))?;
        }
        for (name, content) in files {
            let p = self.path().join(name);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(p, content)?;
        }
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "--allow-empty", "--author", author, "-m", message])?;
        self.git(&["rev-parse", "HEAD"])
    }
}

/// One `peerbot node` process.
pub struct Node {
    pub name: String,
    bin: PathBuf,
    pub data_dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    info: Option<Value>,
}

impl Node {
    /// Starts a node with fast timers, on loopback, ports chosen by the OS.
    pub fn start(bin: &Path, name: &str, data_dir: &Path, extra: &[String]) -> anyhow::Result<Node> {
        let mut args: Vec<String> = [
            "node",
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--heartbeat-ms",
            "300",
            "--claim-stagger-ms",
            "600",
            "--sync-secs",
            "2",
            "--poll-secs",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--data-dir".into());
        args.push(data_dir.to_string_lossy().into_owned());
        args.extend(extra.iter().cloned());
        let mut n = Node {
            name: name.into(),
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            args,
            child: None,
            info: None,
        };
        n.spawn()?;
        Ok(n)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        fs::create_dir_all(&self.data_dir)?;
        let _ = fs::remove_file(self.data_dir.join("node.json"));
        let log = fs::OpenOptions::new().create(true).append(true).open(self.data_dir.join("node.log"))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("PEERBOT_LOG", "info,peerbot=debug,libp2p=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let path = self.data_dir.join("node.json");
        let info = wait_for(&format!("{}'s node.json", self.name), Duration::from_secs(60), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Some(Err(anyhow::anyhow!("{} exited with {status}: {}", self.name, self.log_tail())));
                }
            }
            let v: Value = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
            let ready = v["listen"].as_array().is_some_and(|a| !a.is_empty()) && v["http"].is_string();
            ready.then_some(Ok(v))
        })??;
        self.info = Some(info);
        Ok(())
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Stops the process with SIGTERM, as an operator would, and waits for
    /// it to exit (killed after 30 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill has no memory preconditions; the pid is our child's.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same data dir, after `stop` or `kill`.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn peer_id(&self) -> String {
        self.info.as_ref().map(|v| v["peer_id"].as_str().unwrap_or("").to_string()).unwrap_or_default()
    }

    pub fn multiaddr(&self) -> String {
        self.info.as_ref().map(|v| v["listen"][0].as_str().unwrap_or("").to_string()).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.info.as_ref().map(|v| v["http"].as_str().unwrap_or("")).unwrap_or(""))
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.url(), path);
        let resp = ureq::get(&url).timeout(Duration::from_secs(90)).call().with_context(|| format!("GET {url}"))?;
        Ok(resp.into_json()?)
    }

    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{}", self.url(), path);
        let resp = ureq::get(&url).timeout(Duration::from_secs(90)).call().with_context(|| format!("GET {url}"))?;
        Ok(resp.into_string()?)
    }

    /// A GET's status code, JSON body and `X-Next-Before` header.
    pub fn get_page(&self, path: &str) -> (u16, Value, Option<String>) {
        let url = format!("{}{}", self.url(), path);
        let r = ureq::get(&url).timeout(Duration::from_secs(90)).call();
        let resp = match r {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
            Err(e) => return (0, Value::String(e.to_string()), None),
        };
        let next = resp.header("X-Next-Before").map(str::to_string);
        (resp.status(), resp.into_json().unwrap_or(Value::Null), next)
    }

    /// Status code and JSON body, for requests expected to fail.
    /// The token the node made for HTTP writes.
    pub fn api_token(&self) -> String {
        fs::read_to_string(self.data_dir.join("api.token")).unwrap_or_default().trim().to_string()
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let url = format!("{}{}", self.url(), path);
        let req = ureq::request(method, &url)
            .timeout(Duration::from_secs(90))
            .set("content-type", "application/json")
            .set("authorization", &format!("Bearer {}", self.api_token()));
        let r = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        match r {
            Ok(resp) => (resp.status(), resp.into_json().unwrap_or(Value::Null)),
            Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap_or(Value::Null)),
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    /// Runs the CLI against this node and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("PEERBOT_NODE", self.url())
            .env("PEERBOT_API_TOKEN", self.api_token())
            .output()?;
        if !out.status.success() {
            bail!("peerbot {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The newest result of `builder` at `commit` (as `GET
    /// /api/v1/builds/{id}` shows it), once there is one; panics with the
    /// node's log after two minutes.
    pub fn build_of(&self, commit: &str, builder: &str) -> Value {
        let found =
            wait_for(&format!("a {builder} result for {commit} on {}", self.name), Duration::from_secs(120), || {
                let list = self.get(&format!("/api/v1/builds?commit={commit}&builder={builder}")).ok()?;
                let id = list.as_array()?.first()?["id"].as_str()?.to_string();
                self.get(&format!("/api/v1/builds/{id}")).ok()
            });
        found.unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()))
    }

    pub fn log_tail(&self) -> String {
        let s = fs::read_to_string(self.data_dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster key in a directory, and the flags that admit a node to it.
pub struct Keeper {
    bin: PathBuf,
    dir: PathBuf,
    pub cluster: String,
}

fn run(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin).args(args).output()?;
    if !out.status.success() {
        bail!("peerbot {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Keeper {
    /// `peerbot cluster init` into `dir`.
    pub fn new(bin: &Path, dir: &Path) -> anyhow::Result<Keeper> {
        fs::create_dir_all(dir)?;
        let key = dir.join("cluster.key");
        let cluster = run(bin, &["cluster", "init", "--out", &key.to_string_lossy()])?;
        Ok(Keeper { bin: bin.to_path_buf(), dir: dir.to_path_buf(), cluster })
    }

    fn key(&self) -> String {
        self.dir.join("cluster.key").to_string_lossy().into_owned()
    }

    /// Admits the node of `data_dir` (making its key if need be) with
    /// `labels` granted; the flags to start it with.
    pub fn admit(&self, data_dir: &Path, labels: &[&str]) -> anyhow::Result<Vec<String>> {
        let peer = run(&self.bin, &["id", "--data-dir", &data_dir.to_string_lossy()])?;
        let key = self.key();
        let mut args = vec!["cluster", "admit", "--key", &key, &peer];
        for l in labels {
            args.extend(["--label", l]);
        }
        let cert = run(&self.bin, &args)?;
        let file = self.dir.join(format!("{peer}.admission"));
        fs::write(&file, cert)?;
        let mut flags = vec!["--cluster".to_string(), self.cluster.clone(), "--admission".into()];
        flags.push(file.to_string_lossy().into_owned());
        for l in labels {
            flags.extend(["--label".to_string(), l.to_string()]);
        }
        Ok(flags)
    }

    /// `peerbot cluster revoke` of a node; the revocation's text.
    pub fn revoke(&self, peer: &str) -> anyhow::Result<String> {
        run(&self.bin, &["cluster", "revoke", "--key", &self.key(), peer])
    }
}
