//! The chaos harness's history and checker.
//!
//! A run records every client operation as one [`history::Op`] per JSON
//! line: when it was invoked and when it completed (harness wall-clock
//! milliseconds), the node it went to, its outcome (ok, fail, or
//! indeterminate after a timeout) and the fields it sent and got back.
//! [`checker::check`] is a pure function from such a history to a
//! [`checker::Report`]: counts of each anomaly class with examples.
//!
//! Indeterminate operations are read as Jepsen reads them: an enqueue whose
//! outcome is unknown may or may not have happened, so its jobs may appear
//! but need not; an ack whose outcome is unknown may have finished its job.

pub mod checker;
pub mod history;
pub mod run;

pub use checker::{check, Report};
pub use history::{Call, Op, Outcome};
