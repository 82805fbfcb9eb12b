//! The agent's one error type.
//!
//! Variants carry what a person needs to act: the replica or container, the
//! engine's own message, and the Kubernetes-style `reason` a replica status
//! reports (`ErrImagePull`, `PortInUse`, …). [`AgentError::is_retryable`]
//! splits what the agent retries with backoff from what it gives up on.

use std::time::Duration;

/// Everything that can go wrong inside the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The Docker engine does not answer at start-up.
    #[error(
        "cannot reach the Docker engine at {socket} ({reason}); start Docker or use --runtime process"
    )]
    DockerUnavailable { socket: String, reason: String },

    /// Docker answered 404 for a container (or exec) the agent named.
    #[error("no such container {id}")]
    NoSuchContainer { id: String },

    /// The image is not present and could not be pulled.
    #[error("cannot pull image {image}: {message}")]
    ImagePull { image: String, message: String },

    /// A host port the replica asks for is taken on this host.
    #[error("host port is already in use: {message}")]
    PortInUse { message: String },

    /// Docker answered 409: a container with this name exists, or a running
    /// container cannot be removed.
    #[error("container {name} conflicts with an existing one: {message}")]
    Conflict { name: String, message: String },

    /// The assignment cannot be run as given (bad template, no command for the
    /// process runtime, several containers…). Retrying does not help.
    #[error("invalid replica spec: {0}")]
    InvalidSpec(String),

    /// A referenced ConfigMap, Secret or key is missing, or a volume cannot
    /// be made ready. Retried at once when the objects change, and with
    /// backoff otherwise. The sentence never holds a Secret's value.
    #[error("{0}")]
    CreateContainerConfig(String),

    /// The container could not be created or started for another reason.
    #[error("cannot start the container: {0}")]
    StartFailed(String),

    /// Any other answer from the Docker engine.
    #[error("Docker engine error while {action}: {message}")]
    Docker { action: String, message: String },

    /// An operation on the engine or a process took longer than allowed.
    #[error("{what} timed out after {}", drover_proto::duration::short(*after))]
    Timeout { what: String, after: Duration },

    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A logs or exec request named a replica this node does not run.
    #[error("no replica named {0} runs on this node")]
    UnknownReplica(String),

    /// `logs --previous` for a replica that has not restarted on this node.
    #[error("replica {0} has no previous run on this node (it has not restarted here)")]
    NoPreviousRun(String),

    /// The runtime cannot do what was asked (one sentence saying why).
    #[error("{0}")]
    Unsupported(String),

    /// The controller refused this agent for good: another live agent holds
    /// its node name, or one of its settings cannot work in this cluster. The
    /// message is the controller's sentence.
    #[error("{0}")]
    Refused(String),

    /// A command-line value or the agent's environment is unusable.
    #[error("{0}")]
    Config(String),
}

impl AgentError {
    /// The Kubernetes-style reason a replica status reports for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            AgentError::ImagePull { .. } => "ErrImagePull",
            AgentError::PortInUse { .. } => "PortInUse",
            AgentError::InvalidSpec(_) => "InvalidSpec",
            AgentError::Conflict { .. } => "ContainerConflict",
            AgentError::CreateContainerConfig(_) => "CreateContainerConfigError",
            _ => "StartError",
        }
    }

    /// The sentence a replica status carries: the engine's own words where
    /// there are some.
    pub fn status_message(&self) -> String {
        match self {
            AgentError::ImagePull { message, .. }
            | AgentError::PortInUse { message }
            | AgentError::Conflict { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// Whether trying again later may succeed (ports free up, images appear,
    /// the engine comes back). Invalid specs never get better.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            AgentError::InvalidSpec(_) | AgentError::Refused(_) | AgentError::Config(_)
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> AgentError {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Crate-wide result.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
