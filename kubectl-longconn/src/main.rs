//! `kubectl longconn`: a LongConnService's rollout and its revisions, and the hands on them
//! (promote, pause, resume, abort, undo). It reads and merge-patches the LongConnService and
//! nothing else, so it needs only get and patch on `longconnservices.longconn.dev`, and list and
//! watch for `status --watch`.
//!
//! The decisions ([`decide`]), the records they name ([`history`]) and the summaries
//! ([`render`]) are pure; this file is the shell: the arguments, the client, one read, one patch
//! or one watch.

mod decide;
#[cfg(test)]
mod fixtures;
mod history;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};
use longconn_operator::crd::LongConnService;

use crate::decide::{Change, Refused};

/// The field manager of the plugin's patches.
const MANAGER: &str = "kubectl-longconn";

/// A LongConnService's rollout: its status and history, and promote, pause, resume, abort or
/// undo it.
#[derive(Parser, Debug)]
#[command(name = "kubectl-longconn", bin_name = "kubectl longconn", version)]
struct Cli {
    /// The namespace of the LongConnService (default: the current context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The rollout in words: revisions, phase, step, what holds it, health gate, drains,
    /// sessions.
    Status {
        /// The LongConnService.
        name: String,
        /// Print it again on every change, until interrupted.
        #[arg(short, long)]
        watch: bool,
    },
    /// End the pause step the rollout is held at.
    Promote {
        /// The LongConnService.
        name: String,
        /// Skip every step left.
        #[arg(long)]
        full: bool,
    },
    /// Hold any rollout or scale-down at its next safe point (spec.rollout.paused: true).
    Pause {
        /// The LongConnService.
        name: String,
    },
    /// Let rollouts go on (spec.rollout.paused: false).
    Resume {
        /// The LongConnService.
        name: String,
    },
    /// Roll the revision being rolled out back to the current one, its pods drained.
    Abort {
        /// The LongConnService.
        name: String,
    },
    /// The revisions of the pods' spec, oldest first: how each one's rollout ended, what changed.
    History {
        /// The LongConnService.
        name: String,
        /// Show this revision (its number) in full.
        #[arg(long, value_name = "N")]
        revision: Option<i64>,
    },
    /// Return the pods' spec to an earlier revision; it rolls out like any change.
    Undo {
        /// The LongConnService.
        name: String,
        /// The revision's number in `kubectl longconn history` (default: the one before the
        /// revision the pods run).
        #[arg(long, value_name = "N")]
        to_revision: Option<i64>,
    },
}

/// What failed, and on which object.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("reading the kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("finding the cluster: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("connecting to the cluster: {0}")]
    Client(#[source] kube::Error),
    #[error("reading longconnservice {namespace}/{name}: {source}")]
    Get {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("patching longconnservice {namespace}/{name}: {source}")]
    Patch {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("{0}")]
    Refused(#[from] Refused),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let config = config(&cli).await?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(Error::Client)?;
    let target = Target {
        api: Api::namespaced(client, &namespace),
        namespace,
    };
    match cli.command {
        Command::Status { name, watch: false } => {
            print!("{}", render::status(&target.get(&name).await?));
        }
        Command::Status { name, watch: true } => target.watch(&name).await,
        Command::Promote { name, full } => {
            target
                .change(&name, |lcs| decide::promote(lcs, full))
                .await?;
        }
        Command::Pause { name } => {
            target
                .change(&name, |lcs| Ok(decide::pause(lcs, true)))
                .await?;
        }
        Command::Resume { name } => {
            target
                .change(&name, |lcs| Ok(decide::pause(lcs, false)))
                .await?;
        }
        Command::Abort { name } => target.change(&name, decide::abort).await?,
        Command::History { name, revision } => {
            let lcs = target.get(&name).await?;
            match revision {
                None => print!("{}", render::history(&lcs)),
                Some(number) => print!("{}", render::revision(&lcs, number)?),
            }
        }
        Command::Undo { name, to_revision } => {
            target
                .change(&name, |lcs| decide::undo(lcs, to_revision))
                .await?;
        }
    }
    Ok(())
}

/// The client configuration: kube's inference (kubeconfig, then in-cluster) unless a context or
/// a kubeconfig file is named.
async fn config(cli: &Cli) -> Result<Config, Error> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    Ok(match &cli.kubeconfig {
        Some(path) => {
            Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
        }
        None if cli.context.is_some() => Config::from_kubeconfig(&options).await?,
        None => Config::infer().await?,
    })
}

/// The LongConnServices of one namespace.
struct Target {
    api: Api<LongConnService>,
    namespace: String,
}

impl Target {
    async fn get(&self, name: &str) -> Result<LongConnService, Error> {
        self.api.get(name).await.map_err(|source| Error::Get {
            namespace: self.namespace.clone(),
            name: name.to_owned(),
            source,
        })
    }

    /// Reads the LongConnService, decides, sends the patch decided on, if any, and says what
    /// it did.
    async fn change(
        &self,
        name: &str,
        decide: impl FnOnce(&LongConnService) -> Result<Change, Refused>,
    ) -> Result<(), Error> {
        let change = decide(&self.get(name).await?)?;
        if let Some(patch) = &change.patch {
            let params = PatchParams {
                field_manager: Some(MANAGER.to_owned()),
                ..PatchParams::default()
            };
            self.api
                .patch(name, &params, &Patch::Merge(patch))
                .await
                .map_err(|source| Error::Patch {
                    namespace: self.namespace.clone(),
                    name: name.to_owned(),
                    source,
                })?;
        }
        println!("{}", change.message);
        Ok(())
    }

    /// Prints the summary each time it changes, until interrupted; a watch that fails is
    /// said on stderr and started again, with backoff.
    async fn watch(&self, name: &str) {
        let mut last = None;
        let mut changes = watcher::watch_object(self.api.clone(), name)
            .default_backoff()
            .boxed();
        while let Some(change) = changes.next().await {
            let lcs = match change {
                Ok(lcs) => lcs,
                Err(e) => {
                    eprintln!("watching longconnservice {}/{name}: {e}", self.namespace);
                    continue;
                }
            };
            let text = match lcs {
                Some(lcs) => render::status(&lcs),
                None => format!("longconnservice {}/{name} not found\n", self.namespace),
            };
            if last.as_ref() != Some(&text) {
                if last.is_some() {
                    println!("---");
                }
                print!("{text}");
                last = Some(text);
            }
        }
    }
}
