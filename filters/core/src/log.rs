//! Lines for Envoy's log, written by policy code through the host (which adds the filter's
//! name). Policy code logs what an operator must be able to see, such as a request a shadow
//! rate limit would have refused; never a credential.

use std::cell::RefCell;

/// Where policy code writes log lines.
pub trait Log {
    /// A line at `info` level.
    fn info(&self, message: &str);
}

/// Drops every line.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLog;

impl Log for NoLog {
    fn info(&self, _message: &str) {}
}

/// Keeps every line, for tests.
#[derive(Debug, Default)]
pub struct RecordedLog {
    lines: RefCell<Vec<String>>,
}

impl RecordedLog {
    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.borrow().clone()
    }
}

impl Log for RecordedLog {
    fn info(&self, message: &str) {
        self.lines.borrow_mut().push(message.to_owned());
    }
}
