//! Progress on stderr: one line redrawn in place on a terminal, plain lines otherwise
//! (a pipe or a log gets no carriage returns or escape codes).
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    tty: bool,
    started: Instant,
    last_draw: Option<Instant>,
    /// Bytes mode: the total, when known, and the last fraction printed as a plain line.
    total: Option<u64>,
    plain_step: u64,
    label: String,
}

impl Progress {
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        Progress { tty: std::io::stderr().is_terminal(), started: Instant::now(), last_draw: None, total, plain_step: 0, label: label.to_string() }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// A named step of `of` (e.g. a boot's): a redrawn bar on a terminal, a line otherwise.
    pub fn step(&mut self, done: usize, of: usize, what: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        if self.tty {
            let width = 20;
            let filled = (done * width / of.max(1)).min(width);
            let bar = format!("{}{}", "#".repeat(filled), "-".repeat(width - filled));
            eprint!("\r\x1b[2K{} [{bar}] {done}/{of} {what} ({secs:.1} s)", self.label);
        } else {
            eprintln!("{} {secs:6.2} s  {what}", self.label);
        }
        let _ = std::io::stderr().flush();
    }

    /// Bytes moved so far: redrawn at most 10 times a second on a terminal; every 25 %
    /// (or every 16 MiB when the total is unknown) as a line otherwise.
    pub fn bytes(&mut self, done: u64) {
        if self.tty {
            if self.last_draw.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
                return;
            }
            self.last_draw = Some(Instant::now());
            eprint!("\r\x1b[2K{} {}", self.label, self.describe(done));
        } else {
            let step = match self.total {
                Some(t) if t > 0 => done * 4 / t,
                _ => done >> 24,
            };
            if step <= self.plain_step {
                return;
            }
            self.plain_step = step;
            eprintln!("{} {}", self.label, self.describe(done));
        }
        let _ = std::io::stderr().flush();
    }

    fn describe(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs / 1048576.0;
        match self.total {
            Some(t) if t > 0 => format!("{} / {} ({}%, {rate:.1} MiB/s)", human(done), human(t), done * 100 / t),
            _ => format!("{} ({rate:.1} MiB/s)", human(done)),
        }
    }

    /// Ends the progress line (a terminal's is cleared) and prints `msg`, if any.
    pub fn finish(&mut self, msg: &str) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        if !msg.is_empty() {
            eprintln!("{} {msg}", self.label);
        }
        let _ = std::io::stderr().flush();
    }
}

pub fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(super::human(512), "512 B");
        assert_eq!(super::human(20 * 1048576), "20.0 MiB");
        assert_eq!(super::human(1536), "1.5 KiB");
    }
}
