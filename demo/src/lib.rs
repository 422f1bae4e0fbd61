//! surgeguard's demo: the postmortem's outage replayed on this machine.
//!
//! A storefront ([`storefront`]) whose every page needs one query on a database tier with a
//! fixed connection pool ([`pool`], [`db`]; or a real PostgreSQL, [`pg`]) receives a traffic mix
//! ([`traffic`]) that surges several-fold ([`schedule`]), sent open-loop ([`load`]) through a
//! real Envoy three times: without the filter, with surgeguard as shipped, and with surgeguard's
//! in-flight limit made adaptive ([`demo`]; the shipped config is pointed at this machine, and its
//! filter removed for the first run, by the harness). Halfway through the surge the database
//! itself slows down ([`incident`]); the adaptive limit is sampled from Envoy ([`gauge`]). The
//! results ([`outcome`], [`summary`]) become a terminal table ([`table`]), `summary.json` and
//! an HTML report with plots ([`report`]). `--live` ([`live`], [`ecds`], [`live_report`]) instead
//! runs once with the filter configured over ECDS and changes a limit mid-run. `--fleet`
//! ([`fleet`]) scales the storefront out to three replicas behind three Envoys on one database
//! tier, and compares per-Envoy limits with fleet-wide ones.
//!
//! Nothing here is compiled into the wasm module: this crate only drives Envoy from outside.

pub mod cli;
pub mod db;
pub mod demo;
pub mod ecds;
pub mod fleet;
pub mod gauge;
pub mod incident;
pub mod interrupt;
pub mod live;
pub mod live_report;
pub mod load;
pub mod outcome;
pub mod pg;
pub mod pool;
pub mod report;
pub mod rng;
pub mod schedule;
pub mod storefront;
pub mod summary;
pub mod table;
pub mod traffic;
