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
    /// Packets between the proxy under test and storagesvc dropped (iptables in the
    /// proxy's network namespace): connects and reads hang, nothing is refused.
    StoragesvcPartition,
    /// Every answer of storagesvc held back 2 s (its fault-injection layer).
    StoragesvcSlow,
    /// Half of storagesvc's answers `503` (its fault-injection layer).
    StoragesvcFlaky,
    /// Distinct keys at twice storagesvc's capacity, its CPU limited during the fault.
    Overload,
    /// `pause` one storagesvc replica of several (the swarm stack, `scripts/drill-swarm.sh`):
    /// the others are fine.
    StoragesvcReplicaPause,
}

/// What is done to the stack during the fault phase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// `docker stop`, repaired by `docker start`.
    Stop,
    /// `docker pause`, repaired by `docker unpause`.
    Pause,
    /// DROP rules for storagesvc's address and port, in the proxy's network namespace.
    Partition,
    /// A fault set on storagesvc's admin listener (`PUT /faults`), removed with `DELETE`.
    StoragesvcFault { delay_ms: u64, error_rate: f64 },
    /// storagesvc's CPU limited with `docker update --cpus`, and restored.
    CpuLimit,
}

/// The set of promises a scenario is judged on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promises {
    /// storagesvc cannot answer (or not in time): all 2xx, stale fast, few calls.
    Outage,
    /// storagesvc answers only part of the load: all 2xx, p99, the fresh rate it allows.
    Overload,
    /// storagesvc is fine: all 2xx and a low stale share.
    Healthy,
    /// One storagesvc replica of several is sick, the rest are fine: all 2xx, fresh, fast.
    OneReplicaSick,
}

/// A part of the stack, which may run as several compose services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Database,
    Redis,
    Storagesvc,
    /// One container of storagesvc, where it runs as several.
    StoragesvcReplica,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::DatabaseStop,
        Scenario::DatabasePause,
        Scenario::StoragesvcStop,
        Scenario::RedisStop,
        Scenario::DatabaseAndRedisStop,
        Scenario::StoragesvcPartition,
        Scenario::StoragesvcSlow,
        Scenario::StoragesvcFlaky,
        Scenario::Overload,
    ];

    /// The scenarios of a stack with several storagesvc replicas (the swarm stack).
    pub const REPLICATED: [Scenario; 1] = [Scenario::StoragesvcReplicaPause];

    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|value| value.get_name().to_owned())
            .unwrap_or_default()
    }

    pub fn action(self) -> Action {
        match self {
            Scenario::DatabasePause | Scenario::StoragesvcReplicaPause => Action::Pause,
            Scenario::StoragesvcPartition => Action::Partition,
            Scenario::StoragesvcSlow => Action::StoragesvcFault {
                delay_ms: 2000,
                error_rate: 0.0,
            },
            Scenario::StoragesvcFlaky => Action::StoragesvcFault {
                delay_ms: 0,
                error_rate: 0.5,
            },
            Scenario::Overload => Action::CpuLimit,
            Scenario::DatabaseStop
            | Scenario::StoragesvcStop
            | Scenario::RedisStop
            | Scenario::DatabaseAndRedisStop => Action::Stop,
        }
    }

    pub fn parts(self) -> &'static [Part] {
        match self {
            Scenario::DatabaseStop | Scenario::DatabasePause => &[Part::Database],
            Scenario::StoragesvcStop
            | Scenario::StoragesvcPartition
            | Scenario::StoragesvcSlow
            | Scenario::StoragesvcFlaky
            | Scenario::Overload => &[Part::Storagesvc],
            Scenario::StoragesvcReplicaPause => &[Part::StoragesvcReplica],
            Scenario::RedisStop => &[Part::Redis],
            Scenario::DatabaseAndRedisStop => &[Part::Database, Part::Redis],
        }
    }

    /// Which promises are judged on this scenario.
    pub fn promises(self) -> Promises {
        match self {
            Scenario::DatabaseStop
            | Scenario::DatabasePause
            | Scenario::StoragesvcStop
            | Scenario::StoragesvcPartition
            | Scenario::StoragesvcSlow
            | Scenario::StoragesvcFlaky => Promises::Outage,
            Scenario::Overload => Promises::Overload,
            Scenario::RedisStop | Scenario::DatabaseAndRedisStop => Promises::Healthy,
            Scenario::StoragesvcReplicaPause => Promises::OneReplicaSick,
        }
    }

    /// Whether the scenario needs several storagesvc replicas.
    pub fn needs_replicas(self) -> bool {
        self.parts().contains(&Part::StoragesvcReplica)
    }

    /// Whether the load reads many distinct keys (one page each) rather than one list.
    pub fn distinct_keys(self) -> bool {
        self == Scenario::Overload
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
            Scenario::StoragesvcPartition => {
                "Packets between the proxy under test and storagesvc are dropped (iptables DROP rules in the proxy container's network namespace, both directions, storagesvc's port): connects and reads hang, nothing is refused."
            }
            Scenario::StoragesvcSlow => {
                "storagesvc holds every answer back 2 s (its fault-injection layer, `PUT /faults` on its admin port)."
            }
            Scenario::StoragesvcFlaky => {
                "storagesvc answers every other request `503` with `Retry-After: 1` (its fault-injection layer)."
            }
            Scenario::Overload => {
                "Reads of distinct warm keys (`/books?limit=1&offset=k`) at twice storagesvc's capacity, measured first with the same CPU limit; during the fault storagesvc's CPU is limited (`docker update --cpus`, handed out in 20 ms CFS periods)."
            }
            Scenario::StoragesvcReplicaPause => {
                "On the swarm stack (storagesvc ×3, booksvc ×2 behind the edge), one storagesvc replica is paused (`docker pause`): its connections hang, the other two are fine. nginx has all three replicas as the servers of its upstream group."
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
                "database-and-redis-stop",
                "storagesvc-partition",
                "storagesvc-slow",
                "storagesvc-flaky",
                "overload"
            ]
        );
        assert_eq!(
            Scenario::StoragesvcReplicaPause.name(),
            "storagesvc-replica-pause"
        );
        for scenario in Scenario::ALL.into_iter().chain(Scenario::REPLICATED) {
            assert_eq!(Scenario::from_str(&scenario.name(), false), Ok(scenario));
        }
    }

    #[test]
    fn the_new_faults_are_on_storagesvc_or_between_it_and_the_proxy() {
        assert_eq!(Scenario::StoragesvcPartition.action(), Action::Partition);
        assert_eq!(
            Scenario::StoragesvcFlaky.action(),
            Action::StoragesvcFault {
                delay_ms: 0,
                error_rate: 0.5
            }
        );
        assert_eq!(Scenario::Overload.promises(), Promises::Overload);
        assert_eq!(Scenario::RedisStop.promises(), Promises::Healthy);
        for scenario in [Scenario::StoragesvcSlow, Scenario::Overload] {
            assert_eq!(scenario.parts(), [Part::Storagesvc]);
        }
    }

    #[test]
    fn the_replica_scenario_pauses_one_replica_and_only_it_needs_replicas() {
        let scenario = Scenario::StoragesvcReplicaPause;
        assert_eq!(scenario.action(), Action::Pause);
        assert_eq!(scenario.parts(), [Part::StoragesvcReplica]);
        assert_eq!(scenario.promises(), Promises::OneReplicaSick);
        assert!(scenario.needs_replicas());
        assert!(!Scenario::ALL.iter().any(|s| s.needs_replicas()));
    }
}
