//! A recipe's step tries to read the node's key, its API token, its config
//! file and its environment. With bubblewrap (CI installs it) none of them
//! reaches the step's log, and the step still has its checkout, a HOME and
//! the repository's history.

use std::path::Path;
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Node};

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(120);
const CONFIG_TOKEN: &str = "config-token-3f9a1c7e5b2d4f60";
const FILE_TOKEN: &str = "file-token-8c1e2a9d7f3b5e04";

fn recipe(data: &Path, config: &Path) -> String {
    let (d, c) = (data.display(), config.display());
    format!(
        r#"
[[builder]]
name = "snoop"
requires = ["os=linux"]
[[builder.step]]
name = "snoop"
run = '''
if cat {d}/node.key > /dev/null 2>&1; then echo NODE-KEY-READ; else echo NODE-KEY-HIDDEN; fi
cat {d}/api.token 2>&1
cat {c} 2>&1
ls -a {d} 2>&1
if cat ../../node.key > /dev/null 2>&1; then echo RELATIVE-KEY-READ; fi
env | sort
git log -1 --format=subject:%s
echo home-is-writable > "$HOME/probe" && cat "$HOME/probe"
true
'''
"#
    )
}

#[test]
fn a_step_cannot_read_the_nodes_key_token_config_or_environment() {
    let root = tempfile::Builder::new().prefix("peerbot-secrets-").tempdir().unwrap();
    let data = root.path().join("a");
    std::fs::create_dir_all(&data).unwrap();
    // A token file the node does not use (the config gives one), kept in the
    // data dir as a token file would be.
    std::fs::write(data.join("api.token"), FILE_TOKEN).unwrap();
    let config = root.path().join("node.toml");
    std::fs::write(&config, format!("api_token = \"{CONFIG_TOKEN}\"\nsandbox = \"bwrap\"\n")).unwrap();
    let repo = GitRepo::new().unwrap();
    repo.commit(&[("README", "x\n")], "start").unwrap();
    let watch = format!("{}#main", repo.path().display());
    let args = ["--config".to_string(), config.display().to_string(), "--watch".into(), watch];
    let n = Node::start(Path::new(BIN), "A", &data, &args).unwrap();
    let node = n.get("/api/v1/node").unwrap();
    assert_eq!(node["builds"]["sandbox"], "bwrap", "{node}");
    let work_root = node["builds"]["work_root"].as_str().unwrap().to_string();
    assert!(!Path::new(&work_root).starts_with(data.canonicalize().unwrap()), "{work_root}");

    let commit = repo.commit(&[(".peerbot.toml", &recipe(&data, &config))], "secrets").unwrap();
    let build = wait_for("the build's result", LONG, || {
        let v = n.get(&format!("/api/v1/builds?commit={commit}")).ok()?;
        v.as_array()?.first().cloned()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
    assert_eq!(build["status"], "success", "{build}");
    let log = n.get_text(&format!("/api/v1/builds/{}/steps/snoop/log", build["id"].as_str().unwrap())).unwrap();

    assert!(log.contains("NODE-KEY-HIDDEN") && !log.contains("NODE-KEY-READ"), "{log}");
    assert!(!log.contains("RELATIVE-KEY-READ"), "{log}");
    assert!(!log.contains(CONFIG_TOKEN), "the API token reached the step:\n{log}");
    assert!(!log.contains(FILE_TOKEN), "the token file reached the step:\n{log}");
    let env: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.split('=').next().is_some_and(|k| k.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !k.is_empty())
        })
        .collect();
    for name in ["PEERBOT_API_TOKEN", "PEERBOT_CONFIG", "PEERBOT_DATA_DIR", "PEERBOT_SANDBOX", "PEERBOT_LOG"] {
        assert!(!env.iter().any(|l| l.starts_with(&format!("{name}="))), "{name} reached the step:\n{log}");
    }
    assert!(env.iter().any(|l| *l == format!("PEERBOT_COMMIT={commit}")), "{log}");
    assert!(env.iter().any(|l| l.starts_with("HOME=") && l.contains(&work_root)), "{log}");
    // What the step needs still works: the history (objects borrowed from
    // the node's mirror) and a writable HOME.
    assert!(log.contains("subject:secrets"), "{log}");
    assert!(log.contains("home-is-writable"), "{log}");
}
