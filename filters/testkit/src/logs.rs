//! Captures the lines written through the `log` crate, per thread, so a test can assert the
//! lines an operator relies on. Per thread: `cargo test` runs tests on threads of one process,
//! nextest in processes of their own, and either way a test sees only its own lines.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::cell::{Cell, RefCell};
use std::sync::Once;

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Its level.
    pub level: Level,
    /// Its text, as Envoy would show it.
    pub text: String,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.level, self.text)
    }
}

thread_local! {
    /// The level this thread's capture keeps (`Off`: not capturing).
    static LEVEL: Cell<LevelFilter> = const { Cell::new(LevelFilter::Off) };
    static LINES: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

struct Capture;

impl Log for Capture {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= LEVEL.with(Cell::get)
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = Line {
                level: record.level(),
                text: record.args().to_string(),
            };
            LINES.with(|lines| lines.borrow_mut().push(line));
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;
static INSTALL: Once = Once::new();

/// Runs `f`, keeping the lines it logs at `level` or above (as Envoy would at that level), and
/// returns them with `f`'s result.
pub fn capture<R>(level: LevelFilter, f: impl FnOnce() -> R) -> (R, Vec<Line>) {
    INSTALL.call_once(|| {
        log::set_logger(&CAPTURE).expect("no other logger in tests");
        // Each thread filters for itself (above).
        log::set_max_level(LevelFilter::Trace);
    });
    let before = LEVEL.with(|l| l.replace(level));
    let outer = LINES.with(|lines| std::mem::take(&mut *lines.borrow_mut()));
    let result = f();
    let lines = LINES.with(|lines| std::mem::replace(&mut *lines.borrow_mut(), outer));
    LEVEL.with(|l| l.set(before));
    (result, lines)
}

/// The texts of `lines`, for comparing with literals.
pub fn texts(lines: &[Line]) -> Vec<&str> {
    lines.iter().map(|l| l.text.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_this_threads_lines_at_the_level_asked() {
        let ((), lines) = capture(LevelFilter::Info, || {
            log::debug!("hidden");
            log::info!("shown {}", 1);
            log::warn!("also shown");
        });
        assert_eq!(texts(&lines), ["shown 1", "also shown"]);
        assert_eq!(lines[1].level, Level::Warn);
        let other =
            std::thread::spawn(|| capture(LevelFilter::Trace, || log::info!("elsewhere")).1)
                .join()
                .unwrap();
        assert_eq!(texts(&other), ["elsewhere"]);
    }
}
