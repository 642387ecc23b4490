//! Where and how build steps run, so that a repository's recipe cannot reach
//! the node's secrets: a work root outside the data dir, a clean
//! environment, and, with bubblewrap, a mount namespace in which the data
//! dir and the config file are empty and only the repository's mirror is
//! readable beside the build's own directories.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use tracing::{info, warn};

/// `--sandbox`: how steps are confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    /// bubblewrap when it is installed and works here, none otherwise.
    Auto,
    /// bubblewrap, or the node refuses to start.
    Bwrap,
    /// Plain child processes: the clean environment and the separate work
    /// root only; a step can still read what the node's user can.
    None,
}

/// PATH for steps when the node has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub struct StepJail {
    work_root: PathBuf,
    /// Emptied inside the sandbox.
    hidden_dirs: Vec<PathBuf>,
    hidden_files: Vec<PathBuf>,
    bwrap: Option<PathBuf>,
    path_var: String,
}

/// The work root a data dir gets by default: beside it, never inside.
pub fn default_work_root(data_dir: &Path) -> PathBuf {
    let abs = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let name = abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "peerbot".into());
    abs.with_file_name(format!("{name}-work"))
}

impl StepJail {
    /// Makes the work root, checks it is apart from the data dir, and finds
    /// bubblewrap as `mode` asks.
    pub fn prepare(
        mode: SandboxMode,
        work_root: &Path,
        data_dir: &Path,
        secret_files: &[&Path],
    ) -> anyhow::Result<StepJail> {
        std::fs::create_dir_all(work_root)
            .with_context(|| format!("creating the work root {}", work_root.display()))?;
        let work_root = work_root.canonicalize()?;
        let data = data_dir.canonicalize().with_context(|| format!("data dir {}", data_dir.display()))?;
        if work_root.starts_with(&data) || data.starts_with(&work_root) {
            bail!(
                "--work-dir {} and --data-dir {} must not contain one another: steps must not reach the node's key and token",
                work_root.display(),
                data.display()
            );
        }
        let bwrap = match mode {
            SandboxMode::None => None,
            SandboxMode::Bwrap => Some(working_bwrap().context("--sandbox bwrap")?),
            SandboxMode::Auto => match working_bwrap() {
                Ok(b) => Some(b),
                Err(e) => {
                    warn!("build steps run without a sandbox ({e:#}); install bubblewrap, or pass --sandbox none to say so");
                    None
                }
            },
        };
        let hidden_files = secret_files.iter().filter_map(|f| f.canonicalize().ok()).collect();
        let path_var = std::env::var("PATH").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| DEFAULT_PATH.into());
        info!(work_root = %work_root.display(), sandbox = bwrap.is_some(), "build steps");
        Ok(StepJail { work_root, hidden_dirs: vec![data], hidden_files, bwrap, path_var })
    }

    pub fn work_root(&self) -> &Path {
        &self.work_root
    }

    pub fn sandboxed(&self) -> bool {
        self.bwrap.is_some()
    }

    /// The command that runs `script` with `sh -c` in `ws`, HOME at `home`,
    /// with only `envs` beside PATH, HOME, LANG and TERM; `readable` stays
    /// visible (read-only) inside a hidden directory (the repository mirror
    /// that the checkout borrows objects from).
    /// `sh -c script` in `cwd` (the checkout `ws` or a directory in it).
    pub fn command(
        &self,
        ws: &Path,
        cwd: &Path,
        home: &Path,
        readable: &[&Path],
        script: &str,
        envs: &[(&str, String)],
    ) -> Command {
        let mut cmd = match &self.bwrap {
            None => Command::new("sh"),
            Some(bwrap) => {
                let mut c = Command::new(bwrap);
                c.args(["--die-with-parent", "--unshare-pid", "--ro-bind", "/", "/", "--dev", "/dev"]);
                c.args(["--proc", "/proc", "--tmpfs", "/tmp"]);
                for d in &self.hidden_dirs {
                    c.arg("--tmpfs").arg(d);
                }
                for f in &self.hidden_files {
                    c.arg("--ro-bind").arg("/dev/null").arg(f);
                }
                for r in readable {
                    // bwrap runs in the build's directory: a path relative
                    // to the node's (the default `.peerbot`) must not be.
                    let r = std::path::absolute(r).unwrap_or_else(|_| r.to_path_buf());
                    c.arg("--ro-bind").arg(&r).arg(&r);
                }
                for w in [ws, home] {
                    c.arg("--bind").arg(w).arg(w);
                }
                c.arg("--chdir").arg(cwd).args(["--", "sh"]);
                c
            }
        };
        cmd.arg("-c").arg(script).current_dir(cwd).env_clear();
        cmd.env("PATH", &self.path_var).env("HOME", home).env("LANG", "C.UTF-8").env("TERM", "dumb");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd
    }
}

/// bubblewrap, if it is on PATH and can make a namespace here.
fn working_bwrap() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let bwrap = std::env::split_paths(&path)
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())
        .context("bwrap is not installed (Debian: apt-get install bubblewrap)")?;
    let out = Command::new(&bwrap)
        .args(["--die-with-parent", "--unshare-pid", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"])
        .args(["--", "true"])
        .output()
        .with_context(|| format!("running {}", bwrap.display()))?;
    if !out.status.success() {
        bail!("{} cannot make a sandbox here: {}", bwrap.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(bwrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_root_must_be_apart_from_the_data_dir() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let inside = StepJail::prepare(SandboxMode::None, &data.join("work"), &data, &[]);
        assert!(inside.err().unwrap().to_string().contains("must not contain one another"));
        let around = StepJail::prepare(SandboxMode::None, root.path(), &data, &[]);
        assert!(around.is_err());
        assert_eq!(default_work_root(&data), root.path().canonicalize().unwrap().join("data-work"));
        assert!(StepJail::prepare(SandboxMode::None, &default_work_root(&data), &data, &[]).is_ok());
    }

    /// The default data dir is relative (`.peerbot`), and so is the mirror
    /// a checkout borrows from; the step runs elsewhere.
    #[test]
    fn a_relative_readable_path_is_found_from_the_build_dir() {
        if working_bwrap().is_err() {
            eprintln!("skipped: bubblewrap cannot make a sandbox here");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let mirror = data.join("repos/m.git");
        std::fs::create_dir_all(&mirror).unwrap();
        std::fs::write(mirror.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        let cwd = std::env::current_dir().unwrap();
        let up: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
        let relative = up.join(mirror.strip_prefix("/").unwrap());
        assert!(relative.is_relative());
        let jail = StepJail::prepare(SandboxMode::Bwrap, &root.path().join("w"), &data, &[]).unwrap();
        let ws = jail.work_root().join("b");
        std::fs::create_dir_all(&ws).unwrap();
        let script = format!("cat {}/HEAD", mirror.display());
        let out = jail.command(&ws, &ws, &ws, &[&relative], &script, &[]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ref: refs/heads/main\n");
    }

    #[test]
    fn a_step_sees_a_clean_environment() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let jail = StepJail::prepare(SandboxMode::None, &root.path().join("w"), &data, &[]).unwrap();
        let out = jail
            .command(root.path(), root.path(), root.path(), &[], "env", &[("PEERBOT_STEP", "s".into())])
            .output()
            .unwrap();
        let env = String::from_utf8_lossy(&out.stdout);
        let mut names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
        names.sort();
        names.retain(|n| *n != "PWD" && *n != "SHLVL" && *n != "_");
        assert_eq!(names, ["HOME", "LANG", "PATH", "PEERBOT_STEP", "TERM"], "{env}");
    }
}
