//! The run model and everything that advances runs: bundles, flows, the interpreter, commands,
//! the scheduler and the event-driven runner.

pub mod builtin;
pub mod bundle;
pub mod commands;
pub mod compaction;
pub mod deprecations;
pub mod effect_wait;
pub mod flow;
pub mod history;
pub mod interpreter;
pub mod media;
pub mod media_effect;
pub mod memory;
pub mod model;
pub mod nodes;
pub mod notes;
pub mod notify;
pub mod offload;
pub mod pure;
pub mod runner;
pub mod schedule;
pub mod start;
pub mod tools;
pub mod worker;
