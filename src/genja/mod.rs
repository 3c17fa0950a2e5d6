//! genja 0.5 as a client of the supervisor (feature `genja`).
//!
//! [genja](https://crates.io/crates/genja) is Nornir in Rust: tasks, runners, processors and a
//! YAML inventory of hosts, groups and defaults. Its runners get their connections through
//! genja-core's [`TaskConnectionResolver`](genja_core::task::TaskConnectionResolver), and its
//! connection plugins implement genja-core's own
//! [`Connection`](genja_core::inventory::Connection) trait. This module fits both onto the
//! supervisor, so a genja task runs unchanged with supervised reconnects, bounded waits and
//! typed failures underneath:
//!
//! - [`SupervisedResolver`] is a `TaskConnectionResolver`: pass it to any genja runner
//!   (`ThreadedRunnerPlugin::run_task(task, hosts, Some(resolver), ..)`). It resolves a task's
//!   key and params from the genja inventory exactly as genja's own runtime resolver does and
//!   opens through the supervisor; session verification (`replace_task_connection`) goes
//!   through [`ConnectionManager::replace_connection`](crate::ConnectionManager::replace_connection).
//! - [`SupervisedConnection`] is what genja's tasks get: a genja `Connection` that forwards
//!   to a [`ConnectionHandle`](crate::ConnectionHandle).
//! - [`GenjaPlugin`] runs any genja `Connection` implementation as a plugin of this crate, and
//!   [`GenjaPlugin::factory`] / [`GenjaPlugin::prototypes`] turn genja's factories and plugin
//!   objects into this crate's [`ConnectionFactory`](crate::ConnectionFactory).
//!
//! genja's types keep their genja paths here (`genja_core::inventory::ConnectionKey` and so
//! on); [`key_from_genja`], [`params_from_genja`] and their inverses convert between the two
//! crates' keys and params, which have the same fields.

/// genja-core, the version this module is built against, so a user (or the fleet tool) names
/// the same types without a version of its own to keep in step.
pub use genja_core;

mod convert;
mod plugin;
mod resolver;

pub use convert::{key_from_genja, key_to_genja, params_from_genja, params_to_genja};
pub use plugin::GenjaPlugin;
pub use resolver::{SupervisedConnection, SupervisedResolver};
