//! Notifications with real servers on loopback: a real SMTP server
//! (Python's aiosmtpd) and an HTTP receiver standing in for a webhook, a
//! Slack incoming webhook and a Gitea commit-status API. Three nodes all
//! have every notifier: a breaking commit sends exactly one mail and one
//! message of each kind, naming the author; the fix, exactly one "fixed";
//! the node sending a notice killed while it sends → still exactly one,
//! sent by another node.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Keeper, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(120);

const RECIPE: &str = r#"
[[builder]]
name = "check"
collapse = true
tree_stable_secs = 2
[[builder.step]]
name = "check"
run = "if test -e broken; then echo 'error: the build is broken' >&2; exit 1; fi; echo fine"
"#;

const CAROL: &str = "Carol Example <carol@example.org>";
const MALLORY: &str = "Mallory Example <mallory@example.org>";
const ALICE: &str = "Alice Example <alice@example.org>";
const BOB: &str = "Bob Example <bob@example.org>";

/// aiosmtpd on a port the OS chose; each message is written as JSON
/// (recipients, subject, decoded text) into a directory.
const SMTP_SERVER: &str = r#"
import asyncio, email, json, os, sys
from aiosmtpd.smtp import SMTP
out = sys.argv[1]
class Keep:
    n = 0
    async def handle_DATA(self, server, session, envelope):
        # While the hold file exists, the message waits; a client gone by
        # then (its node was killed) delivered nothing.
        while os.path.exists(os.path.join(out, "hold")):
            await asyncio.sleep(0.02)
        if server.transport is None or server.transport.is_closing():
            return "451 client gone"
        Keep.n += 1
        msg = email.message_from_bytes(envelope.original_content or envelope.content)
        body = msg.get_payload(decode=True).decode("utf-8", "replace")
        path = os.path.join(out, "%04d.json" % Keep.n)
        with open(path + ".tmp", "w") as f:
            json.dump({"rcpt": envelope.rcpt_tos, "subject": str(msg["Subject"]), "body": body}, f)
        os.rename(path + ".tmp", path)
        return "250 OK"
async def main():
    srv = await asyncio.get_running_loop().create_server(lambda: SMTP(Keep()), "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()
asyncio.run(main())
"#;

struct Smtp {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Smtp {
    fn start(dir: &Path) -> Smtp {
        std::fs::create_dir_all(dir).unwrap();
        let script = dir.join("smtpd.py");
        std::fs::write(&script, SMTP_SERVER).unwrap();
        let python = ["/usr/bin/python3", "python3"]
            .into_iter()
            .find(|py| Command::new(py).args(["-c", "import aiosmtpd"]).output().is_ok_and(|o| o.status.success()))
            .expect("aiosmtpd is missing: apt-get install -y python3-aiosmtpd (CI's .ci/run does)");
        let mut child =
            Command::new(python).arg(&script).arg(dir).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the SMTP server printed {line:?}"));
        Smtp { child, port, dir: dir.to_path_buf() }
    }

    fn hold(&self, on: bool) {
        let f = self.dir.join("hold");
        if on {
            std::fs::write(f, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }

    fn mails(&self) -> Vec<Value> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names.iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request the receiver took: path, authorization, JSON body.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    auth: String,
    body: Value,
}

/// An HTTP receiver on loopback. While `hold` is set, a request is kept
/// unanswered until it clears, then closed unanswered: not taken (a live
/// sender tries again).
#[derive(Clone)]
struct Receiver {
    port: u16,
    taken: Arc<Mutex<Vec<Got>>>,
    held: Arc<Mutex<Vec<Got>>>,
    hold: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let r = Receiver {
            port: listener.local_addr().unwrap().port(),
            taken: Default::default(),
            held: Default::default(),
            hold: Default::default(),
        };
        let rc = r.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let rc = rc.clone();
                std::thread::spawn(move || rc.serve(conn));
            }
        });
        r
    }

    fn serve(&self, conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut first = String::new();
        if reader.read_line(&mut first).is_err() {
            return;
        }
        let path = first.split_whitespace().nth(1).unwrap_or_default().to_string();
        let (mut length, mut auth) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or_default();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "authorization" => auth = v.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let got = Got { path: path.clone(), auth, body: serde_json::from_slice(&body).unwrap_or(Value::Null) };
        if self.hold.load(Ordering::SeqCst) {
            self.held.lock().unwrap().push(got);
            while self.hold.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return; // closed unanswered: not delivered
        }
        self.taken.lock().unwrap().push(got);
        let mut conn = conn;
        let _ = conn.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
    }

    fn taken(&self, path_prefix: &str) -> Vec<Got> {
        self.taken.lock().unwrap().iter().filter(|g| g.path.starts_with(path_prefix)).cloned().collect()
    }
}

fn config(dir: &Path, smtp: u16, http: u16) -> PathBuf {
    let token = dir.join("forge.token");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&token, "forge-token-123\n").unwrap();
    let text = format!(
        r#"
[[notify]]
kind = "mail"
smtp = "127.0.0.1:{smtp}"
tls = "none"
from = "peerbot <peerbot@example.org>"
to = ["dev@example.org"]
to_blamelist = true

[[notify]]
kind = "webhook"
url = "http://127.0.0.1:{http}/hook"

[[notify]]
kind = "slack"
url = "http://127.0.0.1:{http}/slack"

[[notify]]
kind = "commit-status"
api = "http://127.0.0.1:{http}/api/v1"
token_file = "{}"
repo = "owner/project"
"#,
        token.display()
    );
    let path = dir.join("notify.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every node holds the result's notices of `n` notifiers.
fn notices_everywhere(nodes: &[&Node], build: &str, n: usize) -> Vec<Value> {
    let mut last = vec![];
    for node in nodes {
        last = wait_for(&format!("{n} notices of {build} on {}", node.name), LONG, || {
            let v = node.get(&format!("/api/v1/builds/{build}")).ok()?;
            let list = v["notices"].as_array()?.clone();
            (list.len() >= n).then_some(list)
        })
        .unwrap_or_else(|e| {
            let now = node.get(&format!("/api/v1/builds/{build}")).map(|v| v["notices"].clone());
            let jobs = node.get("/api/v1/jobs");
            let log = std::fs::read_to_string(node.data_dir.join("node.log")).unwrap_or_default();
            let told: Vec<&str> =
                log.lines().filter(|l| l.contains("notice") || l.contains("claim") || l.contains("lease")).collect();
            panic!("{e}\nnotices: {now:?}\njobs: {jobs:?}\n{}", told[told.len().saturating_sub(60)..].join("\n"))
        });
    }
    last
}

/// What the nodes' logs say of claims and notices, for a failure's message.
fn story(nodes: &[Node]) -> String {
    let mut out = String::new();
    for n in nodes {
        let log = std::fs::read_to_string(n.data_dir.join("node.log")).unwrap_or_default();
        let words = ["notice", "claim", "lease", "conflict", "connected", "released"];
        for l in log.lines().filter(|l| words.iter().any(|w| l.contains(w))) {
            out += &format!("{}: {l}\n", n.name);
        }
    }
    out
}

fn hooks_for(r: &Receiver, build: &str) -> Vec<Got> {
    r.taken("/hook").into_iter().filter(|g| g.body["build"] == build).collect()
}

fn mails_for(s: &Smtp, commit: &str) -> Vec<Value> {
    s.mails().into_iter().filter(|m| m["body"].as_str().unwrap_or_default().contains(commit)).collect()
}

#[test]
fn three_nodes_notify_each_transition_exactly_once_even_when_the_sender_dies() {
    let root = tempfile::Builder::new().prefix("peerbot-notify-").tempdir().unwrap();
    let smtp = Smtp::start(&root.path().join("mail"));
    let http = Receiver::start();
    let repo = GitRepo::new().unwrap();
    let green = repo.commit_as(CAROL, &[(".peerbot.toml", RECIPE)], &[], "recipe").unwrap();
    let keeper = Keeper::new(Path::new(BIN), &root.path().join("keeper")).unwrap();
    let dir = |d: &str| root.path().join(d);
    let common = |d: &str| {
        let cfg = config(&dir(&format!("{d}-cfg")), smtp.port, http.port);
        let mut v = vec!["--config".to_string(), cfg.display().to_string(), "--sandbox".into(), "none".into()];
        // Messages name the sending node by its --name.
        v.extend(["--name".into(), d.to_uppercase()]);
        v.extend(["--lease-secs".into(), "3".into()]);
        v.extend(keeper.admit(&dir(d), &[]).unwrap());
        v
    };
    let mut a_args = common("a");
    a_args.extend(["--watch".to_string(), format!("{}#main", repo.path().display())]);
    let a = Node::start(Path::new(BIN), "A", &dir("a"), &a_args).unwrap();
    let allow = repo.path().canonicalize().unwrap().display().to_string();
    let mut nodes = vec![a];
    for name in ["B", "C"] {
        let d = name.to_lowercase();
        let mut args = common(&d);
        // Every node dials every earlier one: whichever dies, the others
        // still hear each other.
        for n in &nodes {
            args.extend(["--bootstrap".into(), n.multiaddr()]);
        }
        args.extend(["--allow-repo".into(), allow.clone()]);
        nodes.push(Node::start(Path::new(BIN), name, &dir(&d), &args).unwrap());
    }
    let all: Vec<&Node> = nodes.iter().collect();

    // Green: nothing to say but the commit status.
    let g = nodes[0].build_of(&green, "check");
    assert_eq!(g["status"], "success");
    let statuses = notices_everywhere(&all, g["id"].as_str().unwrap(), 1);
    assert_eq!(statuses[0]["notifier"], "commit-status");

    // Mallory breaks it: one mail (to the list and to Mallory), one of each message.
    let bad = repo.commit_as(MALLORY, &[("broken", "yes\n")], &[], "add a file").unwrap();
    let b = nodes[0].build_of(&bad, "check");
    assert_eq!(b["status"], "failure");
    let bid = b["id"].as_str().unwrap().to_string();
    let notices = notices_everywhere(&all, &bid, 4);
    let mut kinds: Vec<&str> = notices.iter().map(|n| n["notifier"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(kinds, ["commit-status", "mail", "slack", "webhook"], "{notices:?}");
    assert!(notices.iter().all(|n| n["delivered"] == true), "{notices:?}");
    assert!(notices.iter().filter(|n| n["notifier"] != "commit-status").all(|n| n["event"] == "failure"));
    let mails =
        wait_for("the breakage's mail", LONG, || Some(mails_for(&smtp, &bad)).filter(|m| !m.is_empty())).unwrap();
    assert_eq!(mails.len(), 1, "{mails:?}\n{}", story(&nodes));
    let rcpt: Vec<&str> = mails[0]["rcpt"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(rcpt.contains(&"dev@example.org") && rcpt.contains(&"mallory@example.org"), "{rcpt:?}");
    let body = mails[0]["body"].as_str().unwrap();
    assert!(body.contains("Mallory Example") && body.contains("Failed step: check"), "{body}");
    assert!(body.contains("error: the build is broken"), "the log's tail: {body}");
    assert!(body.contains(&format!("/builds/{bid}")), "a link to the build: {body}");
    assert!(mails[0]["subject"].as_str().unwrap().contains(&bad[..12]));
    let hooks = hooks_for(&http, &bid);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    let h = &hooks[0].body;
    assert_eq!(
        (h["event"].as_str(), h["commit"].as_str(), h["builder"].as_str()),
        (Some("failure"), Some(bad.as_str()), Some("check"))
    );
    assert_eq!(h["blamelist"], serde_json::json!([MALLORY]));
    assert!(h["log_tail"].as_str().unwrap().contains("the build is broken"));
    let slack: Vec<Got> = http
        .taken("/slack")
        .into_iter()
        .filter(|g| g.body["text"].as_str().unwrap_or_default().contains(&bad[..12]))
        .collect();
    assert_eq!(slack.len(), 1, "{slack:?}");
    assert!(slack[0].body["text"].as_str().unwrap().contains("Mallory"));
    let status: Vec<Got> = http.taken(&format!("/api/v1/repos/owner/project/statuses/{bad}"));
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0].auth, "token forge-token-123");
    assert_eq!(status[0].body["state"], "failure");
    assert_eq!(status[0].body["context"], "peerbot/check");

    // Alice fixes it: exactly one "fixed".
    let fix = repo.commit_as(ALICE, &[], &["broken"], "remove the file").unwrap();
    let f = nodes[0].build_of(&fix, "check");
    assert_eq!(f["status"], "success");
    let fid = f["id"].as_str().unwrap().to_string();
    let notices = notices_everywhere(&all, &fid, 4);
    assert!(notices.iter().filter(|n| n["notifier"] != "commit-status").all(|n| n["event"] == "fixed"), "{notices:?}");
    let hooks = hooks_for(&http, &fid);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0].body["event"], "fixed");
    assert_eq!(hooks[0].body["fixed_by"], serde_json::json!([ALICE]));
    let mails = mails_for(&smtp, &fix);
    assert_eq!(mails.len(), 1, "{mails:?}\n{}", story(&nodes));
    assert!(mails[0]["subject"].as_str().unwrap().contains("fixed"));

    // Mallory again; the webhook's sender dies while its request hangs.
    // Every server holds its requests meanwhile, so that no message of the
    // dying node is taken: else it could die after the server took one
    // and before its record went out, the one way to send twice.
    http.hold.store(true, Ordering::SeqCst);
    smtp.hold(true);
    let again = repo.commit_as(MALLORY, &[("broken", "again\n")], &[], "add it again").unwrap();
    let held = wait_for("the webhook's first try", LONG, || {
        let h = http.held.lock().unwrap().clone();
        h.into_iter().find(|g| g.path == "/hook" && g.body["commit"] == again.as_str())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", nodes[0].log_tail()));
    let sender = held.body["node"].as_str().unwrap().to_string();
    let victim = nodes.iter().position(|n| n.name == sender).unwrap_or_else(|| panic!("no node {sender}"));
    nodes[victim].kill();
    http.hold.store(false, Ordering::SeqCst);
    smtp.hold(false);
    let rid = held.body["build"].as_str().unwrap().to_string();
    let alive: Vec<&Node> = nodes.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, n)| n).collect();
    let notices = notices_everywhere(&alive, &rid, 4);
    let hook_notice = notices.iter().find(|n| n["notifier"] == "webhook").unwrap();
    assert_eq!(hook_notice["delivered"], true);
    assert_ne!(hook_notice["node_name"], sender.as_str(), "sent again by another node: {notices:?}");
    let hooks = hooks_for(&http, &rid);
    assert_eq!(hooks.len(), 1, "exactly one webhook delivered: {hooks:?}");
    assert_ne!(hooks[0].body["node"], sender.as_str());
    let mails =
        wait_for("the second breakage's mail", LONG, || Some(mails_for(&smtp, &again)).filter(|m| !m.is_empty()))
            .unwrap();
    assert_eq!(mails.len(), 1, "{mails:?}\n{}", story(&nodes));

    // Nothing more arrived for the earlier transitions meanwhile.
    assert_eq!(hooks_for(&http, &bid).len(), 1);
    assert_eq!(hooks_for(&http, &fid).len(), 1);
    assert_eq!(mails_for(&smtp, &bad).len(), 1);
    let per_commit: BTreeMap<String, usize> = http.taken("/api/v1/repos/").iter().fold(BTreeMap::new(), |mut m, g| {
        *m.entry(g.path.clone()).or_default() += 1;
        m
    });
    assert!(per_commit.values().all(|n| *n == 1), "one commit status per result: {per_commit:?}");

    // The dead node comes back (it sends nothing again), Alice fixes the
    // build, then three commits land at once and the middle one breaks it:
    // the collapsed build fails, and its notice waits for the bisection,
    // which names Mallory's commit; the mail goes to Mallory alone.
    nodes[victim].start_again().unwrap();
    let fix2 = repo.commit_as(ALICE, &[], &["broken"], "remove it again").unwrap();
    let f2 = nodes[victim].build_of(&fix2, "check");
    assert_eq!(f2["status"], "success");
    notices_everywhere(&[&nodes[victim]], f2["id"].as_str().unwrap(), 4);
    repo.commit_as(ALICE, &[("a", "1\n")], &[], "one").unwrap();
    let culprit = repo.commit_as(MALLORY, &[("broken", "3\n")], &[], "two").unwrap();
    let head = repo.commit_as(BOB, &[("b", "1\n")], &[], "three").unwrap();
    let h = nodes[victim].build_of(&head, "check");
    assert_eq!(h["status"], "failure");
    let hid = h["id"].as_str().unwrap().to_string();
    let all: Vec<&Node> = nodes.iter().collect();
    notices_everywhere(&all, &hid, 4);
    let hooks = hooks_for(&http, &hid);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0].body["first_failing"]["commit"], culprit.as_str(), "{:?}", hooks[0].body);
    assert_eq!(hooks[0].body["first_failing"]["author"], MALLORY);
    let mails = mails_for(&smtp, &head);
    assert_eq!(mails.len(), 1, "{mails:?}");
    let rcpt: Vec<&str> = mails[0]["rcpt"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert_eq!(rcpt, ["dev@example.org", "mallory@example.org"], "the culprit only, not the whole blamelist");
    assert!(mails[0]["body"]
        .as_str()
        .unwrap()
        .contains(&format!("First failing commit (found by bisection): {culprit}")));

    // Everything settled: exactly one notice per notifier that concerned
    // each result, on every node, the restarted one included.
    let gid = g["id"].as_str().unwrap().to_string();
    for n in &nodes {
        for (id, want) in [(&gid, 1), (&bid, 4), (&fid, 4), (&rid, 4), (&hid, 4)] {
            let v = n.get(&format!("/api/v1/builds/{id}")).unwrap();
            assert_eq!(v["notices"].as_array().unwrap().len(), want, "{} on {}: {}", id, n.name, v["notices"]);
        }
    }

    // The restarted node sent nothing it had sent or seen sent before.
    assert_eq!(hooks_for(&http, &rid).len(), 1);
    assert_eq!(hooks_for(&http, &bid).len(), 1);
    assert_eq!(mails_for(&smtp, &again).len(), 1);
    assert_eq!(mails_for(&smtp, &fix).len(), 1);
    assert_eq!(hooks_for(&http, &hid).len(), 1);
}
