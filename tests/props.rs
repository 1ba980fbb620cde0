//! Property tests for the path joiner and the shell quoting that every guest command
//! (search, download-folder, clean, list-dirs) is built with: no input escapes the
//! destination or the quotes. Quoted commands are run by the real /bin/sh (dash) and bash.
use proptest::prelude::*;
use std::process::Command;
use vm_service::guest::files::{archive_command, ArchiveFormat};
use vm_service::guest::search::{command as grep_command, SearchSpec};
use vm_service::util::{join_under, normalize_abs, shell_quote};

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
        let script = format!("printf '%s' {}; printf END", shell_quote(&s));
        for shell in ["/bin/sh", "bash"] {
            prop_assert_eq!(run(shell, &script), format!("{s}END").into_bytes());
        }
    }

    #[test]
    fn search_tokens_arrive_as_single_arguments(pattern in hostile(), root in hostile(), glob in hostile(), dir in hostile()) {
        let spec = SearchSpec {
            pattern: pattern.clone(), root: root.clone(), case_insensitive: false,
            include_globs: vec![glob.clone()], exclude_dirs: vec![dir.clone()],
            max_results_total: None, timeout: std::time::Duration::from_secs(1),
        };
        let cmd = grep_command(&spec);
        // Swap grep for printf to see the argument vector the shell built.
        let argv_cmd = format!("printf '%s\\0' {}", cmd.strip_prefix("grep ").unwrap());
        let out = run("/bin/sh", &argv_cmd);
        let args: Vec<String> = out.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let mut want = vec!["-RInI".to_string()];
        if !dir.trim().is_empty() { want.push(format!("--exclude-dir={dir}")); }
        let g = glob.trim();
        if !g.is_empty() && g != "*" { want.push(format!("--include={g}")); }
        want.extend(["-e".to_string(), pattern, "--".to_string(), root, String::new()]);
        prop_assert_eq!(args, want);
    }

    #[test]
    fn archives_of_any_folder_name_are_made_of_that_folder(name in "[^\\x00/]{1,30}") {
        prop_assume!(name != "." && name != "..");
        let parent = std::env::temp_dir().join(format!("vmsvc-prop-{}", std::process::id()));
        let dir = parent.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("inside.txt"), b"x").unwrap();
        let cmd = archive_command(&dir.to_string_lossy(), ArchiveFormat::TarGz);
        let listing = run("/bin/sh", &format!("{cmd} | tar -tzf -"));
        let listing = String::from_utf8_lossy(&listing);
        prop_assert!(listing.lines().any(|l| l == "./inside.txt"), "{}", listing);
        let _ = std::fs::remove_dir_all(&parent);
    }
}
