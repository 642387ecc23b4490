use super::*;
use proptest::prelude::*;

fn counts(r: &TestReport) -> (u64, u64, u64) {
    (r.counts.passed, r.counts.failed, r.counts.skipped)
}

fn names(r: &TestReport) -> Vec<&str> {
    r.failures.iter().map(|f| f.name.as_str()).collect()
}

#[test]
fn libtest_json_counts_each_test_and_keeps_the_panic() {
    let log = br#"   Compiling t v0.1.0
{ "type": "suite", "event": "started", "test_count": 3 }
{ "type": "test", "event": "started", "name": "tests::a" }
{ "type": "test", "name": "tests::a", "event": "ok" }
{ "type": "test", "name": "tests::b", "event": "failed", "stdout": "thread 'tests::b' panicked at src/lib.rs:9:9:\nassertion `left == right` failed\n" }
{ "type": "test", "name": "tests::c", "event": "ignored" }
{ "type": "suite", "event": "failed", "passed": 1, "failed": 1, "ignored": 1, "measured": 0, "filtered_out": 0, "exec_time": 0.001 }
error: test failed, to rerun pass `--lib`
"#;
    let r = parse(TestFormat::LibtestJson, log, &[]);
    assert_eq!(counts(&r), (1, 1, 1));
    assert_eq!(names(&r), ["tests::b"]);
    assert!(r.failures[0].message.contains("assertion `left == right` failed"), "{:?}", r.failures[0]);
}

#[test]
fn go_test_json_names_package_and_test_with_its_output() {
    let log = br#"{"Action":"run","Package":"ex/m","Test":"TestA"}
{"Action":"output","Package":"ex/m","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"pass","Package":"ex/m","Test":"TestA","Elapsed":0}
{"Action":"run","Package":"ex/m","Test":"TestB"}
{"Action":"output","Package":"ex/m","Test":"TestB","Output":"    m_test.go:9: want 2, got 3\n"}
{"Action":"output","Package":"ex/m","Test":"TestB","Output":"--- FAIL: TestB (0.00s)\n"}
{"Action":"fail","Package":"ex/m","Test":"TestB","Elapsed":0}
{"Action":"skip","Package":"ex/m","Test":"TestC","Elapsed":0}
{"Action":"fail","Package":"ex/m","Elapsed":0.01}
{"Action":"output","Package":"ex/broken","Output":"m.go:3: syntax error\n"}
{"Action":"fail","Package":"ex/broken","Elapsed":0}
"#;
    let r = parse(TestFormat::GoTestJson, log, &[]);
    assert_eq!(counts(&r), (1, 2, 1));
    assert_eq!(names(&r), ["ex/m.TestB", "ex/broken"]);
    assert_eq!(r.failures[0].message, "m_test.go:9: want 2, got 3");
    assert_eq!(r.failures[1].message, "m.go:3: syntax error");
}

#[test]
fn tap_reads_directives_diagnostics_and_bail_out() {
    let log = b"TAP version 13\n1..6\nok 1 - adds\nnot ok 2 - divides\n  ---\n  message: 'want 2, got 3'\n  ...\n\
                ok 3 # SKIP no network\nnot ok 4 - later # TODO not written\nok 5\n\
                okay this is prose\n    not ok 1 - an indented subtest is not counted\n\
                not ok 6 subtract\n# wanted 1\nBail out! database gone\n";
    let r = parse(TestFormat::Tap, log, &[]);
    assert_eq!(counts(&r), (2, 3, 2));
    assert_eq!(names(&r), ["divides", "subtract", "Bail out!"]);
    assert_eq!(r.failures[0].message, "message: 'want 2, got 3'");
    assert_eq!(r.failures[1].message, "wanted 1");
    assert_eq!(r.failures[2].message, "database gone");
}

#[test]
fn junit_reads_cases_across_files_with_entities_and_cdata() {
    let pytest = br#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="3">
<testcase classname="test_x" name="test_ok" time="0.001" />
<testcase classname="test_x" name="test_fails" time="0.001"><failure message="assert 1 == 2">def test_fails():
&gt;       assert 1 == 2
E       assert 1 == 2&#10;</failure></testcase>
<testcase classname="test_x" name="test_skip" time="0.000"><skipped type="pytest.skip" message="later">test_x.py:9: later</skipped></testcase>
</testsuite></testsuites>"#;
    let surefire = br#"<testsuite><testcase name="t1" classname="a.B"><error message="boom"><![CDATA[java.lang.X: <boom>]]></error></testcase><testcase name="t2"/></testsuite>"#;
    let r = parse(TestFormat::Junit, b"", &[pytest.to_vec(), surefire.to_vec()]);
    assert_eq!(counts(&r), (2, 2, 1));
    assert_eq!(names(&r), ["test_x.test_fails", "a.B.t1"]);
    assert!(
        r.failures[0].message.starts_with("assert 1 == 2\ndef test_fails():\n>       assert 1 == 2"),
        "{:?}",
        r.failures[0]
    );
    assert_eq!(r.failures[1].message, "boom\njava.lang.X: <boom>");
    // Not XML at all, or cut short: what was read counts, nothing panics.
    assert_eq!(counts(&junit(b"not xml <<<")), (0, 0, 0));
    assert_eq!(counts(&junit(br#"<testsuite><testcase name="a"/><testcase name="b"><failure>"#)), (1, 1, 0));
    // A failure outside any test case belongs to none.
    assert_eq!(counts(&junit(br#"<testsuite><testcase name="a"/><failure/></testsuite>"#)), (1, 0, 0));
}

#[test]
fn failures_kept_are_capped_and_cut_while_counts_go_on() {
    let long = "n".repeat(5000);
    let mut log = String::new();
    for i in 0..(MAX_FAILURES + 50) {
        log.push_str(&format!("not ok {i} - {long}\n  # {long}\n"));
    }
    let r = tap(log.as_bytes());
    assert_eq!(r.counts.failed, (MAX_FAILURES + 50) as u64);
    assert_eq!(r.failures.len(), MAX_FAILURES);
    assert_eq!(r.failures[0].name.chars().count(), MAX_TEST_NAME_CHARS + 1);
    assert!(r.failures[0].message.chars().count() <= MAX_MESSAGE_CHARS + 1);
    // Across JUnit files too.
    let file = format!("<testsuite>{}</testsuite>", "<testcase name='x'><failure/></testcase>".repeat(80));
    let r = parse(TestFormat::Junit, b"", &[file.clone().into_bytes(), file.into_bytes()]);
    assert_eq!((r.counts.failed, r.failures.len()), (160, MAX_FAILURES));
}

#[test]
fn a_spec_is_checked_for_format_and_path() {
    let spec = |format, path: Option<&str>| TestReportSpec { format, path: path.map(String::from) };
    assert!(spec(TestFormat::Junit, Some("build/*.xml")).check().is_ok());
    assert!(spec(TestFormat::Tap, None).check().is_ok());
    let e = spec(TestFormat::Junit, None).check().unwrap_err();
    assert!(e.contains("set path"), "{e}");
    let e = spec(TestFormat::LibtestJson, Some("x.json")).check().unwrap_err();
    assert!(e.contains("only for \"junit\""), "{e}");
    for bad in ["/etc/x.xml", "../x.xml", "a/../../x.xml", "", "a[.xml"] {
        assert!(spec(TestFormat::Junit, Some(bad)).check().is_err(), "{bad}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        for f in [TestFormat::Junit, TestFormat::LibtestJson, TestFormat::GoTestJson, TestFormat::Tap] {
            let r = parse(f, &bytes, &[bytes.clone()]);
            prop_assert!(r.failures.len() <= MAX_FAILURES);
        }
    }

    #[test]
    fn near_misses_never_panic(parts in proptest::collection::vec(prop_oneof![
        Just("<testcase name='a'>"), Just("</testcase>"), Just("<failure message='&#0;&amp;&bogus;'>"),
        Just("</failure>"), Just("<skipped/>"), Just("<![CDATA["), Just("]]>"), Just("&#x110000;"),
        Just("{\"type\":\"test\",\"event\":\"failed\",\"name\":"), Just("{\"Action\":\"fail\",\"Test\":"),
        Just("\"é\"}"), Just("\n"), Just("not ok "), Just("ok "), Just("# SKIP"), Just("  ---"), Just("Bail out!"),
        Just("\u{0}"), Just("[[[[[[[["),
    ], 0..60)) {
        let text = parts.concat();
        for f in [TestFormat::Junit, TestFormat::LibtestJson, TestFormat::GoTestJson, TestFormat::Tap] {
            parse(f, text.as_bytes(), &[text.clone().into_bytes()]);
        }
    }
}
