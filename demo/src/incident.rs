//! The database's own incident: for the second half of the surge the database runs
//! [`SLOWDOWN`] times slower by itself, whatever the load (in the postmortem the first signal was
//! the database's latency), reached over [`RAMP_S`] as the surge's rate is. Every run of the main
//! demo sees it at the same scheduled time, so the runs still differ only by the filter.
//!
//! Invariant: the database is slowed only between `from_s` and `until_s` of the load's clock,
//! and is back at full speed when the [`Driver`] is dropped.

use crate::db::Database;
use crate::load::Live;
use crate::schedule::Plan;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How many times slower every query runs while the database is slow.
pub const SLOWDOWN: f64 = 3.0;
/// How long the database takes to reach [`SLOWDOWN`] (linearly).
pub const RAMP_S: f64 = 1.0;
/// How often the driver looks at the load's clock.
const STEP: Duration = Duration::from_millis(10);

/// When the database is slow, in seconds of the load's schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Incident {
    pub from_s: f64,
    pub until_s: f64,
    pub slowdown: f64,
}

impl Incident {
    /// The second half of `plan`'s surge.
    pub fn in_surge(plan: &Plan) -> Incident {
        let (start, end) = (plan.surge_start_s(), plan.surge_end_s());
        Incident { from_s: start + (end - start) / 2.0, until_s: end, slowdown: SLOWDOWN }
    }

    pub fn contains(&self, t_s: f64) -> bool {
        t_s >= self.from_s && t_s < self.until_s
    }

    /// The database's slowdown at `t_s`: up over [`RAMP_S`], back at once at `until_s`.
    pub fn slowdown_at(&self, t_s: f64) -> f64 {
        if self.contains(t_s) {
            1.0 + (self.slowdown - 1.0) * ((t_s - self.from_s) / RAMP_S).clamp(0.0, 1.0)
        } else {
            1.0
        }
    }

    /// In words: "the database 3x slower from 12 s to 18 s".
    pub fn describe(&self) -> String {
        format!(
            "the database itself {}x slower from {:.0} s (reached over {RAMP_S:.0} s) to {:.0} s",
            self.slowdown, self.from_s, self.until_s
        )
    }
}

/// Slows the database on the load's clock (from when the load starts); restores full speed and
/// stops on drop.
pub struct Driver {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    db: Arc<Database>,
}

impl Driver {
    pub fn start(db: Arc<Database>, incident: Incident, live: Arc<Live>) -> Driver {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, database) = (Arc::clone(&stop), Arc::clone(&db));
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                if let Some(start) = live.started.get() {
                    database.set_slowdown(incident.slowdown_at(start.elapsed().as_secs_f64()));
                }
                std::thread::sleep(STEP);
            }
        });
        Driver { stop, handle: Some(handle), db }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.db.set_slowdown(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Mix;

    #[test]
    fn the_database_is_slow_for_the_second_half_of_the_surge() {
        let plan = Plan { duration_s: 24.0, surge: 5.0, calm_rate_per_s: 60.0, mix: Mix::default(), seed: 1 };
        let i = Incident::in_surge(&plan);
        assert_eq!((i.from_s, i.until_s), (12.0, 18.0));
        assert_eq!(i.slowdown_at(11.99), 1.0);
        assert_eq!(i.slowdown_at(12.0), 1.0);
        assert_eq!(i.slowdown_at(12.5), 2.0, "halfway up the ramp");
        assert_eq!(i.slowdown_at(13.0), SLOWDOWN);
        assert_eq!(i.slowdown_at(17.99), SLOWDOWN);
        assert_eq!(i.slowdown_at(18.0), 1.0, "restored as the surge ends");
        assert_eq!(i.describe(), "the database itself 3x slower from 12 s (reached over 1 s) to 18 s");
    }
}
