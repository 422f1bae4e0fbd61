//! Fleet leases: a fleet-wide limit's tokens are drawn from a rate limit service in blocks
//! (`ShouldRateLimit` with `hits_addend = N`, see [`crate::rls`]) and spent locally, so a request
//! never waits on the network. Pure: time arrives as `now_ns`, the service's answers as values.
//!
//! One [`Lease`] per fleet limit per Envoy. It lives in shared data beside the buckets, so every
//! worker spends from the same block exactly (it changes only by compare-and-swap), and one call
//! at a time serves the whole Envoy: whoever finds the block below its low-water mark claims the
//! call ([`Lease::start_call`]); the others see the claim and keep spending.
//!
//! Modes. `Fleet`: the service answered; requests spend leased tokens. `Local`: the service has not
//! answered yet, failed, or let a call pass its deadline; requests use the limit's local fallback
//! bucket (a configured share of the fleet limit, priorities applied as usual) and a probe call is
//! made every `probe_period_ns` until one succeeds. A call that Envoy never answers (a cluster
//! with no healthy host can queue it forever) is declared failed at its deadline
//! ([`Lease::expire_call`]), so no state waits on it.
//!
//! Reserves, with the local meaning: a class with reserve `r` takes a token only if at least
//! `r x capacity` tokens remain for the fleet afterwards. What remains, as this Envoy knows it, is
//! the service's `limit_remaining` at its last answer plus this Envoy's unspent tokens. A service
//! that reports no `limit_remaining` (limitador-server's RLS front-end sends no statuses) leaves
//! only this Envoy's own view: the window's capacity less what it was granted, so reserves then
//! hold per Envoy rather than fleet-wide, while the limit itself still holds fleet-wide.
//!
//! Error bounds, per service window of `capacity` tokens, in fleet mode:
//! - over by at most `min_hits` per Envoy: the service counts a lease when it grants it and
//!   unspent tokens expire when the window resets, so leased tokens never exceed `capacity`;
//!   only the few requests admitted on credit while an empty block waits for its refill (at
//!   most `min_hits` at a time, paid from the next grant) can land in the next window's count;
//! - under by at most the tokens leased but unspent when the window resets (one lease per
//!   Envoy at most), plus requests refused while an empty block past its credit waits for its
//!   refill;
//! - the reserve can be short by the other Envoys' unspent tokens (at most a lease each), which
//!   this Envoy cannot see.
//!
//! In local mode each Envoy admits its own share, so a fleet of n Envoys admits up to
//! `n x share x capacity` per window: the operator sizes `share` for that.

/// Parameters of one fleet limit, compiled from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseParams {
    /// Tokens per service window (the limit's `burst`): what reserves are shares of.
    pub capacity: u64,
    /// The service's window, used when an answer does not say when its window resets.
    pub window_ns: u64,
    /// A call not answered by then has failed.
    pub timeout_ns: u64,
    /// The target time between calls under steady load: a lease holds about two of these.
    pub refill_period_ns: u64,
    /// Lease size bounds.
    pub min_hits: u32,
    pub max_hits: u32,
    /// The size of a lease asked for without a spending rate to size it from (the first call,
    /// and the probes of local mode): this Envoy's share of one refill period.
    pub initial_hits: u32,
    /// In local mode, how often to try the service again.
    pub probe_period_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Spending tokens leased from the service.
    Fleet,
    /// Using the local fallback bucket (no answer yet, or the service failed).
    #[default]
    Local,
}

/// What the service said to a lease call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The hits were counted: they are this Envoy's to spend. `remaining`: the service's
    /// `limit_remaining`, if it reported one.
    Granted { remaining: Option<u64>, until_reset_ns: Option<u64> },
    /// Not enough left for the hits asked (nothing was counted).
    OverLimit { remaining: Option<u64>, until_reset_ns: Option<u64> },
    /// An error status, an undecodable answer, or a timeout.
    Failed,
}

/// A change of mode, for the log line and the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    None,
    ToFleet,
    /// To local mode; also a limit's first failure ever, when it was in local mode already.
    ToLocal,
}

/// A refused take: when the same request could be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub wait_ns: u64,
}

/// One fleet limit's lease state in one Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lease {
    pub mode: Mode,
    /// Leased and not yet spent.
    pub tokens: u64,
    /// The service's `limit_remaining` at its last answer (unleased tokens of the fleet).
    pub fleet_remaining: u64,
    /// When the service's window resets: unspent tokens expire then.
    pub window_end_ns: u64,
    /// The call in flight's deadline; 0 when no call is in flight.
    pub call_deadline_ns: u64,
    /// The hits the call in flight asks for.
    pub call_hits: u32,
    /// The size of the last lease granted (the low-water mark is half of it).
    pub last_hits: u32,
    /// Tokens spent since `spent_since_ns`: the observed rate that sizes the next lease.
    pub spent: u64,
    pub spent_since_ns: u64,
    /// In local mode: no probe before this.
    pub probe_at_ns: u64,
    /// Tokens spent on credit while the block was empty, paid from the next grant (at most
    /// `min_hits`).
    pub debt: u64,
}

/// The number of u64 words a lease is stored in.
pub const WORDS: usize = 10;

impl Lease {
    /// Takes one leased token for a class whose reserve is `reserve_tokens` (in fleet mode only;
    /// in local mode the caller uses the fallback bucket).
    pub fn take(&mut self, reserve_tokens: u64, params: &LeaseParams, now_ns: u64) -> Result<(), Refused> {
        self.expire_window(params, now_ns);
        // Saturating: a stored lease of another layout or a torn write may hold any numbers.
        let known_remaining = self.fleet_remaining.saturating_add(self.tokens).saturating_sub(self.debt);
        if known_remaining < reserve_tokens.saturating_add(1) {
            // The fleet is into this class's reserve until the window resets.
            return Err(Refused { wait_ns: self.window_end_ns.saturating_sub(now_ns).max(1) });
        }
        if self.tokens > 0 {
            self.tokens -= 1;
        } else if self.debt < credit_for(reserve_tokens, params) {
            // The block ran out before its refill arrived (or the window just reset): a few
            // requests go on credit, paid from the next grant, rather than refused. The credit
            // has reserves too, so the last of it is kept for the most important classes.
            self.debt += 1;
        } else {
            return Err(Refused { wait_ns: params.refill_period_ns.max(1) });
        }
        self.spent = self.spent.saturating_add(1);
        Ok(())
    }

    /// Claims the Envoy's one call if one is due, and returns the hits to ask for. Due: in fleet
    /// mode, when the block is at or below its low-water mark and the fleet has tokens left (or
    /// its window has reset); in local mode, when the next probe is due. Never while a call is
    /// in flight.
    pub fn start_call(&mut self, params: &LeaseParams, now_ns: u64) -> Option<u32> {
        if self.call_deadline_ns != 0 {
            return None;
        }
        let hits = match self.mode {
            Mode::Local => {
                if now_ns < self.probe_at_ns {
                    return None;
                }
                params.initial_hits.clamp(params.min_hits.max(1), params.max_hits.max(params.min_hits).max(1))
            }
            Mode::Fleet => {
                self.expire_window(params, now_ns);
                let low_water = u64::from(self.last_hits / 2);
                if self.tokens > low_water || self.fleet_remaining == 0 {
                    return None;
                }
                self.lease_size(params, now_ns).min(u32::try_from(self.fleet_remaining).unwrap_or(u32::MAX))
            }
        };
        self.call_deadline_ns = now_ns.saturating_add(params.timeout_ns).max(1);
        self.call_hits = hits;
        Some(hits)
    }

    /// Applies the service's answer to the call claimed with deadline `call_deadline_ns` (the
    /// call's identity). An answer to an earlier call, one already declared failed at its
    /// deadline, is ignored (`None`): its hits are lost to the fleet rather than counted twice.
    pub fn on_answer(
        &mut self,
        answer: Answer,
        call_deadline_ns: u64,
        params: &LeaseParams,
        now_ns: u64,
    ) -> Option<Switch> {
        if call_deadline_ns == 0 || call_deadline_ns != self.call_deadline_ns {
            return None;
        }
        let hits = self.call_hits;
        self.call_deadline_ns = 0;
        self.call_hits = 0;
        let before = self.mode;
        // A limit starts in local mode: its first failure (a fresh lease has never probed) is
        // reported as a switch too, or a limit that never reaches its service (a cluster typo)
        // would never be logged.
        let first_failure = answer == Answer::Failed && self.probe_at_ns == 0;
        match answer {
            Answer::Granted { remaining, until_reset_ns } => {
                self.set_window(params, until_reset_ns, now_ns);
                self.mode = Mode::Fleet;
                let paid = self.debt.min(u64::from(hits));
                self.debt -= paid;
                self.tokens = self.tokens.saturating_add(u64::from(hits) - paid);
                self.fleet_remaining = remaining.unwrap_or(self.fleet_remaining.saturating_sub(u64::from(hits)));
                self.last_hits = hits;
                self.spent = 0;
                self.spent_since_ns = now_ns;
            }
            Answer::OverLimit { remaining, until_reset_ns } => {
                // The service is up: fleet mode, with what is left (the next call asks for no
                // more). Not told what is left: the next call asks for half.
                self.set_window(params, until_reset_ns, now_ns);
                self.mode = Mode::Fleet;
                self.fleet_remaining = remaining.unwrap_or(u64::from(hits / 2));
            }
            Answer::Failed => self.fail(params, now_ns),
        }
        if first_failure {
            return Some(Switch::ToLocal);
        }
        Some(switch(before, self.mode))
    }

    /// Declares the call in flight failed if its deadline has passed.
    pub fn expire_call(&mut self, params: &LeaseParams, now_ns: u64) -> Switch {
        if self.call_deadline_ns == 0 || now_ns < self.call_deadline_ns {
            return Switch::None;
        }
        self.on_answer(Answer::Failed, self.call_deadline_ns, params, now_ns).unwrap_or(Switch::None)
    }

    fn fail(&mut self, params: &LeaseParams, now_ns: u64) {
        self.mode = Mode::Local;
        // Leased tokens and debt are dropped: the fallback bucket decides until the service is back.
        self.tokens = 0;
        self.debt = 0;
        self.probe_at_ns = now_ns.saturating_add(params.probe_period_ns);
    }

    /// Follows the service's window: its `duration_until_reset` when it sends one, else windows
    /// of `window_ns` from the first answer. A new window starts with the whole capacity (what is
    /// left is then only known if the service says).
    fn set_window(&mut self, params: &LeaseParams, until_reset_ns: Option<u64>, now_ns: u64) {
        if now_ns >= self.window_end_ns {
            self.fleet_remaining = params.capacity;
            if until_reset_ns.is_none() {
                self.window_end_ns = now_ns.saturating_add(params.window_ns);
            }
        }
        if let Some(d) = until_reset_ns {
            self.window_end_ns = now_ns.saturating_add(d);
        }
    }

    /// At the service's window reset, unspent tokens expire and the fleet starts full again.
    fn expire_window(&mut self, params: &LeaseParams, now_ns: u64) {
        if self.mode == Mode::Fleet && now_ns >= self.window_end_ns {
            self.tokens = 0;
            self.fleet_remaining = params.capacity;
            self.window_end_ns = now_ns.saturating_add(params.window_ns);
        }
    }

    /// Two refill periods of the observed spending rate, within the bounds.
    fn lease_size(&self, params: &LeaseParams, now_ns: u64) -> u32 {
        let elapsed_ns = now_ns.saturating_sub(self.spent_since_ns).max(1);
        let wanted = u128::from(self.spent) * u128::from(params.refill_period_ns) * 2 / u128::from(elapsed_ns);
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
        wanted.clamp(params.min_hits.max(1), params.max_hits.max(params.min_hits).max(1))
    }

    /// The state as stored: [`WORDS`] little-endian u64s.
    pub fn to_words(&self) -> [u64; WORDS] {
        [
            match self.mode {
                Mode::Fleet => 1,
                Mode::Local => 0,
            },
            self.tokens,
            self.fleet_remaining,
            self.window_end_ns,
            self.call_deadline_ns,
            u64::from(self.call_hits) | (u64::from(self.last_hits) << 32),
            self.spent,
            self.spent_since_ns,
            self.probe_at_ns,
            self.debt,
        ]
    }

    pub fn from_words(w: &[u64; WORDS]) -> Lease {
        Lease {
            mode: if w[0] == 1 { Mode::Fleet } else { Mode::Local },
            tokens: w[1],
            fleet_remaining: w[2],
            window_end_ns: w[3],
            call_deadline_ns: w[4],
            call_hits: w[5] as u32,
            last_hits: (w[5] >> 32) as u32,
            spent: w[6],
            spent_since_ns: w[7],
            probe_at_ns: w[8],
            debt: w[9],
        }
    }
}

/// The credit (at most `min_hits`) a class with `reserve_tokens` may run up: the share
/// `1 - reserve` of it, as for every other capacity.
fn credit_for(reserve_tokens: u64, params: &LeaseParams) -> u64 {
    let capacity = params.capacity.max(1);
    let usable = capacity.saturating_sub(reserve_tokens);
    (u128::from(params.min_hits) * u128::from(usable) / u128::from(capacity)) as u64
}

fn switch(before: Mode, after: Mode) -> Switch {
    match (before, after) {
        (Mode::Local, Mode::Fleet) => Switch::ToFleet,
        (Mode::Fleet, Mode::Local) => Switch::ToLocal,
        _ => Switch::None,
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
