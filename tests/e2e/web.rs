//! The dashboard in a real browser (headless Chromium over WebDriver),
//! against a real node building a real repository: every page renders, a
//! build's log is two clicks from the console, the live tail grows while a
//! step runs (and `peerbot log --follow` prints it), a recipe error shows in
//! red, the force button works after logging in and is refused before, and
//! the rebuild and cancel buttons do what they say.
//! Screenshots of every page land in the test's target directory.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use peerbot_tests::browser::fantoccini::{Client, Locator};
use peerbot_tests::browser::Driver;
use peerbot_tests::{wait_for, GitRepo, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(120);

const CAROL: &str = "Carol Example <carol@example.org>";
const ALICE: &str = "Alice Example <alice@example.org>";
const BOB: &str = "Bob Example <bob@example.org>";
const MALLORY: &str = "Mallory Example <mallory@example.org>";

/// `check` fails once `broken` exists; `wait` ticks until the gate file
/// appears, but only in commits that have a file named `slow`.
fn recipe(gate: &Path) -> String {
    format!(
        r#"
[[builder]]
name = "check"
[[builder.step]]
name = "compile"
run = "printf '\u001b[32mcompiled\u001b[0m fine\\n'; echo 'warning: unused variable'"
[[builder.step]]
name = "test"
run = "echo 'test result: ok. 3 passed; 0 failed; 0 ignored'; test ! -e broken"

[[builder]]
name = "wait"
[[builder.step]]
name = "wait"
timeout_secs = 300
run = "i=0; while [ -e slow ] && [ ! -e {gate} ]; do i=$((i+1)); echo tick $i; sleep 0.2; done; echo finished"
"#,
        gate = gate.display()
    )
}

fn change_of(n: &Node, commit: &str, forced: bool) -> Value {
    let found = wait_for(&format!("a change for {commit}"), LONG, || {
        let list = n.get(&format!("/api/v1/changes?commit={commit}")).ok()?;
        list.as_array()?.iter().find(|c| c["force"].is_null() != forced).cloned()
    });
    found.unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()))
}

fn shots() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let path = shots().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
}

/// Waits, without a fixed sleep, for the page to hold `what`.
async fn until_source_has(c: &Client, what: &str) {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let src = c.source().await.unwrap();
        if src.contains(what) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the page never showed {what:?}:\n{src}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_dashboard_in_a_browser() {
    let root = tempfile::Builder::new().prefix("peerbot-web-").tempdir().unwrap();
    let gate = root.path().join("gate");
    let repo = GitRepo::new().unwrap();
    let c1 = repo.commit_as(CAROL, &[(".peerbot.toml", &recipe(&gate))], &[], "the recipe").unwrap();
    let path = repo.path().display().to_string();
    let args = [
        "--watch".to_string(),
        format!("{path}#main"),
        "--allow-repo".into(),
        path.clone(),
        "--sandbox".into(),
        "none".into(),
        "--executors".into(),
        "2".into(),
        "--name".into(),
        "web-node".into(),
    ];
    let n = Node::start(Path::new(BIN), "web", &root.path().join("n"), &args).unwrap();
    assert_eq!(n.build_of(&c1, "check")["status"], "warnings");
    let c2 = repo.commit_as(MALLORY, &[("broken", "1\n")], &[], "mallory breaks it").unwrap();
    let red = n.build_of(&c2, "check");
    assert_eq!(red["blamelist"][0], MALLORY);
    n.build_of(&c2, "wait");

    // A step that runs until the gate opens.
    let c3 = repo.commit_as(ALICE, &[("slow", "1\n")], &[], "alice slows it down").unwrap();
    let job = wait_for("the wait job running", LONG, || {
        let jobs = n.get("/api/v1/jobs?state=running").ok()?;
        let j = jobs.as_array()?.iter().find(|j| j["commit"] == c3 && j["builder"] == "wait")?.clone();
        (j["claim"]["step"] == "wait").then(|| j["job"].as_str().unwrap().to_string())
    })
    .unwrap();
    let mut follow = Command::new(BIN)
        .args(["log", "--follow", &job[..12], "--node", &n.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let driver = Driver::start().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let followed = rt.block_on(async {
        let c = driver.browser().await.unwrap();
        let base = n.url();

        // The live tail grows while the step runs, without a reload.
        c.goto(&format!("{base}/jobs/{job}")).await.unwrap();
        until_source_has(&c, "tick ").await;
        c.execute("window.stayed = true;", vec![]).await.unwrap();
        let first = text_of(&c, "#live").await;
        let ticks = |t: &str| t.lines().filter(|l| l.starts_with("tick ")).count();
        let deadline = std::time::Instant::now() + LONG;
        while ticks(&text_of(&c, "#live").await) < ticks(&first) + 5 {
            assert!(std::time::Instant::now() < deadline, "the live tail did not grow past {first:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(c.execute("return window.stayed === true;", vec![]).await.unwrap(), Value::Bool(true));
        shot(&c, "job-live").await;
        std::fs::write(&gate, "open").unwrap();
        let done = n.build_of(&c3, "wait");
        assert_eq!(done["status"], "success");
        n.build_of(&c3, "check");

        // The console: Mallory's commit stands out; its log is two clicks away.
        c.goto(&base).await.unwrap();
        let broke = c.find(Locator::Css("td.cell a.broke")).await.unwrap();
        assert!(broke.attr("title").await.unwrap().unwrap().contains("Mallory"));
        shot(&c, "console").await;
        broke.click().await.unwrap();
        assert!(c.current_url().await.unwrap().path().starts_with("/builds/"));
        until_source_has(&c, "broke the build").await;
        assert!(c.source().await.unwrap().contains("Mallory Example"));
        shot(&c, "build").await;
        c.find(Locator::Css("a[href$='/steps/1/log']")).await.unwrap().click().await.unwrap();
        until_source_has(&c, "test result: ok. 3 passed").await;

        for (page, name, expect) in [
            ("/waterfall", "waterfall", "alice slows it down"),
            ("/builders", "builders", "wait"),
            ("/builders/check", "builder", "Success rate"),
            ("/nodes", "nodes", "web-node"),
        ] {
            c.goto(&format!("{base}{page}")).await.unwrap();
            until_source_has(&c, expect).await;
            shot(&c, name).await;
        }
        // The builder page draws its trends.
        c.goto(&format!("{base}/builders/check")).await.unwrap();
        assert!(c.find_all(Locator::Css("svg.chart circle")).await.unwrap().len() >= 3);

        // A broken recipe shows in red on its change's page.
        let c4 = repo.commit_as(BOB, &[(".peerbot.toml", "[[builder]\nname = ")], &[], "bob's recipe").unwrap();
        let bad = change_of(&n, &c4, false);
        assert!(bad["recipe_error"].is_string(), "{bad}");
        c.goto(&format!("{base}/changes/{}", bad["id"].as_str().unwrap())).await.unwrap();
        let err = text_of(&c, ".recipe-error").await;
        assert!(!err.is_empty());
        let colour = c.find(Locator::Css(".recipe-error")).await.unwrap().css_value("color").await.unwrap();
        assert_eq!(colour, "rgba(176, 0, 32, 1)");
        shot(&c, "change-recipe-error").await;

        // Force without logging in: refused, nothing forced.
        let change = change_of(&n, &c2, false);
        let change_page = format!("{base}/changes/{}", change["id"].as_str().unwrap());
        c.goto(&change_page).await.unwrap();
        c.find(Locator::Css("form[action='/ui/force'] button")).await.unwrap().click().await.unwrap();
        until_source_has(&c, "log in with this node's API token first").await;
        let forced = n.get(&format!("/api/v1/changes?commit={c2}")).unwrap();
        assert!(forced.as_array().unwrap().iter().all(|c| c["force"].is_null()), "{forced}");

        // Log in with the token; now the button forces a build.
        c.goto(&format!("{base}/login")).await.unwrap();
        shot(&c, "login").await;
        c.find(Locator::Css("input[name=token]")).await.unwrap().send_keys(&n.api_token()).await.unwrap();
        c.find(Locator::Css("form[action='/login'] button")).await.unwrap().click().await.unwrap();
        until_source_has(&c, "log out").await;
        c.goto(&change_page).await.unwrap();
        c.find(Locator::Css("form[action='/ui/force'] button")).await.unwrap().click().await.unwrap();
        until_source_has(&c, "forced from the web page").await;
        let now = c.current_url().await.unwrap();
        let forced = change_of(&n, &c2, true);
        assert_eq!(now.path(), format!("/changes/{}", forced["id"].as_str().unwrap()));
        shot(&c, "change-forced").await;

        // Rebuild the slow build with the gate shut, then cancel it from its job page.
        std::fs::remove_file(&gate).unwrap();
        let slow = n.build_of(&c3, "wait");
        c.goto(&format!("{base}/builds/{}", slow["id"].as_str().unwrap())).await.unwrap();
        c.find(Locator::Css("form[action='/ui/force'] button")).await.unwrap().click().await.unwrap();
        until_source_has(&c, "forced from the web page").await;
        c.find(Locator::LinkText("wait")).await.unwrap().click().await.unwrap();
        until_source_has(&c, "tick ").await;
        let job = c.current_url().await.unwrap().path().trim_start_matches("/jobs/").to_string();
        c.find(Locator::Css("form[action='/ui/cancel'] button")).await.unwrap().click().await.unwrap();
        // The running build is killed and its result says so.
        let cancelled = wait_for("the rebuild cancelled", LONG, || {
            let j = n.get(&format!("/api/v1/jobs/{job}")).ok()?;
            j["results"].as_array().is_some_and(|r| !r.is_empty()).then_some(j)
        })
        .unwrap();
        assert_eq!(cancelled["cancelled"]["reason"], "cancelled from the web page", "{cancelled}");
        assert_eq!(cancelled["results"][0]["status"], "cancelled", "{cancelled}");
        c.close().await.unwrap();
        done["id"].as_str().unwrap().to_string()
    });

    // `peerbot log --follow` printed the step as it ran, then the result.
    let status = follow.wait().unwrap();
    let mut out = String::new();
    follow.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success(), "{out}");
    assert!(out.starts_with("== step wait ==\n"), "{out}");
    assert!(out.contains("tick 3\n") && out.contains("finished\n"), "{out}");
    assert!(out.trim_end().ends_with(&format!("== success: build {followed} ==")), "{out}");
}

/// Writes from pages need the login cookie and the CSRF token of that
/// login; a request from another origin is refused even with both.
#[test]
fn page_writes_need_the_login_and_its_csrf_token() {
    let root = tempfile::Builder::new().prefix("peerbot-web-auth-").tempdir().unwrap();
    let n = Node::start(Path::new(BIN), "auth", &root.path().join("n"), &[]).unwrap();
    let agent = ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(60)).build();
    let post = |path: &str, cookie: Option<&str>, origin: Option<&str>, form: &[(&str, &str)]| {
        let mut r = agent.post(&format!("{}{path}", n.url()));
        if let Some(c) = cookie {
            r = r.set("cookie", c);
        }
        if let Some(o) = origin {
            r = r.set("origin", o);
        }
        match r.send_form(form) {
            Ok(resp) => (resp.status(), resp.header("set-cookie").map(str::to_string), resp.into_string().unwrap()),
            Err(ureq::Error::Status(code, resp)) => (code, None, resp.into_string().unwrap()),
            Err(e) => panic!("{e}"),
        }
    };
    let force = [("repo", "/nonexistent/peerbot-repo"), ("commit", "HEAD")];
    let (code, _, body) = post("/ui/force", None, None, &[&[("csrf", "x")][..], &force].concat());
    assert_eq!(code, 401, "{body}");

    let (code, _, _) = post("/login", None, None, &[("token", "wrong")]);
    assert_eq!(code, 401);
    let token = n.api_token();
    let (code, set_cookie, _) = post("/login", None, None, &[("token", &token), ("next", "//evil.example/")]);
    assert_eq!(code, 303);
    let set_cookie = set_cookie.unwrap();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    assert!(!set_cookie.contains(&token), "the browser never holds the token itself: {set_cookie}");
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    // A token given as the cookie's value is not a login.
    let (code, _, _) =
        post("/ui/force", Some(&format!("peerbot_session={token}")), None, &[&[("csrf", "x")][..], &force].concat());
    assert_eq!(code, 401);

    let page = agent.get(&format!("{}/login", n.url())).set("cookie", &cookie).call().unwrap().into_string().unwrap();
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    assert_eq!(csrf.len(), 64);

    let (code, _, body) =
        post("/ui/force", Some(&cookie), None, &[&[("csrf", "0".repeat(64).as_str())][..], &force].concat());
    assert_eq!(code, 403, "{body}");
    let (code, _, body) = post(
        "/ui/force",
        Some(&cookie),
        Some("http://evil.example"),
        &[&[("csrf", csrf.as_str())][..], &force].concat(),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("evil.example"), "{body}");
    // Right cookie, token and origin: the write goes through to the node,
    // which names what is wrong with this repository.
    let origin = n.url();
    let (code, _, body) =
        post("/ui/force", Some(&cookie), Some(&origin), &[&[("csrf", csrf.as_str())][..], &force].concat());
    assert_eq!(code, 400, "{body}");
    assert!(!body.contains("CSRF") && !body.contains("log in"), "{body}");
    // The JSON API does not take the cookie.
    let r = agent
        .post(&format!("{}/api/v1/force", n.url()))
        .set("cookie", &cookie)
        .send_json(serde_json::json!({"repo": "x", "commit": "HEAD"}));
    assert!(matches!(r, Err(ureq::Error::Status(401, _))));
}
