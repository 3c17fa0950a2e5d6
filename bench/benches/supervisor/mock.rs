//! The trivial connection both designs are measured with: an alive flag, an `open` that sets
//! it, and an `execute_command` that answers a short string at once. Anything slower would
//! measure the plugin instead of the machinery around it.

use std::sync::Arc;

use async_trait::async_trait;
use connection_supervisor::{
    CommandError, CommandOutput, CommandRunner, Connection, ConnectionFactory, ConnectionKey,
    OpenError, ResolvedConnectionParams,
};
use tokio::sync::Mutex;

use crate::baseline::{BaselineConnection, BaselineFactory};

/// The plugin name the mock factories serve.
pub const PLUGIN: &str = "mock";

/// What `execute_command` answers.
pub const REPLY: &str = "ok\n";

/// The mock for the supervisor: one instance per connection actor. With `concurrent` set it
/// also hands out a [`CommandRunner`] (as SSH does with channels), so handles run its commands
/// without messaging the actor.
#[derive(Debug, Default)]
pub struct MockConnection {
    alive: bool,
    concurrent: bool,
}

#[async_trait]
impl Connection for MockConnection {
    fn is_alive(&self) -> bool {
        self.alive
    }

    async fn open(&mut self, _params: &ResolvedConnectionParams) -> Result<(), OpenError> {
        self.alive = true;
        Ok(())
    }

    async fn close(&mut self) {
        self.alive = false;
    }

    async fn execute_command(&mut self, _command: &str) -> Result<String, CommandError> {
        Ok(REPLY.to_owned())
    }

    fn command_runner(&self) -> Option<(Arc<dyn CommandRunner>, usize)> {
        self.concurrent
            .then(|| (Arc::new(MockRunner) as Arc<dyn CommandRunner>, 8))
    }
}

struct MockRunner;

#[async_trait]
impl CommandRunner for MockRunner {
    async fn run(&self, _command: &str) -> Result<CommandOutput, CommandError> {
        Ok(CommandOutput {
            stdout: REPLY.to_owned(),
            ..CommandOutput::default()
        })
    }
}

/// The supervisor's factory: a [`MockConnection`] for plugin [`PLUGIN`], running commands
/// concurrently when `concurrent` is set.
pub fn factory(concurrent: bool) -> Arc<ConnectionFactory> {
    Arc::new(move |key: &ConnectionKey| {
        (key.plugin_name == PLUGIN).then(|| {
            Box::new(MockConnection {
                alive: false,
                concurrent,
            }) as Box<dyn Connection>
        })
    })
}

/// The same mock for the lock-based baseline.
#[derive(Debug, Default)]
pub struct BaselineMock {
    alive: bool,
}

#[async_trait]
impl BaselineConnection for BaselineMock {
    fn is_alive(&self) -> bool {
        self.alive
    }

    async fn open(&mut self, _params: &ResolvedConnectionParams) -> Result<(), String> {
        self.alive = true;
        Ok(())
    }

    async fn execute_command(&mut self, _command: &str) -> Result<String, String> {
        Ok(REPLY.to_owned())
    }

    fn close(&mut self) {
        self.alive = false;
    }
}

/// The baseline's factory: an `Arc<Mutex<BaselineMock>>` for plugin [`PLUGIN`].
pub fn baseline_factory() -> Arc<BaselineFactory> {
    Arc::new(|key: &ConnectionKey| {
        (key.plugin_name == PLUGIN).then(|| {
            Arc::new(Mutex::new(BaselineMock::default())) as Arc<Mutex<dyn BaselineConnection>>
        })
    })
}

/// `count` keys of plugin [`PLUGIN`], named `h0`, `h1`, ...
pub fn keys(count: usize) -> Vec<ConnectionKey> {
    (0..count)
        .map(|i| ConnectionKey::new(format!("h{i}"), PLUGIN))
        .collect()
}
