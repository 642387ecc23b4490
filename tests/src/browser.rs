//! Headless Chromium for page tests, driven over WebDriver (chromedriver).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

pub use fantoccini;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver on a port the OS chose, killed with its browsers on drop.
pub struct Driver {
    child: Child,
    pub url: String,
}

impl Driver {
    pub fn start() -> anyhow::Result<Driver> {
        for p in [CHROMEDRIVER, CHROMIUM] {
            if !Path::new(p).exists() {
                bail!("{p} is missing: install Debian's chromium and chromium-driver (.ci/run does)");
            }
        }
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group, so that the browsers it starts go with it.
            .process_group(0)
            .spawn()
            .context("starting chromedriver")?;
        let out = child.stdout.take().context("chromedriver's stdout")?;
        let mut port = None;
        for line in BufReader::new(out).lines() {
            let line = line?;
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                port = rest.trim_end_matches('.').trim().parse::<u16>().ok();
                break;
            }
        }
        let Some(port) = port else {
            let _ = child.kill();
            bail!("chromedriver did not say which port it listens on");
        };
        Ok(Driver { child, url: format!("http://127.0.0.1:{port}") })
    }

    /// A new headless browser session.
    pub async fn browser(&self) -> anyhow::Result<fantoccini::Client> {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                // Without the networking flags Chromium keeps trying to reach
                // its vendor's hosts, which a closed network refuses.
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            }),
        );
        let conn = hyper_util::client::legacy::connect::HttpConnector::new();
        let c = fantoccini::ClientBuilder::new(conn).capabilities(caps).connect(&self.url).await?;
        Ok(c)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
