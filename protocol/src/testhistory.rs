//! A builder's tests over its recent results: which fail now, and which
//! are flaky. A test is flaky when it both failed and passed on one commit
//! (a rebuild changed its mind), or went pass, fail, pass in consecutive
//! runs. Only tests that failed at least once in the window are followed:
//! results name failing tests, not passing ones.

use std::collections::{BTreeMap, HashSet};

use crate::record::BuildResult;

/// One run of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation<'a> {
    pub commit: &'a str,
    pub test: &'a str,
    pub passed: bool,
    /// The failure's message (empty when it passed).
    pub message: &'a str,
}

/// Results of a test kept in a summary, newest last.
pub const MAX_RECENT: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSummary {
    pub name: String,
    pub runs: u32,
    pub failures: u32,
    /// The last [`MAX_RECENT`] results, oldest first (`true`: passed).
    pub recent: Vec<bool>,
    pub flaky: bool,
    /// Its newest run failed.
    pub failing: bool,
    pub last_failure_commit: String,
    pub last_failure_message: String,
}

/// What a builder's results (oldest first) say of each test that failed
/// in them. A step with a test report whose failures were all kept says
/// every test it does not name passed; one that listed no report, or cut
/// its list, says nothing of the tests it does not name.
pub fn observations<'a>(results: &[&'a BuildResult]) -> Vec<Observation<'a>> {
    let ever_failed: HashSet<&str> =
        results.iter().flat_map(|r| &r.steps).flat_map(|s| &s.failed_tests).map(|f| f.name.as_str()).collect();
    let mut names: Vec<&str> = ever_failed.into_iter().collect();
    names.sort_unstable();
    let mut out = Vec::new();
    for r in results {
        for s in r.steps.iter().filter(|s| s.test_format.is_some()) {
            let complete = s.tests.as_ref().is_some_and(|t| t.failed as usize == s.failed_tests.len());
            let failed: HashSet<&str> = s.failed_tests.iter().map(|f| f.name.as_str()).collect();
            for f in &s.failed_tests {
                out.push(Observation { commit: &r.commit, test: &f.name, passed: false, message: &f.message });
            }
            if complete {
                for n in names.iter().filter(|n| !failed.contains(**n)) {
                    out.push(Observation { commit: &r.commit, test: n, passed: true, message: "" });
                }
            }
        }
    }
    out
}

/// Summaries of the tests observed (runs oldest first), by name.
pub fn summarize(runs: &[Observation]) -> Vec<TestSummary> {
    let mut by_test: BTreeMap<&str, Vec<&Observation>> = BTreeMap::new();
    for o in runs {
        by_test.entry(o.test).or_default().push(o);
    }
    by_test.into_iter().map(|(name, runs)| summary(name, &runs)).collect()
}

fn summary(name: &str, runs: &[&Observation]) -> TestSummary {
    let mut outcomes_of: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    for o in runs {
        let e = outcomes_of.entry(o.commit).or_default();
        if o.passed {
            e.0 = true
        } else {
            e.1 = true
        }
    }
    let same_commit = outcomes_of.values().any(|&(passed, failed)| passed && failed);
    let flipped = runs.windows(3).any(|w| w[0].passed && !w[1].passed && w[2].passed);
    let last_failure = runs.iter().rev().find(|o| !o.passed);
    TestSummary {
        name: name.to_string(),
        runs: runs.len() as u32,
        failures: runs.iter().filter(|o| !o.passed).count() as u32,
        recent: runs[runs.len().saturating_sub(MAX_RECENT)..].iter().map(|o| o.passed).collect(),
        flaky: same_commit || flipped,
        failing: runs.last().is_some_and(|o| !o.passed),
        last_failure_commit: last_failure.map(|o| o.commit.to_string()).unwrap_or_default(),
        last_failure_message: last_failure.map(|o| o.message.to_string()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{FailedTest, StepResult, TestCounts};

    fn obs<'a>(commit: &'a str, test: &'a str, passed: bool) -> Observation<'a> {
        Observation { commit, test, passed, message: if passed { "" } else { "boom" } }
    }

    #[test]
    fn flaky_when_one_commit_both_fails_and_passes_or_a_test_flips_back() {
        let runs = [
            obs("c1", "same_commit", false),
            obs("c1", "same_commit", true),
            obs("c1", "flips", true),
            obs("c2", "flips", false),
            obs("c3", "flips", true),
            obs("c1", "broke", true),
            obs("c2", "broke", false),
            obs("c3", "broke", false),
            obs("c1", "fixed", false),
            obs("c2", "fixed", true),
        ];
        let s = summarize(&runs);
        let get = |n: &str| s.iter().find(|t| t.name == n).unwrap();
        assert!(get("same_commit").flaky && !get("same_commit").failing);
        assert!(get("flips").flaky);
        assert_eq!(get("flips").recent, [true, false, true]);
        assert!(!get("broke").flaky && get("broke").failing);
        assert_eq!((get("broke").runs, get("broke").failures), (3, 2));
        assert_eq!(get("broke").last_failure_commit, "c3");
        assert!(!get("fixed").flaky && !get("fixed").failing);
    }

    fn result(commit: &str, failed: &[&str], counted: u64, report: bool) -> BuildResult {
        let step = StepResult {
            name: "t".into(),
            command: "x".into(),
            exit_code: Some(1),
            duration_ms: 0,
            timed_out: false,
            log: None,
            warnings: 0,
            tests: Some(TestCounts { passed: 1, failed: counted, skipped: 0 }),
            warning_lines: vec![],
            failed_tests: failed.iter().map(|n| FailedTest { name: n.to_string(), message: "m".into() }).collect(),
            test_format: report.then(|| "tap".to_string()),
        };
        let job = crate::Hash32::of(commit.as_bytes());
        BuildResult {
            builder: "b".into(),
            steps: vec![step],
            ..crate::testkit::linux_result(job, "r", commit, crate::Status::Failure, 0)
        }
    }

    #[test]
    fn a_report_that_does_not_name_a_test_says_it_passed_unless_its_list_was_cut() {
        let rs = [
            result("c1", &["a"], 1, true),
            result("c1", &[], 0, true),
            result("c2", &["b"], 5, true), // four failures were not kept: says nothing of "a"
            result("c3", &[], 0, false),   // no report: says nothing
        ];
        let refs: Vec<&BuildResult> = rs.iter().collect();
        let o = observations(&refs);
        let of = |t: &str| o.iter().filter(|x| x.test == t).map(|x| (x.commit, x.passed)).collect::<Vec<_>>();
        assert_eq!(of("a"), [("c1", false), ("c1", true)]);
        assert_eq!(of("b"), [("c1", true), ("c1", true), ("c2", false)]);
        let s = summarize(&o);
        assert!(s.iter().find(|t| t.name == "a").unwrap().flaky);
        assert!(!s.iter().find(|t| t.name == "b").unwrap().flaky);
    }
}
