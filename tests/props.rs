//! Property tests for the path joiner and the guest command builder (guest::cmd) that
//! every guest command is made with: no input escapes the destination or its quotes, and
//! no path operand is read as an option. Commands are run by the real /bin/sh (dash) and bash.
use proptest::prelude::*;
use std::process::Command;
use vm_service::guest::cmd::{self, Grep, Script, Word};
use vm_service::util::{join_under, normalize_abs};

/// Path-ish strings: segments of dots, slashes, quotes, spaces, `$`, `;`, unicode.
fn pathish() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![Just("..".to_string()), Just(".".to_string()), Just("".to_string()), "[a-z'\" ;$`*~é]{1,6}"], 0..8)
        .prop_map(|v| v.join("/"))
}

/// Anything a client could send, NUL aside.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof!["[^\\x00]{0,40}", "[ '\"`$;&|<>(){}\\\\\n\t*?!#~=%a-z]{0,30}"]
}

fn run(shell: &str, script: &str) -> Vec<u8> {
    let out = Command::new(shell).arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{shell} failed on {script:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn joined_paths_stay_under_dest(dest in pathish(), rel in pathish()) {
        let dest = format!("/{dest}");
        let base = normalize_abs(&dest);
        if let Ok(p) = join_under(&dest, &rel) {
            prop_assert_eq!(&normalize_abs(&p), &p, "not normalised");
            prop_assert!(base == "/" || p == base || p.starts_with(&format!("{base}/")), "{} escapes {}", p, base);
            prop_assert!(!p.split('/').any(|s| s == ".." || s == "."));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn quoted_strings_reach_the_command_verbatim(s in hostile()) {
        let script = Script::new("printf '%s' @@; printf END", &[Word::arg(&s)]);
        for shell in ["/bin/sh", "bash"] {
            prop_assert_eq!(run(shell, script.as_str()), format!("{s}END").into_bytes());
        }
    }

    #[test]
    fn path_operands_are_never_options(p in hostile()) {
        // `find` takes no `--`: a path beginning with `-` must still be a path.
        let script = Script::new("printf '%s\\0' @@", &[Word::path(&p)]);
        let out = run("/bin/sh", script.as_str());
        let arg = String::from_utf8_lossy(out.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
        prop_assert!(!arg.starts_with('-'), "{:?} reaches the command as {:?}", p, arg);
        prop_assert!(arg == p || arg == format!("./{p}"), "{:?} became {:?}", p, arg);
    }

    #[test]
    fn search_tokens_arrive_as_single_arguments(pattern in hostile(), root in hostile(), glob in hostile(), dir in hostile()) {
        let (globs, dirs) = (vec![glob.clone()], vec![dir.clone()]);
        let grep = cmd::grep(&Grep { pattern: &pattern, root: &root, case_insensitive: false, include_globs: &globs, exclude_dirs: &dirs });
        // Swap find for printf to see the argument vector the shell built.
        let argv_cmd = format!("printf '%s\\0' {}", grep.as_str().strip_prefix("find ").unwrap());
        let out = run("/bin/sh", &argv_cmd);
        let args: Vec<String> = out.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut want = vec![if root.starts_with('-') { format!("./{root}") } else { root.clone() }];
        if root.starts_with('/') && root.trim_end_matches('/').is_empty() {
            want.extend(words(&["(", "-path", "/proc", "-o", "-path", "/sys", "-o", "-path", "/dev", ")", "-prune", "-o"]));
        }
        if !dir.trim().is_empty() {
            want.extend(words(&["-type", "d", "(", "-name", &dir, ")", "-prune", "-o"]));
        }
        want.extend(words(&["-type", "f"]));
        let g = glob.trim();
        if !g.is_empty() && g != "*" { want.extend(words(&["(", "-name", g, ")"])); }
        want.extend(words(&["-exec", "grep", "-HInI", "-e", &pattern, "--", "{}", "+", ""]));
        prop_assert_eq!(args, want);
    }

    #[test]
    fn archives_of_any_folder_name_are_made_of_that_folder(name in "[^\\x00/]{1,30}") {
        prop_assume!(name != "." && name != "..");
        let parent = std::env::temp_dir().join(format!("vmsvc-prop-{}", std::process::id()));
        let dir = parent.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("inside.txt"), b"x").unwrap();
        let tar = cmd::tar_gz_of(&dir.to_string_lossy());
        let listing = run("/bin/sh", &format!("{} | tar -tzf -", tar.as_str()));
        let listing = String::from_utf8_lossy(&listing);
        prop_assert!(listing.lines().any(|l| l == "./inside.txt"), "{}", listing);
        let _ = std::fs::remove_dir_all(&parent);
    }
}
