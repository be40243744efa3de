//! The progress line `tail` keeps on a terminal's stderr during a replay: events printed so
//! far, the position against the head the server announced when the stream opened
//! (`Changefeed-Head`), the rate and the time left.

use std::io::Write;
use std::time::Duration;

use changefeed_core::Cursor;
use tokio::time::Instant;

/// How long a replay runs before the line appears (short replays stay quiet).
const SHOW_AFTER: Duration = Duration::from_millis(200);
/// The least time between two redraws.
pub(super) const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// Erases the terminal line the cursor is on and returns to its start.
const CLEAR: &str = "\r\x1b[2K";

/// The replay progress of one `tail` run.
pub(super) struct Progress {
    /// Draw at all (stderr is a terminal).
    enabled: bool,
    /// Replaying: between a connection and its `changefeed.ready`.
    replaying: bool,
    /// When this run started.
    started: Instant,
    /// The seq this run started from, and the head announced by the latest connection.
    first_seq: Option<u64>,
    head_seq: Option<u64>,
    /// The latest position.
    seq: Option<u64>,
    /// Events printed by this run.
    printed: u64,
    /// A line is on the screen.
    visible: bool,
    last_draw: Option<Instant>,
}

impl Progress {
    pub(super) fn new(enabled: bool) -> Progress {
        Progress {
            enabled,
            replaying: false,
            started: Instant::now(),
            first_seq: None,
            head_seq: None,
            seq: None,
            printed: 0,
            visible: false,
            last_draw: None,
        }
    }

    /// A stream response was accepted: it starts at `start` and the log's head was `head`.
    pub(super) fn connected(&mut self, start: Option<&str>, head: Option<&str>) {
        self.replaying = true;
        let seq_of = |text: Option<&str>| text.and_then(|t| Cursor::parse(t).ok()).map(|c| c.seq.0);
        if let Some(start) = seq_of(start) {
            self.first_seq.get_or_insert(start);
            self.seq = Some(self.seq.map_or(start, |seq| seq.max(start)));
        }
        self.head_seq = seq_of(head);
    }

    /// The position moved to `cursor` (an event was printed when `printed`).
    pub(super) fn advanced(&mut self, cursor: Option<&str>, printed: bool) {
        if printed {
            self.printed += 1;
        }
        if let Some(seq) = cursor.and_then(|t| Cursor::parse(t).ok()).map(|c| c.seq.0) {
            self.first_seq.get_or_insert(seq);
            self.seq = Some(seq);
        }
    }

    /// A replay is running on a terminal: the line wants redrawing now and then.
    pub(super) fn showing(&self) -> bool {
        self.enabled && self.replaying
    }

    /// Replay caught up (`changefeed.ready`), or the connection ended.
    pub(super) fn stop_replaying(&mut self) {
        self.replaying = false;
    }

    /// Removes the line from the screen (before other output reaches the terminal); whether
    /// it was there.
    pub(super) fn clear(&mut self, err: &mut impl Write) -> bool {
        if !self.visible {
            return false;
        }
        let _ = write!(err, "{CLEAR}");
        let _ = err.flush();
        self.visible = false;
        true
    }

    /// Puts a lifted line back at once.
    pub(super) fn redraw(&mut self, err: &mut impl Write) {
        if self.enabled && self.replaying {
            self.draw(err, Instant::now(), "replaying");
        }
    }

    /// Redraws the line if a replay is running long enough and the last draw is old enough.
    pub(super) fn tick(&mut self, err: &mut impl Write) {
        if !self.enabled || !self.replaying {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.started) < SHOW_AFTER {
            return;
        }
        if self
            .last_draw
            .is_some_and(|at| now.duration_since(at) < REDRAW_EVERY)
        {
            return;
        }
        self.draw(err, now, "replaying");
    }

    /// The final state of a `--once` run, left on the screen: what was printed and how fast.
    pub(super) fn finish(&mut self, err: &mut impl Write) {
        if !self.enabled {
            return;
        }
        self.draw(err, Instant::now(), "caught up");
        let _ = writeln!(err);
        let _ = err.flush();
        self.visible = false;
    }

    fn draw(&mut self, err: &mut impl Write, now: Instant, label: &str) {
        let _ = write!(err, "{CLEAR}changefeed tail: {}", self.render(now, label));
        let _ = err.flush();
        self.visible = true;
        self.last_draw = Some(now);
    }

    /// `replaying 12,345 events · seq 45,678 of 100,000 (45%) · 8,123 events/s · ~7s left`.
    fn render(&self, now: Instant, label: &str) -> String {
        let elapsed = now.duration_since(self.started).as_secs_f64().max(1e-3);
        let mut parts = vec![format!("{label} {} events", thousands(self.printed))];
        if let (Some(seq), Some(head)) = (self.seq, self.head_seq) {
            let first = self.first_seq.unwrap_or(0).min(head);
            let seq = seq.min(head);
            let span = head - first;
            // A reset may move the position back before where this run started.
            let done = seq.saturating_sub(first);
            let percent = (u128::from(done) * 100)
                .checked_div(u128::from(span))
                .unwrap_or(100);
            parts.push(format!(
                "seq {} of {} ({percent}%)",
                thousands(seq),
                thousands(head)
            ));
            parts.push(format!(
                "{} events/s",
                thousands(rate(self.printed, elapsed))
            ));
            if label == "replaying" && done > 0 && seq < head {
                let left = (head - seq) as f64 * elapsed / done as f64;
                parts.push(format!("~{} left", duration(left)));
            }
        } else {
            parts.push(format!(
                "{} events/s",
                thousands(rate(self.printed, elapsed))
            ));
        }
        if label != "replaying" {
            parts.push(format!("in {}", duration(elapsed)));
        }
        parts.join(" · ")
    }
}

fn rate(count: u64, seconds: f64) -> u64 {
    (count as f64 / seconds).round() as u64
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Seconds as `46ms`, `4.2s`, `42s`, `3m05s`, `2h01m`.
fn duration(seconds: f64) -> String {
    if seconds < 1.0 {
        return format!("{}ms", (seconds * 1000.0).round() as u64);
    }
    if seconds < 10.0 {
        return format!("{seconds:.1}s");
    }
    let total = seconds.round() as u64;
    match total {
        0..=59 => format!("{total}s"),
        60..=3599 => format!("{}m{:02}s", total / 60, total % 60),
        _ => format!("{}h{:02}m", total / 3600, total % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_at_a_glance() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(duration(0.046), "46ms");
        assert_eq!(duration(4.24), "4.2s");
        assert_eq!(duration(42.0), "42s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(7260.0), "2h01m");
    }

    #[tokio::test(start_paused = true)]
    async fn the_line_shows_position_against_head_rate_and_time_left() {
        let mut progress = Progress::new(true);
        progress.connected(Some("00000000000000ab:1000"), Some("00000000000000ab:3000"));
        let mut screen = Vec::new();
        // Short replays stay quiet.
        progress.advanced(Some("00000000000000ab:1100"), true);
        progress.tick(&mut screen);
        assert!(screen.is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        for seq in 1101..=1500 {
            progress.advanced(Some(&format!("00000000000000ab:{seq}")), true);
        }
        progress.tick(&mut screen);
        let text = String::from_utf8(screen.clone()).unwrap();
        assert_eq!(
            text,
            "\r\x1b[2Kchangefeed tail: replaying 401 events · seq 1,500 of 3,000 (25%) · \
             401 events/s · ~3.0s left"
        );
        // Redraws are throttled; a clear erases the line once.
        progress.tick(&mut screen);
        assert_eq!(screen.len(), text.len());
        assert!(progress.clear(&mut screen));
        assert!(!progress.clear(&mut screen));
        assert_eq!(&screen[text.len()..], CLEAR.as_bytes());
        // A disabled line (stderr not a terminal) never draws.
        let mut quiet = Progress::new(false);
        quiet.connected(Some("1"), Some("5"));
        tokio::time::advance(Duration::from_secs(1)).await;
        quiet.tick(&mut screen);
        quiet.finish(&mut screen);
        assert_eq!(screen.len(), text.len() + CLEAR.len());
    }
}
