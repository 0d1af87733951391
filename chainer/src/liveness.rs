//! Readiness that tells the truth, and when to recreate the consumer. Pure: the router feeds
//! an [`Observation`] every probe and acts on the [`Verdict`].
//!
//! - Any assigned partition still recovering → not ready (nothing of it is being chained).
//! - Group mode, partitions not held by us have lag and the group's committed offsets do not
//!   move (nobody is chaining them) → after `stall_timeout`, recreate the consumer (a broker's
//!   coordinator that never re-assigns, or assigns to a member that is gone: measured on tansu
//!   after a restart and when a tail scan starves its coordinator); holding no partition at
//!   all in that state is also not ready. An idle standby whose group-mates make progress stays
//!   ready. Consecutive restarts back off (2×, up to 16×) so that a group-mate's recovery
//!   longer than the stall timeout is not rebalanced away forever.
//! - Holding partitions whose input has lag, and no input acknowledged for `stall_timeout / 2`
//!   → not ready; if additionally no record arrived from the consumer for `stall_timeout` →
//!   recreate the consumer (a fetcher stuck after a broker restart). Records arriving but not
//!   being acknowledged is a producer/broker problem a new consumer would not fix.

use std::time::{Duration, Instant};

/// What the router measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub now: Instant,
    /// Consumer group membership (false: static assignment).
    pub group_mode: bool,
    /// Partitions held (with a task).
    pub held: usize,
    /// Held partitions still recovering.
    pub recovering: Vec<i32>,
    /// Σ (high watermark − next offset to chain) over held, recovered partitions.
    pub lag_held: i64,
    /// Group mode: Σ (high watermark − committed offset) over partitions not held.
    pub lag_unheld: i64,
    /// Group mode: Σ committed offsets of the partitions not held (moves while others chain).
    pub committed_unheld: i64,
    /// Inputs acknowledged so far (monotonic).
    pub progress: u64,
    /// Records received from the consumer so far (monotonic).
    pub received: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    NotReady(String),
    /// Recreate the consumer (and report not ready).
    Restart(String),
}

impl Verdict {
    pub fn is_ready(&self) -> bool {
        matches!(self, Verdict::Ready)
    }
}

/// Tracks when each measure last moved.
#[derive(Debug, Clone)]
pub struct Liveness {
    stall_timeout: Duration,
    progress: Tracked,
    received: Tracked,
    committed: Tracked,
    restarts_in_a_row: u32,
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    value: Option<i128>,
    since: Instant,
    /// Changed at least once after the first observation.
    moved: bool,
}

impl Tracked {
    fn new(now: Instant) -> Self {
        Self {
            value: None,
            since: now,
            moved: false,
        }
    }
    /// Time since the value last changed (or since tracking began).
    fn observe(&mut self, value: i128, now: Instant) -> Duration {
        match self.value {
            None => self.value = Some(value),
            Some(v) if v != value => {
                self.value = Some(value);
                self.since = now;
                self.moved = true;
            }
            Some(_) => {}
        }
        now.saturating_duration_since(self.since)
    }
}

impl Liveness {
    /// `stall_timeout` zero disables restarts (readiness is still reported).
    pub fn new(stall_timeout: Duration, now: Instant) -> Self {
        Self {
            stall_timeout,
            progress: Tracked::new(now),
            received: Tracked::new(now),
            committed: Tracked::new(now),
            restarts_in_a_row: 0,
        }
    }

    /// After a consumer restart: forget history (the new consumer gets a full period), and
    /// double the period before the next restart unless progress is seen meanwhile (a
    /// group-mate's recovery longer than the stall timeout must not be restarted forever: each
    /// restart rebalances the group, which restarts that recovery).
    pub fn restarted(&mut self, now: Instant) {
        let n = self.restarts_in_a_row.saturating_add(1);
        *self = Self::new(self.stall_timeout, now);
        self.restarts_in_a_row = n;
    }

    /// The stall timeout with the back-off of consecutive restarts (up to 16×).
    pub fn effective_stall(&self) -> Duration {
        self.stall_timeout * (1u32 << self.restarts_in_a_row.min(4))
    }

    pub fn observe(&mut self, o: &Observation) -> Verdict {
        let idle = self.progress.observe(o.progress.into(), o.now);
        let silent = self.received.observe(o.received.into(), o.now);
        // The stall of unheld partitions counts from when their committed offsets last moved
        // or their lag appeared, whichever is later.
        let unheld = i128::from(o.committed_unheld) * 2 + i128::from(o.lag_unheld > 0);
        let group_still = self.committed.observe(unheld, o.now);
        if (self.progress.moved && idle.is_zero())
            || (self.committed.moved && group_still.is_zero())
        {
            self.restarts_in_a_row = 0;
        }
        let stall = self.stall_timeout;
        let eff = self.effective_stall();
        let restart_after = |d: Duration| !stall.is_zero() && d >= eff;
        if !o.recovering.is_empty() {
            return Verdict::NotReady(format!("partitions {:?} recovering", o.recovering));
        }
        // Partitions we do not hold, with lag, whose committed offsets do not move: nobody
        // chains them (or a group-mate is recovering them).
        let stranded =
            o.group_mode && o.lag_unheld > 0 && !(self.committed.moved && group_still < stall / 2);
        if stranded {
            let why = format!(
                "holds {} partition(s) while the others have lag {} and the group's committed \
                 offsets have not moved for {}s",
                o.held,
                o.lag_unheld,
                group_still.as_secs()
            );
            if restart_after(group_still) {
                return Verdict::Restart(why);
            }
            if o.held == 0 {
                return Verdict::NotReady(why);
            }
        } else if o.group_mode && o.held == 0 {
            // No lag, or the group-mates are chaining it: an idle standby is fine.
            return Verdict::Ready;
        }
        if o.lag_held <= 0 {
            return Verdict::Ready;
        }
        if restart_after(idle) && restart_after(silent) {
            return Verdict::Restart(format!(
                "no record received for {}s although its partitions have lag {}",
                silent.as_secs(),
                o.lag_held
            ));
        }
        if idle >= stall / 2 && !idle.is_zero() {
            return Verdict::NotReady(format!(
                "no record chained for {}s although its partitions have lag {}",
                idle.as_secs(),
                o.lag_held
            ));
        }
        Verdict::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(60);

    fn obs(now: Instant) -> Observation {
        Observation {
            now,
            group_mode: true,
            held: 0,
            recovering: vec![],
            lag_held: 0,
            lag_unheld: 0,
            committed_unheld: 0,
            progress: 0,
            received: 0,
        }
    }

    #[test]
    fn no_assignment_with_stalled_lag_is_not_ready_then_restarts() {
        let t0 = Instant::now();
        let mut l = Liveness::new(STALL, t0);
        let mut o = obs(t0);
        o.lag_unheld = 100;
        o.committed_unheld = 5;
        // Nobody has been seen chaining: not ready from the first look.
        assert!(matches!(l.observe(&o), Verdict::NotReady(m) if m.contains("holds 0 partition")));
        o.now = t0 + Duration::from_secs(5);
        assert!(matches!(l.observe(&o), Verdict::NotReady(m) if m.contains("holds 0 partition")));
        o.now = t0 + STALL;
        assert!(matches!(l.observe(&o), Verdict::Restart(_)));
        // After the restart the new consumer gets a full period, and the next restart waits
        // twice as long unless progress is seen.
        l.restarted(o.now);
        let t1 = o.now;
        o.now += Duration::from_secs(1);
        assert!(matches!(l.observe(&o), Verdict::NotReady(_)));
        o.now = t1 + STALL;
        assert!(matches!(l.observe(&o), Verdict::NotReady(_)));
        o.now = t1 + STALL * 2;
        assert!(matches!(l.observe(&o), Verdict::Restart(_)));
        l.restarted(o.now);
        assert_eq!(l.effective_stall(), STALL * 4);
        // Progress resets the back-off.
        o.now += Duration::from_secs(1);
        l.observe(&o);
        o.committed_unheld += 1;
        o.now += Duration::from_secs(1);
        l.observe(&o);
        assert_eq!(l.effective_stall(), STALL);
    }

    /// Holding some partitions while others have lag that nobody chains (a coordinator that
    /// assigned them to a member that is gone): ready for what it holds, but the consumer is
    /// recreated after the stall timeout.
    #[test]
    fn the_stall_counts_from_when_the_lag_appeared() {
        let t0 = Instant::now();
        let mut l = Liveness::new(STALL, t0);
        let mut o = obs(t0);
        o.held = 1;
        assert_eq!(l.observe(&o), Verdict::Ready);
        o.now = t0 + STALL * 2;
        o.lag_unheld = 5;
        assert_eq!(l.observe(&o), Verdict::Ready, "lag just appeared");
        o.now = t0 + STALL * 3;
        assert!(matches!(l.observe(&o), Verdict::Restart(_)));
    }

    #[test]
    fn stranded_partitions_restart_even_when_holding_others() {
        let t0 = Instant::now();
        let mut l = Liveness::new(STALL, t0);
        let mut o = obs(t0);
        o.held = 1;
        o.lag_unheld = 20_000;
        o.committed_unheld = 0;
        assert_eq!(l.observe(&o), Verdict::Ready);
        o.now = t0 + STALL / 2;
        assert_eq!(l.observe(&o), Verdict::Ready);
        o.now = t0 + STALL;
        assert!(matches!(l.observe(&o), Verdict::Restart(m) if m.contains("holds 1 partition")));
    }

    #[test]
    fn an_idle_standby_whose_group_mates_progress_stays_ready() {
        let t0 = Instant::now();
        let mut l = Liveness::new(STALL, t0);
        let mut o = obs(t0);
        o.lag_unheld = 100;
        for i in 0..100u64 {
            o.now = t0 + Duration::from_secs(i * 5);
            o.committed_unheld = i as i64 * 10;
            let v = l.observe(&o);
            // Ready once the group-mates were seen moving.
            assert_eq!(v.is_ready(), i > 0, "at {i}: {v:?}");
        }
        // They stop: not ready after half the stall timeout, restart after all of it.
        let stop = o.now;
        o.now = stop + STALL / 2;
        assert!(matches!(l.observe(&o), Verdict::NotReady(_)));
        o.now = stop + STALL;
        assert!(matches!(l.observe(&o), Verdict::Restart(_)));
        // No lag at all: ready whatever the offsets do.
        let mut l = Liveness::new(STALL, t0);
        let mut o = obs(t0);
        o.now = t0 + STALL * 3;
        assert_eq!(l.observe(&o), Verdict::Ready);
    }

    #[test]
    fn recovering_partitions_are_not_ready_and_never_restart() {
        let t0 = Instant::now();
        let mut l = Liveness::new(STALL, t0);
        let mut o = obs(t0);
        o.held = 2;
        o.recovering = vec![1];
        o.lag_held = 1000;
        for i in 0..10u64 {
            o.now = t0 + STALL * i as u32;
            assert!(matches!(l.observe(&o), Verdict::NotReady(m) if m.contains("recovering")));
        }
    }

    #[test]
    fn held_partitions_with_lag_and_no_progress() {
        let t0 = Instant::now();
        let mut l = Liveness::new(STALL, t0);
        let mut o = obs(t0);
        o.held = 1;
        o.lag_held = 50;
        assert_eq!(l.observe(&o), Verdict::Ready);
        // Progressing: ready.
        o.now = t0 + Duration::from_secs(40);
        o.progress = 10;
        o.received = 10;
        assert_eq!(l.observe(&o), Verdict::Ready);
        // Records arrive but nothing is acknowledged: not ready, but no restart.
        for s in [71u64, 100, 200] {
            o.now = t0 + Duration::from_secs(s);
            o.received = s;
            assert!(
                matches!(l.observe(&o), Verdict::NotReady(m) if m.contains("no record chained"))
            );
        }
        // Nothing arrives either for the whole stall timeout: restart.
        o.now = t0 + Duration::from_secs(200) + STALL;
        assert!(matches!(l.observe(&o), Verdict::Restart(m) if m.contains("no record received")));
        // Caught up (no lag): ready.
        o.lag_held = 0;
        assert_eq!(l.observe(&o), Verdict::Ready);
    }

    #[test]
    fn static_mode_never_reports_missing_assignment_and_zero_disables_restarts() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Duration::ZERO, t0);
        let mut o = obs(t0);
        o.group_mode = false;
        o.held = 2;
        o.lag_held = 10;
        assert_eq!(l.observe(&o), Verdict::Ready);
        o.now = t0 + Duration::from_secs(3600);
        assert!(matches!(l.observe(&o), Verdict::NotReady(_)));
    }
}
