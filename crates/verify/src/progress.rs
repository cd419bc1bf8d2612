//! Progress while a run goes on: a line every `logInterval` on stdout, or a
//! progress bar when stdout is a terminal.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::config::LogLevel;
use super::shared::Shared;

/// How often a terminal progress bar is redrawn.
const BAR_TICK: Duration = Duration::from_millis(100);

/// Shows progress until `finished` or a failure; prints nothing below
/// `info` or with a zero `interval`.
pub(crate) async fn show(
    shared: Arc<Shared>,
    total: u64,
    interval: Duration,
    level: LogLevel,
    finished: CancellationToken,
) {
    if level < LogLevel::Info || interval.is_zero() {
        return;
    }
    let bar = std::io::stdout().is_terminal().then(|| {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} events {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let mut ticker = tokio::time::interval(if bar.is_some() { BAR_TICK } else { interval });
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; skip it so the first line says
    // something.
    ticker.tick().await;
    let started = Instant::now();
    let mut last = (started, 0u64);
    loop {
        tokio::select! {
            () = finished.cancelled() => break,
            () = shared.cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let sent = shared.events_sent.load(Ordering::Relaxed);
        let notifications = shared.notifications.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (sent - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
        last = (now, sent);
        match &bar {
            Some(bar) => {
                bar.set_position(sent);
                bar.set_message(format!(
                    "({:.2}M/s), {notifications} notifications",
                    rate / 1e6
                ));
            }
            None => {
                println!(
                    "[{:>7.1}s] events sent: {sent} of {total} ({rate:.0}/s), notifications received: {notifications}",
                    started.elapsed().as_secs_f64(),
                );
            }
        }
    }
    if let Some(bar) = bar {
        bar.set_position(shared.events_sent.load(Ordering::Relaxed));
        bar.finish_and_clear();
    }
}
