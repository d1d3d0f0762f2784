//! The faults the drill injects.

use clap::ValueEnum;

/// A fault in the compose stack, held for the fault phase and then repaired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Scenario {
    /// `stop` PostgreSQL (a fast shutdown: connections are closed, new ones refused).
    DatabaseStop,
    /// `pause` PostgreSQL (frozen: connections hang, nothing is refused).
    DatabasePause,
    /// `stop` storagesvc (every instance: booksvc's and nginx's).
    StoragesvcStop,
    /// `stop` Redis, where booksvc keeps its shared copy of the last good answers.
    RedisStop,
    /// `stop` PostgreSQL and Redis together: only booksvc's in-memory copy is left.
    DatabaseAndRedisStop,
}

/// What is done to the containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Stop,
    Pause,
}

impl Action {
    pub fn inject(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Pause => "pause",
        }
    }

    pub fn repair(self) -> &'static str {
        match self {
            Action::Stop => "start",
            Action::Pause => "unpause",
        }
    }
}

/// A part of the stack, which may run as several compose services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Database,
    Redis,
    Storagesvc,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::DatabaseStop,
        Scenario::DatabasePause,
        Scenario::StoragesvcStop,
        Scenario::RedisStop,
        Scenario::DatabaseAndRedisStop,
    ];

    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|value| value.get_name().to_owned())
            .unwrap_or_default()
    }

    pub fn action(self) -> Action {
        match self {
            Scenario::DatabasePause => Action::Pause,
            _ => Action::Stop,
        }
    }

    pub fn parts(self) -> &'static [Part] {
        match self {
            Scenario::DatabaseStop | Scenario::DatabasePause => &[Part::Database],
            Scenario::StoragesvcStop => &[Part::Storagesvc],
            Scenario::RedisStop => &[Part::Redis],
            Scenario::DatabaseAndRedisStop => &[Part::Database, Part::Redis],
        }
    }

    /// Whether booksvc's promises (all 2xx, stale within 1.5 s, fresh within 3 s, p99
    /// with the breaker open, upstream calls) are judged on this scenario.
    pub fn has_targets(self) -> bool {
        matches!(
            self,
            Scenario::DatabaseStop | Scenario::DatabasePause | Scenario::StoragesvcStop
        )
    }

    /// One line for the report.
    pub fn what(self) -> &'static str {
        match self {
            Scenario::DatabaseStop => {
                "PostgreSQL is stopped (`docker stop`, with the compose file's stop signal, SIGINT: a fast shutdown): storagesvc's queries fail at once and it answers 503."
            }
            Scenario::DatabasePause => {
                "PostgreSQL is paused (`docker pause`): queries hang, and storagesvc answers 503 only when its own time bound runs out."
            }
            Scenario::StoragesvcStop => {
                "Every storagesvc instance is stopped (`docker stop`): connections are refused."
            }
            Scenario::RedisStop => {
                "Redis is stopped: booksvc loses the shared copy of its last good answers, storagesvc is fine."
            }
            Scenario::DatabaseAndRedisStop => {
                "PostgreSQL and Redis are stopped together: booksvc has only the copy in its own memory."
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_are_the_command_line_names() {
        let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "database-stop",
                "database-pause",
                "storagesvc-stop",
                "redis-stop",
                "database-and-redis-stop"
            ]
        );
        for scenario in Scenario::ALL {
            assert_eq!(Scenario::from_str(&scenario.name(), false), Ok(scenario));
        }
    }

    #[test]
    fn a_pause_is_undone_by_unpause_and_a_stop_by_start() {
        assert_eq!(Scenario::DatabasePause.action().repair(), "unpause");
        assert_eq!(Scenario::DatabaseAndRedisStop.action().inject(), "stop");
        assert_eq!(Scenario::DatabaseAndRedisStop.action().repair(), "start");
    }
}
