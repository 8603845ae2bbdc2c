//! The run model and everything that advances runs: bundles, flows, the interpreter, commands,
//! the scheduler and the event-driven runner.

pub mod agent;
pub mod builtin;
pub mod bundle;
pub mod commands;
pub mod deprecations;
pub mod effect_wait;
pub mod flow;
pub mod history;
pub mod interpreter;
pub mod llm_call;
pub mod model;
pub mod notify;
pub mod offload;
pub mod pure;
pub mod runner;
pub mod schedule;
pub mod tools;
pub mod worker;
