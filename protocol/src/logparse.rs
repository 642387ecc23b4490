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

/// Warning lines kept in a result, at most, and the characters kept of each.
pub const MAX_WARNING_LINES: usize = 50;
pub const MAX_WARNING_LINE_CHARS: usize = 200;

/// A step's warning lines under its recipe's rule (`None`: the default
/// pattern of `count_warnings`): how many, and the first `keep` of them.
/// The rule's expressions were checked when the recipe was read; one that
/// no longer compiles counts as the default.
pub fn find_warnings(log: &str, rule: Option<&crate::recipe::WarningRule>, keep: usize) -> (u64, Vec<String>) {
    let compiled = rule.and_then(|r| r.compile().ok());
    let is_warning = |l: &str| match &compiled {
        Some((pattern, suppress)) => {
            let hit = match pattern {
                Some(p) => p.is_match(l),
                None => count_warnings(l) > 0,
            };
            hit && !suppress.iter().any(|s| s.is_match(l))
        }
        None => count_warnings(l) > 0,
    };
    let mut n = 0;
    let mut kept = Vec::new();
    for l in log.lines().filter(|l| is_warning(l)) {
        n += 1;
        if kept.len() < keep {
            kept.push(l.chars().take(MAX_WARNING_LINE_CHARS).collect());
        }
    }
    (n, kept)
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

    #[test]
    fn warnings_follow_the_steps_pattern_and_suppressions() {
        use crate::recipe::WarningRule;
        let log = "warning: unused x\nwarning: deprecated y (vendor/z.rs)\nLINT W001 style\nok\n";
        assert_eq!(
            find_warnings(log, None, 50),
            (2, vec!["warning: unused x".into(), "warning: deprecated y (vendor/z.rs)".into()])
        );
        let suppress = WarningRule { pattern: None, suppress: vec!["vendor/".into()] };
        assert_eq!(find_warnings(log, Some(&suppress), 50), (1, vec!["warning: unused x".into()]));
        let lint = WarningRule { pattern: Some(r"^LINT W\d+".into()), suppress: vec![] };
        assert_eq!(find_warnings(log, Some(&lint), 50).0, 1);
        // The count is every match; the lines kept are the first few, cut.
        let many = format!("warning: {}\n", "x".repeat(500)).repeat(70);
        let (n, kept) = find_warnings(&many, None, MAX_WARNING_LINES);
        assert_eq!((n, kept.len()), (70, MAX_WARNING_LINES));
        assert_eq!(kept[0].chars().count(), MAX_WARNING_LINE_CHARS);
    }
}
