//! Test reports a step writes: JUnit XML files, libtest's JSON lines
//! (`cargo test -- -Z unstable-options --format json`), `go test -json`
//! and TAP. Bytes in, counts and failing tests out; nothing here reads a
//! file. Whatever a report holds, parsing is bounded and never panics: a
//! report is as hostile as any step output.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::record::{FailedTest, TestCounts};

/// Failing tests kept per step; the count goes on past it.
pub const MAX_FAILURES: usize = 100;
pub const MAX_TEST_NAME_CHARS: usize = 300;
pub const MAX_MESSAGE_CHARS: usize = 2000;
/// Bytes of reports read per step (the executor stops reading there too).
pub const MAX_REPORT_BYTES: usize = 16 * 1024 * 1024;
/// Report files read per step.
pub const MAX_REPORT_FILES: usize = 64;
pub const MAX_REPORT_PATH_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestFormat {
    Junit,
    LibtestJson,
    GoTestJson,
    Tap,
}

impl TestFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            TestFormat::Junit => "junit",
            TestFormat::LibtestJson => "libtest-json",
            TestFormat::GoTestJson => "go-test-json",
            TestFormat::Tap => "tap",
        }
    }
}

/// A step's `tests = { format = "...", path = "GLOB" }`: `path` names the
/// report files (JUnit only); the other formats are read from the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestReportSpec {
    pub format: TestFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl TestReportSpec {
    /// The checks a recipe's `tests` must pass, read here or announced by a peer.
    pub fn check(&self) -> Result<(), String> {
        let f = self.format.as_str();
        match (&self.path, self.format) {
            (None, TestFormat::Junit) => Err("tests: format \"junit\" is read from files: set path = \"GLOB\"".into()),
            (Some(_), TestFormat::LibtestJson | TestFormat::GoTestJson | TestFormat::Tap) => {
                Err(format!("tests: format {f:?} is read from the step's output; path is only for \"junit\""))
            }
            (None, _) => Ok(()),
            (Some(p), _) => check_report_glob(p).map(|_| ()).map_err(|e| format!("tests.path: {e}")),
        }
    }
}

/// A report glob: relative, inside the step's directory (no `..`, no
/// absolute path), of bounded length, and a valid pattern.
pub fn check_report_glob(p: &str) -> Result<glob::Pattern, String> {
    if p.is_empty() || p.len() > MAX_REPORT_PATH_LEN || p.contains('\0') {
        return Err(format!("{:?} must be 1 to {MAX_REPORT_PATH_LEN} bytes without NUL", cut(p, 40)));
    }
    if p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return Err(format!("{p:?} must be a relative path inside the checkout, without '..'"));
    }
    glob::Pattern::new(p).map_err(|e| format!("{p:?} is not a glob: {e}"))
}

/// What a step's report says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    pub counts: TestCounts,
    /// The first [`MAX_FAILURES`] failing tests, names and messages cut.
    pub failures: Vec<FailedTest>,
}

impl TestReport {
    fn pass(&mut self) {
        self.counts.passed += 1;
    }
    fn skip(&mut self) {
        self.counts.skipped += 1;
    }
    fn fail(&mut self, name: &str, message: &str) {
        self.counts.failed += 1;
        if self.failures.len() < MAX_FAILURES {
            self.failures
                .push(FailedTest { name: cut(name, MAX_TEST_NAME_CHARS), message: cut(message, MAX_MESSAGE_CHARS) });
        }
    }
    fn add(&mut self, other: TestReport) {
        self.counts.passed += other.counts.passed;
        self.counts.failed += other.counts.failed;
        self.counts.skipped += other.counts.skipped;
        let room = MAX_FAILURES.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
    }
}

/// At most `n` characters of `s`, trimmed, with `…` where it was cut.
pub fn cut(s: &str, n: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Parses a step's report: `files` for JUnit, the step's `log` otherwise.
pub fn parse(format: TestFormat, log: &[u8], files: &[Vec<u8>]) -> TestReport {
    let log = &log[..log.len().min(MAX_REPORT_BYTES)];
    match format {
        TestFormat::Junit => {
            let mut out = TestReport::default();
            let mut budget = MAX_REPORT_BYTES;
            for f in files.iter().take(MAX_REPORT_FILES) {
                let f = &f[..f.len().min(budget)];
                budget -= f.len();
                out.add(junit(f));
            }
            out
        }
        TestFormat::LibtestJson => libtest_json(log),
        TestFormat::GoTestJson => go_test_json(log),
        TestFormat::Tap => tap(log),
    }
}

fn json_lines(log: &[u8]) -> impl Iterator<Item = serde_json::Map<String, serde_json::Value>> + '_ {
    // serde_json stops at 128 levels of nesting, so no line can exhaust the stack.
    log.split(|&b| b == b'\n').filter_map(|l| {
        let l = l.trim_ascii();
        if l.first() != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(l).ok()
    })
}

fn text<'a>(m: &'a serde_json::Map<String, serde_json::Value>, k: &str) -> &'a str {
    m.get(k).and_then(|v| v.as_str()).unwrap_or("")
}

/// libtest's JSON events: one `{"type":"test","event":"ok|failed|ignored"}`
/// per test, the failure's captured output (with the panic) in `stdout`.
pub fn libtest_json(log: &[u8]) -> TestReport {
    let mut out = TestReport::default();
    for m in json_lines(log) {
        if text(&m, "type") != "test" {
            continue;
        }
        match text(&m, "event") {
            "ok" => out.pass(),
            "ignored" => out.skip(),
            "failed" => {
                let message = [text(&m, "message"), text(&m, "stdout")].join("\n");
                out.fail(text(&m, "name"), &message)
            }
            _ => {}
        }
    }
    out
}

/// `go test -json` events: a test's `pass`, `fail` or `skip`, its message
/// from its `output` events. A package that fails with no failing test (it
/// did not build) counts as one failure named after the package.
pub fn go_test_json(log: &[u8]) -> TestReport {
    let mut out = TestReport::default();
    // Output kept per running test, bounded per test; the input bounds how many.
    let mut output: HashMap<(String, String), String> = HashMap::new();
    let mut failed_in: HashMap<String, bool> = HashMap::new();
    for m in json_lines(log) {
        let (pkg, test) = (text(&m, "Package"), text(&m, "Test"));
        let key = (pkg.to_string(), test.to_string());
        match text(&m, "Action") {
            "output" => {
                let line = text(&m, "Output");
                let t = line.trim_start();
                if t.starts_with("=== ") || t.starts_with("--- ") {
                    continue;
                }
                let buf = output.entry(key).or_default();
                if buf.len() < MAX_MESSAGE_CHARS * 4 {
                    buf.push_str(line);
                }
            }
            "pass" if !test.is_empty() => {
                out.pass();
                output.remove(&key);
            }
            "skip" if !test.is_empty() => {
                out.skip();
                output.remove(&key);
            }
            "fail" if !test.is_empty() => {
                let message = output.remove(&key).unwrap_or_default();
                out.fail(&format!("{pkg}.{test}"), &message);
                failed_in.insert(pkg.to_string(), true);
            }
            "fail" => {
                if !failed_in.get(pkg).copied().unwrap_or(false) {
                    let message = output.remove(&key).unwrap_or_default();
                    out.fail(pkg, &message);
                }
            }
            _ => {}
        }
    }
    out
}

/// TAP (13): `ok`/`not ok` lines at the top level, `# SKIP` and `# TODO`
/// directives, a failure's message from its YAML block or `#` lines, and
/// `Bail out!` as a failure of its own.
pub fn tap(log: &[u8]) -> TestReport {
    let text = String::from_utf8_lossy(log);
    let mut out = TestReport::default();
    // The failing test whose diagnostics follow, and them so far.
    let mut open: Option<(String, String)> = None;
    let close = |out: &mut TestReport, open: &mut Option<(String, String)>| {
        if let Some((name, message)) = open.take() {
            out.fail(&name, &message);
        }
    };
    for line in text.lines() {
        let (ok, rest) = if let Some(r) = line.strip_prefix("not ok") {
            (false, r)
        } else if let Some(r) = line.strip_prefix("ok") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("Bail out!") {
            close(&mut out, &mut open);
            out.fail("Bail out!", r);
            continue;
        } else {
            if let Some((_, message)) = open.as_mut() {
                let t = line.trim();
                let diag = line.starts_with(' ') || line.starts_with('#');
                if diag && t != "---" && t != "..." && message.len() < MAX_MESSAGE_CHARS * 4 {
                    message.push_str(t.trim_start_matches('#').trim());
                    message.push('\n');
                }
            }
            continue;
        };
        if !(rest.is_empty() || rest.starts_with(' ')) {
            continue; // "okay", "not okay": not a test line
        }
        close(&mut out, &mut open);
        let (desc, directive) = match rest.split_once('#') {
            Some((d, dir)) => (d, dir.trim().to_ascii_lowercase()),
            None => (rest, String::new()),
        };
        let desc = desc.trim();
        let number_end = desc.find(|c: char| !c.is_ascii_digit()).unwrap_or(desc.len());
        let (number, desc) = desc.split_at(number_end);
        let desc = desc.trim_start().trim_start_matches('-').trim();
        let name = if desc.is_empty() { format!("test {number}") } else { desc.to_string() };
        if directive.starts_with("skip") || (directive.starts_with("todo") && !ok) {
            out.skip();
        } else if ok {
            out.pass();
        } else {
            open = Some((name, String::new()));
        }
    }
    close(&mut out, &mut open);
    out
}

/// JUnit XML as pytest, Maven Surefire, Gradle and most others write it:
/// each `<testcase>` passes unless it holds `<failure>` or `<error>` (a
/// failure) or `<skipped>`. A file that is not XML counts what it held
/// before the error.
pub fn junit(bytes: &[u8]) -> TestReport {
    use quick_xml::events::Event;
    let text = String::from_utf8_lossy(bytes);
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut out = TestReport::default();
    // The test case open now: its name, and how it ended so far.
    let mut case: Option<Case> = None;
    // Inside a <failure>/<error> of the open case: its text is the message.
    let mut in_failure = false;
    loop {
        let ev = match reader.read_event() {
            Ok(Event::Eof) | Err(_) => break,
            Ok(ev) => ev,
        };
        match ev {
            Event::Start(e) => open_element(&e, &mut case, &mut in_failure, &mut out),
            Event::Empty(e) => {
                open_element(&e, &mut case, &mut in_failure, &mut out);
                // `<testcase/>` has no end tag; `<failure/>` no text.
                if e.local_name().as_ref() == "testcase" {
                    if let Some(c) = case.take() {
                        c.finish(&mut out);
                    }
                }
                in_failure = false;
            }
            Event::End(e) => match e.local_name().as_ref() {
                "testcase" => {
                    if let Some(c) = case.take() {
                        c.finish(&mut out);
                    }
                    in_failure = false;
                }
                "failure" | "error" => in_failure = false,
                _ => {}
            },
            Event::Text(t) if in_failure => {
                if let Some(c) = case.as_mut() {
                    c.push(&t.xml10_content());
                }
            }
            Event::CData(t) if in_failure => {
                if let Some(c) = case.as_mut() {
                    c.push(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) if in_failure => {
                let ch = match r.resolve_char_ref() {
                    Ok(Some(ch)) => ch.to_string(),
                    _ => quick_xml::escape::resolve_predefined_entity(&r).unwrap_or("").to_string(),
                };
                if let Some(c) = case.as_mut() {
                    c.push(&ch);
                }
            }
            _ => {}
        }
    }
    if let Some(c) = case.take() {
        c.finish(&mut out);
    }
    out
}

fn open_element(
    e: &quick_xml::events::BytesStart,
    case: &mut Option<Case>,
    in_failure: &mut bool,
    out: &mut TestReport,
) {
    match e.local_name().as_ref() {
        "testcase" => {
            if let Some(c) = case.take() {
                c.finish(out);
            }
            let (mut name, mut class) = (String::new(), String::new());
            for a in e.attributes().flatten() {
                let v =
                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0).map(|v| v.into_owned()).unwrap_or_default();
                match a.key.local_name().as_ref() {
                    "name" => name = v,
                    "classname" => class = v,
                    _ => {}
                }
            }
            let name = if class.is_empty() { name } else { format!("{class}.{name}") };
            *case = Some(Case { name, state: State::Passed, message: String::new() });
        }
        "failure" | "error" => {
            if let Some(c) = case.as_mut() {
                c.state = State::Failed;
                for a in e.attributes().flatten() {
                    if a.key.local_name().as_ref() == "message" {
                        c.push(&a.normalized_value(quick_xml::XmlVersion::Implicit1_0).unwrap_or_default());
                        c.push("\n");
                    }
                }
                *in_failure = true;
            }
        }
        "skipped" => {
            if let Some(c) = case.as_mut().filter(|c| c.state == State::Passed) {
                c.state = State::Skipped;
            }
        }
        _ => {}
    }
}

#[derive(PartialEq)]
enum State {
    Passed,
    Failed,
    Skipped,
}

struct Case {
    name: String,
    state: State,
    message: String,
}

impl Case {
    fn push(&mut self, s: &str) {
        // Bounded here as the text comes: `fail` cuts it to its final length.
        if self.message.len() < MAX_MESSAGE_CHARS * 4 {
            self.message.push_str(s);
        }
    }
    fn finish(self, out: &mut TestReport) {
        match self.state {
            State::Passed => out.pass(),
            State::Skipped => out.skip(),
            State::Failed => out.fail(&self.name, &self.message),
        }
    }
}

#[cfg(test)]
#[path = "testreport_tests.rs"]
mod tests;
