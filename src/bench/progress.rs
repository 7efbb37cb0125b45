//! Progress on stderr while a benchmark runs: a line rewritten in place on a
//! terminal, a line per step (start and end) elsewhere.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Reports which step runs and how far it is.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    terminal: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    step: String,
    last: Instant,
}

impl Progress {
    /// Progress on stderr; `enabled = false` prints nothing (for `--quiet`).
    pub fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            terminal: std::io::stderr().is_terminal(),
            state: Mutex::new(State {
                step: String::new(),
                last: Instant::now(),
            }),
        }
    }

    /// Starts a named step.
    pub fn step(&self, name: &str) {
        if !self.enabled {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.step = name.to_string();
        state.last = Instant::now();
        if self.terminal {
            eprint!("\r\x1b[2K{name} ...");
        } else {
            eprintln!("{name} ...");
        }
        let _ = std::io::stderr().flush();
    }

    /// `done` of `total` units of the current step; shown at most 5 times a second.
    pub fn tick(&self, done: u64, total: u64) {
        if !self.enabled || !self.terminal {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if done < total && state.last.elapsed() < Duration::from_millis(200) {
            return;
        }
        state.last = Instant::now();
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        eprint!("\r\x1b[2K{} {done}/{total} ({pct}%)", state.step);
        let _ = std::io::stderr().flush();
    }

    /// Ends the current step with a one-line summary.
    pub fn finish(&self, summary: &str) {
        if !self.enabled {
            return;
        }
        let Ok(state) = self.state.lock() else {
            return;
        };
        if self.terminal {
            eprintln!("\r\x1b[2K{}: {summary}", state.step);
        } else {
            eprintln!("{}: {summary}", state.step);
        }
    }
}
