//! The only place guest shell text is made. A [`Script`] is a static template whose `@@`
//! holes are filled with [`Word`]s — each one quoted, so data is always one literal word —
//! or, for execute-sh alone, the user's command taken as written ([`Script::user`]).
//! A path operand that begins with `-` is `./`-prefixed, so no command reads it as an option.
//! Everything that runs a command in the guest takes a `Script`, and only this module can
//! make one, so no other code can hand the guest a string built with `format!`.

/// Writes the shell's pid into the file named by the hole (`$__vmsvc_pid` keeps the name).
macro_rules! pidfile_preamble {
    () => {
        "__vmsvc_pid=@@; echo $$ > \"$__vmsvc_pid\""
    };
}
/// A shell function `kd PID`: stops the process, then its children depth-first (from
/// /proc/PID/task/*/children), then kills it, so nothing escapes by forking or by being
/// re-parented.
macro_rules! kill_tree_fn {
    () => {
        "kd() { kill -STOP \"$1\" 2>/dev/null; for c in $(cat /proc/\"$1\"/task/*/children 2>/dev/null); do kd \"$c\"; done; kill -KILL \"$1\" 2>/dev/null; }"
    };
}

/// One shell word, quoted: whatever it holds, the shell sees exactly one literal word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word(String);

/// Quotes one word for a POSIX shell.
fn quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Word {
    /// A value: an option's value, or an operand after `--`.
    pub fn arg(s: &str) -> Word {
        Word(quote(s))
    }

    /// A path operand: `./`-prefixed when it begins with `-` (for commands such as `find`
    /// that take no `--`), then quoted.
    pub fn path(p: &str) -> Word {
        if p.starts_with('-') {
            Word(quote(&format!("./{p}")))
        } else {
            Word(quote(p))
        }
    }

    /// `flag` and its value as one word, e.g. `--exclude-dir=<value>`.
    pub fn opt(flag: &'static str, value: &str) -> Word {
        Word(quote(&format!("{flag}{value}")))
    }

    pub fn num(n: u64) -> Word {
        Word(n.to_string())
    }

    /// An environment variable name, checked (a name cannot be quoted for `export`).
    pub fn var(name: &str) -> Result<Word, String> {
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            Ok(Word(name.to_string()))
        } else {
            Err(format!("{name:?} is not a valid variable name (letters, digits, _; not starting with a digit)"))
        }
    }
}

/// Shell text for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script(String);

const HOLE: &str = "@@";

impl Script {
    /// `template` with each `@@` replaced by the next word. The template is static text
    /// written in this crate; a count mismatch is a bug caught by the unit tests.
    pub fn new(template: &'static str, words: &[Word]) -> Script {
        let mut out = String::with_capacity(template.len() + words.iter().map(|w| w.0.len()).sum::<usize>());
        let mut words = words.iter();
        let mut parts = template.split(HOLE);
        if let Some(first) = parts.next() {
            out.push_str(first);
        }
        for part in parts {
            debug_assert!(words.len() > 0, "template {template:?} has more holes than words");
            out.push_str(words.next().map(|w| w.0.as_str()).unwrap_or("''"));
            out.push_str(part);
        }
        debug_assert!(words.len() == 0, "template {template:?} has fewer holes than words");
        Script(out)
    }

    /// The user's own command (execute-sh), as the user wrote it: the one raw form.
    pub fn user(command: &str) -> Script {
        Script(command.to_string())
    }

    /// `self`, then `next` on the following line.
    pub fn then(mut self, next: Script) -> Script {
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        self.0.push_str(&next.0);
        self
    }

    /// Runs `self` in a subshell of a shell that records its pid in `pidfile` (the session
    /// and process-group leader, so a kill of that pid's tree ends everything the script
    /// started) and removes the file when it exits. The subshell keeps an `exec` in the
    /// script from skipping the clean-up.
    pub fn with_pidfile(self, pidfile: &Pidfile) -> Script {
        let mut s = Script::new(concat!(pidfile_preamble!(), "; trap 'rm -f -- \"$__vmsvc_pid\"' EXIT\n("), &[Word::arg(&pidfile.0)]);
        s.0.push('\n');
        s.0.push_str(&self.0);
        s.0.push_str("\n)");
        s
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains_nul(&self) -> bool {
        self.0.contains('\0')
    }
}

/// A file in the guest's /tmp that holds a shell's pid while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pidfile(String);

impl Pidfile {
    pub fn new(kind: &'static str) -> Pidfile {
        Pidfile(format!("/tmp/.vmsvc-{kind}-{}.pid", uuid::Uuid::new_v4().simple()))
    }

    pub fn path(&self) -> &str {
        &self.0
    }
}

/// Kills `pid` and everything below it.
pub fn kill_tree(pid: u32) -> Script {
    Script::new(concat!(kill_tree_fn!(), "; kd @@"), &[Word::num(pid.into())])
}

/// Kills the tree of the pid recorded in `pidfile` (and its process group), then removes the file.
pub fn kill_recorded(pidfile: &Pidfile) -> Script {
    Script::new(
        concat!(kill_tree_fn!(), "; m=@@; p=$(cat -- \"$m\" 2>/dev/null) && [ -n \"$p\" ] && { kd \"$p\"; kill -KILL -\"$p\" 2>/dev/null; }; rm -f -- \"$m\""),
        &[Word::arg(pidfile.path())],
    )
}

/// Removes a pidfile whose shell has exited on its own.
pub fn forget(pidfile: &Pidfile) -> Script {
    Script::new("rm -f -- @@", &[Word::arg(pidfile.path())])
}

/// A login shell (the user's own) on a PTY, its pid recorded first; `exec` keeps that pid.
pub fn login_shell(pidfile: &Pidfile) -> Script {
    Script::new(concat!(pidfile_preamble!(), "; exec \"${SHELL:-/bin/sh}\" -l"), &[Word::arg(pidfile.path())])
}

/// The guest's VM id (the identity check when the SSH server sends no banner).
pub fn read_vm_id() -> Script {
    Script::new("cat /etc/vm-id 2>/dev/null || hostname", &[])
}

/// `cd` into `dir` for the rest of the script; a missing directory ends it as `cd` would.
pub fn cd(dir: &str) -> Script {
    Script::new("cd -- @@ || exit 1", &[Word::arg(dir)])
}

/// `export NAME=value` for the rest of the script.
pub fn export(name: &str, value: &str) -> Result<Script, String> {
    Ok(Script::new("export @@=@@", &[Word::var(name)?, Word::arg(value)]))
}

/// One `find` listing of `path` to `depth`, `path||type` per line, at most `max` lines.
/// A `find` without `-printf` (busybox) gets the type from `test` instead.
pub fn list_dir(path: &str, depth: u32, max: usize) -> Script {
    Script::new(
        concat!(
            "p=@@; d=@@; if find / -maxdepth 0 -printf '' 2>/dev/null; then find \"$p\" -maxdepth \"$d\" -printf '%p||%y\\n' 2>/dev/null; ",
            "else find \"$p\" -maxdepth \"$d\" 2>/dev/null | while IFS= read -r f; do ",
            "if [ -L \"$f\" ]; then t=l; elif [ -d \"$f\" ]; then t=d; elif [ -f \"$f\" ]; then t=f; else t=o; fi; printf '%s||%s\\n' \"$f\" \"$t\"; done; fi | head -n @@"
        ),
        &[Word::path(path), Word::num(depth.into()), Word::num(max as u64)],
    )
}

/// `true`: the exit status of a script that must end well after a pipeline.
pub fn ok() -> Script {
    Script::new("true", &[])
}

/// Creates `dir` and empties it (hidden files too), keeping it.
pub fn empty_dir(dir: &str) -> Script {
    Script::new("mkdir -p -- @@ && find @@ -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +", &[Word::arg(dir), Word::path(dir)])
}

/// Exits 3 when `root` is missing, 6 when it is not a directory, 4 without `zip`, 5 when
/// it is empty (zip refuses an empty tree), 0 otherwise.
pub fn archive_probe(root: &str) -> Script {
    Script::new(
        "r=@@; [ -e \"$r\" ] || exit 3; [ -d \"$r\" ] || exit 6; command -v zip >/dev/null 2>&1 || exit 4; [ -n \"$(ls -A -- \"$r\")\" ] || exit 5; exit 0",
        &[Word::arg(root)],
    )
}

pub fn zip_of(root: &str) -> Script {
    Script::new("cd -- @@ && exec zip -q -r -y - .", &[Word::arg(root)])
}

pub fn tar_gz_of(root: &str) -> Script {
    Script::new("exec tar -C @@ -czf - .", &[Word::path(root)])
}

/// The command runner's loop (bash; the protocol is in runner.rs). Guest images with an
/// agent also hold this file (guest/agent/vm-runner).
pub const RUNNER_LOOP: &str = include_str!("../../guest/agent/vm-runner");

/// A long-lived command runner started over SSH: [`RUNNER_LOOP`] under bash. Exits 97
/// without bash.
pub fn runner() -> Script {
    Script::new("command -v bash >/dev/null 2>&1 || exit 97\nexec bash -c @@", &[Word::arg(RUNNER_LOOP)])
}

/// Writes the guest's dirty pages to its disk.
pub fn sync() -> Script {
    Script::new("sync", &[])
}

/// Waits for the guest's first-boot work to end (the tiny guest's vm-grow, ≤ 5 min;
/// cloud-init's last stages run on after sshd is up; a snapshot taken then would make every
/// copy redo them), then syncs.
pub fn settle() -> Script {
    Script::new(
        "i=0; while [ -e /run/vm-growing ] && [ \"$i\" -lt 300 ]; do sleep 1; i=$((i+1)); done
if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1 || true; fi; sync",
        &[],
    )
}

/// Steps the guest's clock to `epoch` (a resumed guest's clock is the moment it was saved).
pub fn set_clock(epoch: u64) -> Script {
    Script::new("date -s @@ > /dev/null", &[Word::arg(&format!("@{epoch}"))])
}

/// Gives a restored guest its own identity: the image's refresh command (a path from its
/// manifest) with the new VM id, the host's time, host randomness (hex) and the new SSH
/// host key (a dropbear key file, base64). `on_template_ram`: the guest also stops
/// reporting free pages (on RAM mapped from a template QEMU cannot drop them; each report
/// would only log an error).
pub fn refresh(command: &str, vm_id: &str, epoch: u64, seed_hex: &str, host_key_b64: &str, on_template_ram: bool) -> Script {
    // 11: above the largest page order, so no free block is ever reported.
    let template = match on_template_ram {
        true => "@@ @@ @@ @@ @@ || exit\n{ echo 11 > /sys/module/page_reporting/parameters/page_reporting_order; } 2>/dev/null; true",
        false => "@@ @@ @@ @@ @@",
    };
    Script::new(template, &[Word::arg(command), Word::arg(vm_id), Word::num(epoch), Word::arg(seed_hex), Word::arg(host_key_b64)])
}

/// Where background jobs keep their files in the guest: `<job>.sh` (the command), `.log`
/// (stdout and stderr), `.pid` (the session leader), `.rc` (the exit code, or `sig:NAME`).
pub const JOBS_DIR: &str = "/var/tmp/vmsvc-jobs";

/// Starts job `job` (its script already written) in a session of its own, in `cwd` (None:
/// /app when it exists, as the original, else the home directory): output to its log, stdin
/// from /dev/null, its exit code written when it ends. Run by bash, or sh on guests without
/// it. Prints the session leader's pid (a `kill` of its group ends the job); exits 3 when
/// `cwd` is missing.
pub fn job_start(job: &str, cwd: Option<&str>) -> Script {
    Script::new(
        r#"d=/var/tmp/vmsvc-jobs; j=@@; c=@@
if [ -n "$c" ]; then cd -- "$c" 2>/dev/null || exit 3; elif [ -d /app ]; then cd /app; else cd; fi
sh=$(command -v bash || echo sh)
setsid "$sh" -c '"$0" "$1"; rc=$?; echo "$rc" > "$2.tmp"; mv -f "$2.tmp" "$2"' "$sh" "$d/$j.sh" "$d/$j.rc" < /dev/null > "$d/$j.log" 2>&1 &
echo $! > "$d/$j.pid"; echo $!"#,
        &[Word::arg(job), Word::arg(cwd.unwrap_or(""))],
    )
}

/// A job's state: waits up to `wait_ticks` × 0.2 s for it to end, then prints `STATUS
/// running|exited|unknown PID`, `RC <rc>`, `SIZE <log bytes>`, `---LOG---` and the log: the
/// bytes after `since` when `since` ≥ 0, else its last `lines` lines.
pub fn job_status(job: &str, wait_ticks: u64, since: i64, lines: u64) -> Script {
    Script::new(
        r#"d=/var/tmp/vmsvc-jobs; j=@@; w=@@; since=@@; lines=@@
pid=$(cat "$d/$j.pid" 2>/dev/null)
if [ -n "$pid" ]; then i=0; while [ "$i" -lt "$w" ] && [ ! -e "$d/$j.rc" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.2; i=$((i+1)); done; fi
if [ -z "$pid" ]; then echo "STATUS unknown 0"; elif [ -e "$d/$j.rc" ] || ! kill -0 "$pid" 2>/dev/null; then echo "STATUS exited $pid"; else echo "STATUS running $pid"; fi
echo "RC $(cat "$d/$j.rc" 2>/dev/null)"
echo "SIZE $(wc -c < "$d/$j.log" 2>/dev/null || echo 0)"
echo "---LOG---"
if [ "$since" -ge 0 ]; then tail -c +$((since+1)) "$d/$j.log" 2>/dev/null; else tail -n "$lines" "$d/$j.log" 2>/dev/null; fi
true"#,
        &[Word::arg(job), Word::num(wait_ticks), Word::arg(&since.to_string()), Word::num(lines)],
    )
}

/// Stops a job: TERM to its process group, KILL after `grace_ticks` × 0.2 s to whatever of
/// the group is left (a leader gone does not mean its group is); the signal is
/// recorded as its end. Prints STOPPED, or NOJOB when there is no such job.
pub fn job_stop(job: &str, grace_ticks: u64) -> Script {
    Script::new(
        r#"d=/var/tmp/vmsvc-jobs; j=@@; g=@@
pid=$(cat "$d/$j.pid" 2>/dev/null)
[ -n "$pid" ] || { echo NOJOB; exit 0; }
sig=TERM
kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
alive() { kill -0 "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; }
i=0; while [ "$i" -lt "$g" ] && alive; do sleep 0.2; i=$((i+1)); done
if alive; then sig=KILL; kill -KILL "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; fi
[ -e "$d/$j.rc" ] || echo "sig:$sig" > "$d/$j.rc"
echo STOPPED"#,
        &[Word::arg(job), Word::num(grace_ticks)],
    )
}

/// Every job, one line each: `JOB id pid running|exited rc|- started ended|- first command line`.
pub fn job_list() -> Script {
    Script::new(
        r#"d=/var/tmp/vmsvc-jobs
for p in "$d"/*.pid; do
  [ -e "$p" ] || continue
  j=${p##*/}; j=${j%.pid}; pid=$(cat "$p"); rc=$(cat "$d/$j.rc" 2>/dev/null)
  if [ -n "$rc" ] || ! kill -0 "$pid" 2>/dev/null; then st=exited; else st=running; fi
  ended=$(stat -c %Y "$d/$j.rc" 2>/dev/null || echo -)
  echo "JOB $j $pid $st ${rc:--} $(stat -c %Y "$p") $ended $(sed -n 2p "$d/$j.sh" 2>/dev/null | cut -c1-200)"
done
true"#,
        &[],
    )
}

/// Follows a job's log from byte `since` until the job has ended and its log is drained.
pub fn job_follow(job: &str, since: u64) -> Script {
    Script::new(
        r#"d=/var/tmp/vmsvc-jobs; j=@@; off=@@
pid=$(cat "$d/$j.pid" 2>/dev/null)
[ -n "$pid" ] || exit 4
while :; do
  n=$(wc -c < "$d/$j.log" 2>/dev/null || echo 0)
  if [ "$n" -gt "$off" ]; then tail -c +$((off+1)) "$d/$j.log" | head -c $((n-off)); off=$n; continue; fi
  if [ -e "$d/$j.rc" ] || ! kill -0 "$pid" 2>/dev/null; then
    [ "$(wc -c < "$d/$j.log" 2>/dev/null || echo 0)" -gt "$off" ] && continue
    break
  fi
  sleep 0.2
done"#,
        &[Word::arg(job), Word::num(since)],
    )
}

/// What listens on TCP in the guest, for guests with or without `ss`: the LISTEN rows of
/// /proc/net/tcp{,6} (`T4`/`T6` local-address inode), every process's socket fds
/// (`ls -l /proc/*/fd`) and process names (`C /proc/PID/comm:NAME`).
pub fn listening() -> Script {
    Script::new(
        r#"for v in 4 6; do f=/proc/net/tcp; [ $v = 6 ] && f=/proc/net/tcp6; [ -r $f ] && awk -v v=$v 'NR>1 && $4=="0A" {print "T" v, $2, $10}' $f; done
echo ---FD---
ls -l /proc/[0-9]*/fd/ 2>/dev/null | grep -E '^/proc|socket:'
echo ---COMM---
grep -H . /proc/[0-9]*/comm 2>/dev/null | sed 's/^/C /'
true"#,
        &[],
    )
}

/// What a search looks for; every user value becomes one quoted word.
pub struct Grep<'a> {
    pub pattern: &'a str,
    pub root: &'a str,
    pub case_insensitive: bool,
    pub include_globs: &'a [String],
    pub exclude_dirs: &'a [String],
}

/// ` \( -name A -o -name B … \)`: a `find` test true for any of `names` (each one quoted word).
fn any_name(names: &[&str]) -> String {
    let tests: Vec<String> = names.iter().map(|n| format!("-name {}", Word::arg(n).0)).collect();
    format!(r" \( {} \)", tests.join(" -o "))
}

/// `find` picks the files and `grep` reads them: only regular files are read (a recursive
/// busybox grep opens FIFOs, devices and /proc/kmsg, and blocks there until the deadline),
/// and a search from `/` skips /proc, /sys and /dev. Directories named in `exclude_dirs`
/// are pruned and `include_globs` match file names, as grep's --exclude-dir/--include.
pub fn grep(g: &Grep) -> Script {
    let mut s = Script::new("find @@", &[Word::path(g.root)]);
    if g.root.trim_end_matches('/').is_empty() && g.root.starts_with('/') {
        s.0.push_str(r" \( -path /proc -o -path /sys -o -path /dev \) -prune -o");
    }
    let dirs: Vec<&str> = g.exclude_dirs.iter().map(String::as_str).filter(|d| !d.trim().is_empty()).collect();
    if !dirs.is_empty() {
        s.0.push_str(" -type d");
        s.0.push_str(&any_name(&dirs));
        s.0.push_str(" -prune -o");
    }
    s.0.push_str(" -type f");
    let globs: Vec<&str> = g.include_globs.iter().map(|g| g.trim()).filter(|g| !g.is_empty() && *g != "*").collect();
    if !globs.is_empty() {
        s.0.push_str(&any_name(&globs));
    }
    s.0.push_str(" -exec grep -HInI");
    if g.case_insensitive {
        s.0.push_str(" -i");
    }
    s.0.push_str(&Script::new(" -e @@ -- {} +", &[Word::arg(g.pattern)]).0);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_single_literal_words() {
        assert_eq!(Word::arg("abc").0, "abc");
        assert_eq!(Word::arg("").0, "''");
        assert_eq!(Word::arg("a b'c;d").0, r"'a b'\''c;d'");
        assert_eq!(Word::path("-delete").0, "./-delete");
        assert_eq!(Word::path("/a b").0, "'/a b'");
        assert_eq!(Word::opt("--include=", "*.py").0, "'--include=*.py'");
        assert!(Word::var("A_1").is_ok());
        for bad in ["1A", "A-B", "", "A;rm", "A B"] {
            assert!(Word::var(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn holes_take_words_in_order() {
        assert_eq!(Script::new("a @@ b @@", &[Word::arg("x y"), Word::num(3)]).as_str(), "a 'x y' b 3");
        assert!(list_dir("-delete", 2, 10).as_str().starts_with("p=./-delete; d=2; if find"));
        assert_eq!(set_clock(1700000000).as_str(), "date -s @1700000000 > /dev/null");
        assert_eq!(refresh("/sbin/vm-refresh", "i d", 7, "ab", "a2V5", false).as_str(), "/sbin/vm-refresh 'i d' 7 ab a2V5");
        // On template RAM: the refresh's own failure is the answer; reporting off after it.
        let r = refresh("/sbin/vm-refresh", "x", 7, "ab", "a2V5", true);
        assert!(r.as_str().starts_with("/sbin/vm-refresh x 7 ab a2V5 || exit\n{ echo 11 > /sys/module/page_reporting/"), "{r:?}");
        assert_eq!(empty_dir("/a b").as_str(), "mkdir -p -- '/a b' && find '/a b' -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +");
    }

    #[test]
    fn every_template_has_as_many_holes_as_words() {
        // Each builder once: a hole/word mismatch trips the debug assertion.
        let p = Pidfile::new("t");
        for s in [
            kill_tree(12),
            kill_recorded(&p),
            forget(&p),
            login_shell(&p),
            read_vm_id(),
            cd("/x"),
            export("A", "b").unwrap(),
            list_dir("/", 1, 5),
            ok(),
            empty_dir("/x"),
            archive_probe("/x"),
            zip_of("/x"),
            tar_gz_of("/x"),
            Script::user("echo hi").with_pidfile(&p),
            runner(),
            set_clock(1),
            refresh("/sbin/vm-refresh", "x", 1, "ab", "a2V5", true),
            job_start("abc", Some("/app")),
            job_status("abc", 5, -1, 80),
            job_stop("abc", 25),
            job_list(),
            job_follow("abc", 0),
            listening(),
        ] {
            assert!(!s.as_str().contains(HOLE), "{s:?}");
        }
    }

    #[test]
    fn the_pidfile_wrapper_keeps_the_command_on_its_own_lines_in_a_subshell() {
        let p = Pidfile("/tmp/m x".into());
        let w = Script::user("echo 'x'\nexit 3").with_pidfile(&p);
        assert_eq!(w.as_str(), "__vmsvc_pid='/tmp/m x'; echo $$ > \"$__vmsvc_pid\"; trap 'rm -f -- \"$__vmsvc_pid\"' EXIT\n(\necho 'x'\nexit 3\n)");
    }

    #[test]
    fn grep_quotes_every_user_value() {
        let s = grep(&Grep {
            pattern: "it's; rm -rf /",
            root: "/app dir",
            case_insensitive: true,
            include_globs: &["".into(), "*".into(), "*.py".into(), "*.rs".into()],
            exclude_dirs: &[".git".into(), "node modules".into()],
        });
        assert_eq!(
            s.as_str(),
            r"find '/app dir' -type d \( -name .git -o -name 'node modules' \) -prune -o -type f \( -name '*.py' -o -name '*.rs' \) -exec grep -HInI -i -e 'it'\''s; rm -rf /' -- {} +"
        );
        let all = grep(&Grep { pattern: "", root: "/", case_insensitive: false, include_globs: &[], exclude_dirs: &[] });
        assert_eq!(all.as_str(), r"find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -type f -exec grep -HInI -e '' -- {} +");
    }
}
