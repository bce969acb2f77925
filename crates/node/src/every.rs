//! The pace of a background loop: a tick every period until the node's
//! stop signal turns true. The ticker, the disk check and the vote guard
//! each run one.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

pub(crate) struct Every {
    interval: Interval,
    stop: watch::Receiver<bool>,
}

impl Every {
    /// Ticks every `period` (the first at once); a tick missed while the
    /// loop was busy is delayed, never bunched.
    pub(crate) fn new(period: Duration, stop: watch::Receiver<bool>) -> Every {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Every { interval, stop }
    }

    /// Waits for the next tick. False once the stop signal turned true or
    /// its sender is gone: the loop ends.
    pub(crate) async fn tick(&mut self) -> bool {
        // Biased: either branch ends in the same answer, and a fixed order
        // keeps a simulated run (one thread, one seed) the same every time.
        tokio::select! {
            biased;
            _ = self.interval.tick() => {}
            changed = self.stop.changed() => {
                if changed.is_err() {
                    return false;
                }
            }
        }
        !*self.stop.borrow()
    }
}
