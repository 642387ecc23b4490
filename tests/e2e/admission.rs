//! Cluster keys and admission certificates from the CLI, and a node that
//! checks its own before it starts: a certificate for another node, one
//! that has run out, one that does not grant a label the node is given, and
//! flags that come apart are each refused with a message that says so.

use std::path::Path;
use std::process::Command;

use peerbot_tests::Node;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");

fn peerbot(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn ok(args: &[&str]) -> String {
    let (ok, out, err) = peerbot(args);
    assert!(ok, "peerbot {args:?}: {err}");
    out
}

fn refused(n: anyhow::Result<Node>) -> String {
    match n {
        Ok(_) => panic!("the node started"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn nodes_start_only_with_a_certificate_that_admits_them() {
    let root = tempfile::Builder::new().prefix("peerbot-admission-").tempdir().unwrap();
    let p = |name: &str| root.path().join(name).display().to_string();
    let key = p("cluster.key");
    let cluster = ok(&["cluster", "init", "--out", &key]);
    assert!(cluster.starts_with("peerbot-cluster-v1:") && !cluster.contains('\n'), "{cluster}");
    let (again, _, err) = peerbot(&["cluster", "init", "--out", &key]);
    assert!(!again && err.contains("never overwritten"), "{err}");
    assert_eq!(ok(&["cluster", "id", "--key", &key]), cluster);

    let (a, b) = (p("a"), p("b"));
    let a_id = ok(&["id", "--data-dir", &a]);
    let b_id = ok(&["id", "--data-dir", &b]);
    let cert = ok(&["cluster", "admit", "--key", &key, &a_id, "--label", "gpu=yes", "--expires", "90d"]);
    std::fs::write(p("a.cert"), &cert).unwrap();
    let args = |cert: &str, labels: &[&str]| {
        let mut v = vec!["--cluster".to_string(), cluster.clone(), "--admission".into(), p(cert)];
        for l in labels {
            v.extend(["--label".to_string(), l.to_string()]);
        }
        v
    };

    // A is admitted, with the label its certificate grants.
    let node_a = Node::start(Path::new(BIN), "A", Path::new(&a), &args("a.cert", &["gpu=yes"])).unwrap();
    let info = node_a.get("/api/v1/node").unwrap();
    assert_eq!(info["cluster"]["id"], cluster.as_str(), "{info}");
    assert_eq!(info["cluster"]["keeper"], false);
    assert_eq!(info["cluster"]["admitted_labels"], serde_json::json!(["gpu=yes"]));
    drop(node_a);

    // B with A's certificate; A with a label not granted; an expired one.
    let e = refused(Node::start(Path::new(BIN), "B", Path::new(&b), &args("a.cert", &[])));
    assert!(e.contains(&format!("admits {a_id}, not this node ({b_id})")), "{e}");
    let e = refused(Node::start(Path::new(BIN), "A", Path::new(&a), &args("a.cert", &["arm=yes"])));
    assert!(e.contains("does not grant the label \"arm=yes\""), "{e}");
    std::fs::write(p("b.cert"), ok(&["cluster", "admit", "--key", &key, &b_id, "--expires", "1ms"])).unwrap();
    // A millisecond has passed before the node, a new process, reads it.
    let e = refused(Node::start(Path::new(BIN), "B", Path::new(&b), &args("b.cert", &[])));
    assert!(e.contains("expired"), "{e}");
    // A certificate of another cluster, a forged one, and flags apart.
    let other = p("other.key");
    ok(&["cluster", "init", "--out", &other]);
    std::fs::write(p("c.cert"), ok(&["cluster", "admit", "--key", &other, &b_id])).unwrap();
    let e = refused(Node::start(Path::new(BIN), "B", Path::new(&b), &args("c.cert", &[])));
    assert!(e.contains("is for cluster"), "{e}");
    std::fs::write(p("d.cert"), cert.replace("peerbot-admission-v1:a", "peerbot-admission-v1:b")).unwrap();
    let e = refused(Node::start(Path::new(BIN), "A", Path::new(&a), &args("d.cert", &[])));
    assert!(e.contains("not an admission certificate") || e.contains("does not verify"), "{e}");
    let e = refused(Node::start(Path::new(BIN), "B", Path::new(&b), &["--cluster".into(), cluster.clone()]));
    assert!(e.contains("--cluster needs --admission") && e.contains(&b_id), "{e}");

    // With no --cluster a node keeps a cluster of its own and admits others.
    let c = p("c");
    let node_c = Node::start(Path::new(BIN), "C", Path::new(&c), &[]).unwrap();
    let info = node_c.get("/api/v1/node").unwrap();
    assert_eq!(info["cluster"]["keeper"], true, "{info}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.path().join("c/cluster.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let own = ok(&["cluster", "id", "--data-dir", &c]);
    assert_eq!(info["cluster"]["id"], own.as_str());
    let cert = ok(&["cluster", "admit", "--data-dir", &c, &b_id]);
    std::fs::write(p("e.cert"), cert).unwrap();
    let args = ["--cluster".to_string(), own, "--admission".into(), p("e.cert")];
    let node_b = Node::start(Path::new(BIN), "B", Path::new(&b), &args).unwrap();
    assert_eq!(node_b.get("/api/v1/node").unwrap()["cluster"]["keeper"], false);
}
