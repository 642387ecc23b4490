//! What a step's log tells beyond its exit code: warning lines and test
//! counts, read the way Buildbot's warning-counting and test steps do.

use crate::record::TestCounts;

/// Lines that look like compiler or tool warnings (`warning:`, `Warning: `,
/// `warning[E123]:`), as Buildbot's default warning pattern counts them.
pub fn count_warnings(log: &str) -> u64 {
    log.lines()
        .filter(|l| {
            let l = l.trim_start().to_ascii_lowercase();
            l.starts_with("warning:") || l.starts_with("warning[") || l.contains(" warning: ")
        })
        .count() as u64
}

fn number_before(words: &[&str], i: usize) -> Option<u64> {
    if i == 0 {
        return None;
    }
    words[i - 1].trim_matches(|c: char| !c.is_ascii_digit()).parse().ok()
}

/// Sums test counts from the summary lines of common runners: cargo test
/// (`test result: ok. 3 passed; 0 failed; 1 ignored`), pytest
/// (`== 3 passed, 1 failed, 2 skipped in 0.1s ==`) and the plain
/// `N passed, N failed` line.
pub fn count_tests(log: &str) -> Option<TestCounts> {
    let mut total = TestCounts::default();
    let mut seen = false;
    for line in log.lines() {
        let l = line.trim().trim_matches('=').trim();
        let is_cargo = l.starts_with("test result:");
        let is_summary = is_cargo
            || (l.contains(" passed") && (l.contains(" failed") || l.contains(" skipped") || l.contains(" in ")))
            || l.ends_with(" passed");
        if !is_summary {
            continue;
        }
        let words: Vec<&str> = l.split(|c: char| c.is_whitespace()).filter(|w| !w.is_empty()).collect();
        let mut found = false;
        for (i, w) in words.iter().enumerate() {
            let w = w.trim_end_matches([',', ';', '.']);
            let n = match number_before(&words, i) {
                Some(n) => n,
                None => continue,
            };
            match w {
                "passed" => {
                    total.passed += n;
                    found = true
                }
                "failed" => {
                    total.failed += n;
                    found = true
                }
                "skipped" | "ignored" => {
                    total.skipped += n;
                    found = true
                }
                _ => {}
            }
        }
        seen |= found;
    }
    seen.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings() {
        let log = "ok\nwarning: unused variable\nsrc/a.c:3:1: warning: implicit\nWARNING: x\nno warnings here\n";
        assert_eq!(count_warnings(log), 3);
    }

    #[test]
    fn tests() {
        let cargo = "running 4 tests\ntest result: ok. 3 passed; 0 failed; 1 ignored; 0 measured\n\
                     test result: FAILED. 2 passed; 1 failed; 0 ignored\n";
        assert_eq!(count_tests(cargo), Some(TestCounts { passed: 5, failed: 1, skipped: 1 }));
        let pytest = "===== 7 passed, 2 failed, 1 skipped in 0.12s =====";
        assert_eq!(count_tests(pytest), Some(TestCounts { passed: 7, failed: 2, skipped: 1 }));
        assert_eq!(count_tests("12 passed, 0 failed"), Some(TestCounts { passed: 12, failed: 0, skipped: 0 }));
        assert_eq!(count_tests("building...\ndone\n"), None);
    }
}
