//! `peerbot`: build/test automation with no master.

mod check;
mod client;
mod cluster;
mod config;
mod core_actor;
mod executor;
mod git;
mod hooks;
mod http;
mod identity;
mod live;
mod metrics;
mod net;
mod notify;
mod precheck;
mod sandbox;
mod seed;
mod store;
mod trybuild;
mod tryclient;
mod watcher;
mod web;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use libp2p::Multiaddr;
use peerbot_protocol::core::{defaults, Config, NodeCore};
use peerbot_protocol::labels::{parse_label, platform_labels};
use peerbot_protocol::repos::RepoPolicy;
use serde_json::json;
use tracing::info;

use crate::core_actor::{load_peer_addrs, CoreActor, SetHttp};
use crate::watcher::{WatchSpec, Watcher};

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[derive(Parser)]
#[command(name = "peerbot", version, about = "Build/test automation with no master: every machine runs the same node.")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node: join the cluster, watch repositories, claim and run builds, serve results.
    Node(NodeArgs),
    /// Cluster keys and admission certificates.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// Print this node's PeerId (creating its key if the data dir has none).
    Id {
        /// The node's data directory.
        #[arg(long, env = "PEERBOT_DATA_DIR", default_value = ".peerbot")]
        data_dir: PathBuf,
    },
    /// Announce a commit through a node's HTTP API (like Buildbot's sendchange).
    Announce {
        #[command(flatten)]
        at: CommitArgs,
    },
    /// List build results from any node.
    Results {
        #[command(flatten)]
        node: NodeUrl,
        #[command(flatten)]
        at: Where,
        /// Only this builder.
        #[arg(long)]
        builder: Option<String>,
        /// Only this status: success, warnings, failure, exception, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List announced changes from any node, with their jobs' states.
    Changes {
        #[command(flatten)]
        node: NodeUrl,
        #[command(flatten)]
        at: Where,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the log of one step of a build, or follow a running job's log.
    Log {
        #[command(flatten)]
        node: NodeUrl,
        /// Build result id (a unique prefix of at least 4 hex digits works);
        /// with --follow, a job id.
        id: String,
        /// Step name, or its 0-based index (not with --follow).
        step: Option<String>,
        /// Print the job's output as it runs, step after step, until its
        /// result is stored; exits non-zero unless the build succeeded.
        #[arg(long, conflicts_with = "step")]
        follow: bool,
    },
    /// Force a rebuild of a commit, even one built before (new jobs).
    Force {
        #[command(flatten)]
        at: CommitArgs,
        /// Only this builder [default: every builder of the recipe].
        #[arg(long)]
        builder: Option<String>,
        /// Why, for the record.
        #[arg(long, default_value = "forced by a user")]
        reason: String,
    },
    /// Build this work tree's uncommitted changes (and unpushed commits) on
    /// the cluster, as a patch against its upstream commit: a try build,
    /// kept out of the branch's history, blame and notifications.
    Try {
        #[command(flatten)]
        node: NodeUrl,
        /// Only this builder; repeat for more [default: every builder of the patched recipe].
        #[arg(long = "builder")]
        builders: Vec<String>,
        /// The repository as the cluster knows it [default: the upstream remote's URL].
        #[arg(long)]
        repo: Option<String>,
        /// The git work tree.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Wait for the results and print them; exits non-zero unless every build succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a job everywhere: a running build is killed and recorded as cancelled.
    Cancel {
        #[command(flatten)]
        node: NodeUrl,
        /// Job id (a unique prefix of at least 4 hex digits works).
        job: String,
        /// Why, for the record.
        #[arg(long, default_value = "cancelled by a user")]
        reason: String,
    },
    /// List jobs with their state, claimant, lease, current step and queue position.
    Jobs {
        #[command(flatten)]
        node: NodeUrl,
        /// Only jobs in this state: pending, claimed, running, done, superseded, cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the API's indexes from the stored records, on a stopped node.
    Reindex {
        #[arg(long, env = "PEERBOT_DATA_DIR", default_value = ".peerbot")]
        data_dir: PathBuf,
    },
    /// Fill a stopped node's store with synthetic signed history (changes and
    /// results of repo bench://synthetic), for benchmarks and tests.
    #[command(hide = true)]
    SeedHistory {
        #[arg(long, env = "PEERBOT_DATA_DIR", default_value = ".peerbot")]
        data_dir: PathBuf,
        /// How many build results (each with its change).
        #[arg(long)]
        results: usize,
    },
    /// Check a recipe with the parser every node uses, and print what each builder runs.
    Check {
        /// The recipe file [default: .peerbot.toml].
        file: Option<PathBuf>,
    },
    /// List the peers a node knows, with their labels and load.
    Peers {
        #[command(flatten)]
        node: NodeUrl,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Which repository, branch and commit a history listing keeps.
#[derive(Args)]
struct Where {
    /// Only this repository.
    #[arg(long)]
    repo: Option<String>,
    /// Only this branch.
    #[arg(long)]
    branch: Option<String>,
    /// Only this commit (a prefix works).
    #[arg(long)]
    commit: Option<String>,
}

/// A commit of a repository, through some node's API.
#[derive(Args)]
struct CommitArgs {
    #[command(flatten)]
    node: NodeUrl,
    /// Repository URL or path, as the builders should fetch it.
    #[arg(long)]
    repo: String,
    /// Branch the commit is on [default: the repository's HEAD branch].
    #[arg(long)]
    branch: Option<String>,
    /// Commit id, a unique prefix, or a ref (HEAD, a branch, a tag; resolved
    /// in the repository when it is a local clone).
    #[arg(long)]
    commit: String,
}

impl CommitArgs {
    /// A local path is sent absolute, so that every node fetches the same repository.
    fn repo(&self) -> String {
        client::repo_string(&self.repo)
    }

    fn commit(&self) -> anyhow::Result<String> {
        check::resolve_commit(&self.repo(), &self.commit)
    }
}

#[derive(Args)]
struct NodeUrl {
    /// Base URL of any node's HTTP API (host:port works).
    #[arg(long = "node", env = "PEERBOT_NODE", default_value = "http://127.0.0.1:7401")]
    url: String,
    /// The node's API token, needed for announce, force and cancel (see DATA_DIR/api.token).
    #[arg(long, env = "PEERBOT_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Args)]
struct NodeArgs {
    /// TOML file with node settings (keys as the long flags, `_` for `-`); flags and PEERBOT_* variables override it.
    #[arg(long, env = "PEERBOT_CONFIG")]
    config: Option<PathBuf>,
    /// Where the node keeps its key, database, repository mirrors and build dirs.
    #[arg(long, env = "PEERBOT_DATA_DIR", default_value = ".peerbot")]
    data_dir: PathBuf,
    /// Address of the HTTP API and web page (port 0: any free port, see node.json).
    #[arg(long, env = "PEERBOT_HTTP", default_value = "127.0.0.1:7401")]
    http: String,
    /// A host name the HTTP API answers to, beside localhost, the loopback addresses and the bound address; repeatable.
    #[arg(long, env = "PEERBOT_HTTP_HOST", value_delimiter = ',')]
    http_host: Vec<String>,
    /// libp2p listen multiaddr; repeatable.
    #[arg(long, env = "PEERBOT_LISTEN", value_delimiter = ',', default_value = "/ip4/0.0.0.0/tcp/7400")]
    listen: Vec<Multiaddr>,
    /// Multiaddr of a node to join through (with /p2p/<id>); repeatable. Retried with backoff.
    #[arg(long, env = "PEERBOT_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// Repository to watch, PATH_OR_URL[#branch] (default branch: the remote's HEAD); repeatable.
    #[arg(long, env = "PEERBOT_WATCH", value_delimiter = ',')]
    watch: Vec<WatchSpec>,
    /// Build only repositories this matches (a URL or absolute path, and what is under it; or a glob: `*` within one `/` segment, `**` across) [default: remote URLs; local paths only when watched]; repeatable.
    #[arg(long, env = "PEERBOT_ALLOW_REPO", value_delimiter = ',', value_name = "PATTERN")]
    allow_repo: Vec<String>,
    /// Seconds between polls of watched repositories.
    #[arg(long, env = "PEERBOT_POLL_SECS", default_value_t = 30)]
    poll_secs: u64,
    /// Extra label key=value, beside os=<os> and arch=<arch>; repeatable.
    #[arg(long, env = "PEERBOT_LABEL", value_delimiter = ',')]
    label: Vec<String>,
    /// Builds this node runs at once.
    #[arg(long, env = "PEERBOT_EXECUTORS", default_value_t = 1)]
    executors: u32,
    /// This node's name, shown instead of its PeerId [default: the host name].
    #[arg(long, env = "PEERBOT_NAME")]
    name: Option<String>,
    /// Megabytes of RocksDB block cache, shared by the database's column
    /// families: the history API reads from it.
    #[arg(long, env = "PEERBOT_DB_CACHE_MB", default_value_t = 256)]
    db_cache_mb: usize,
    /// Megabytes of decoded records and lookups the history API keeps,
    /// in front of the block cache; 0 keeps none.
    #[arg(long, env = "PEERBOT_READ_CACHE_MB", default_value_t = 32)]
    read_cache_mb: usize,
    /// Milliseconds between heartbeats (labels, free slots, lease renewals).
    #[arg(long, env = "PEERBOT_HEARTBEAT_MS", default_value_t = defaults::HEARTBEAT_MS)]
    heartbeat_ms: u64,
    /// Milliseconds the node at rank r waits, times r, before claiming a job.
    #[arg(long, env = "PEERBOT_CLAIM_STAGGER_MS", default_value_t = defaults::CLAIM_STAGGER_MS)]
    claim_stagger_ms: u64,
    /// Seconds a claim's lease lasts without renewal.
    #[arg(long, env = "PEERBOT_LEASE_SECS", default_value_t = defaults::LEASE_MS / 1000)]
    lease_secs: u64,
    /// Seconds between reconciliations with a random peer.
    #[arg(long, env = "PEERBOT_SYNC_SECS", default_value_t = defaults::SYNC_INTERVAL_MS / 1000)]
    sync_secs: u64,
    /// How many nodes keep a copy of each step log (those ranking highest for its hash).
    #[arg(long, env = "PEERBOT_LOG_REPLICAS", default_value_t = defaults::LOG_REPLICAS)]
    log_replicas: usize,
    /// Token that HTTP writes (announce, force, cancel) must present [default: DATA_DIR/api.token, made on first start].
    #[arg(long, env = "PEERBOT_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Read that token from FILE (mode 0600, at least 16 characters): one file copied to
    /// every node lets one token write through any node of the cluster.
    #[arg(long, env = "PEERBOT_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// The secret of push webhooks (POST /api/v1/hooks/{github,gitlab,gitea}), read from FILE
    /// (mode 0600, at least 16 characters) [default: hooks refused].
    #[arg(long, env = "PEERBOT_HOOK_SECRET_FILE")]
    hook_secret_file: Option<PathBuf>,
    /// The address users reach this node's pages at, for links in notifications [default: http://HTTP/].
    #[arg(long, env = "PEERBOT_PUBLIC_URL")]
    public_url: Option<String>,
    /// Drop this node's copies of logs of results older than this (e.g. 180d); records stay. Default: keep all.
    #[arg(long, env = "PEERBOT_LOG_HORIZON", value_parser = parse_duration_ms)]
    log_horizon: Option<u64>,
    /// The public key of the cluster to join (`peerbot cluster init` printed it) [default: a cluster of this node's own, made at first start].
    #[arg(long, env = "PEERBOT_CLUSTER")]
    cluster: Option<String>,
    /// This node's admission certificate for --cluster (`peerbot cluster admit` printed it).
    #[arg(long, env = "PEERBOT_ADMISSION")]
    admission: Option<PathBuf>,
    /// Where builds check out and run, outside the data dir [default: DATA_DIR-work, beside it].
    #[arg(long, env = "PEERBOT_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// How build steps are confined: bwrap hides the data dir and the config file from them.
    #[arg(long, env = "PEERBOT_SANDBOX", value_enum, default_value = "auto")]
    sandbox: sandbox::SandboxMode,
}

fn parse_duration_ms(s: &str) -> Result<u64, String> {
    humantime::parse_duration(s).map(|d| d.as_millis() as u64).map_err(|e| format!("{s:?}: {e} (try 180d, 12h, 30m)"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("node") {
        if let Err(e) = config::apply_config_file(&args) {
            eprintln!("peerbot: {e:#}");
            std::process::exit(2);
        }
    }
    if args.get(1).map(String::as_str) != Some("node") {
        // `peerbot jobs | head` ends quietly when the reader goes, as Unix
        // tools do; the node keeps Rust's default and sees EPIPE as errors.
        // SAFETY: setting a signal's disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Node(args) => run_node(args),
        Cmd::Cluster { cmd } => cluster::run(cmd),
        Cmd::Id { data_dir } => identity::load_or_create(&data_dir).map(|k| println!("{}", k.public().to_peer_id())),
        Cmd::Announce { at } => announce(&at),
        Cmd::Results { node, at, builder, status, limit, json } => {
            let limit = limit.to_string();
            client::get_json(
                &node.url,
                "/api/v1/builds",
                &[
                    ("repo", at.repo.as_deref()),
                    ("branch", at.branch.as_deref()),
                    ("commit", at.commit.as_deref()),
                    ("builder", builder.as_deref()),
                    ("status", status.as_deref()),
                    ("limit", Some(&limit)),
                ],
            )
            .and_then(|v| {
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    Ok(())
                } else {
                    client::print_results(&v)
                }
            })
        }
        Cmd::Log { node, id, follow: true, .. } => client::follow_log(&node.url, &id).and_then(|status| {
            if matches!(status.as_str(), "success" | "warnings") {
                Ok(())
            } else {
                anyhow::bail!("the build's status is {status}")
            }
        }),
        Cmd::Log { step: None, id, .. } => {
            Err(anyhow::anyhow!("give the step (its name or 0-based index) of build {id}, or --follow a job"))
        }
        Cmd::Log { node, id, step: Some(step), follow: false } => {
            client::get_text(&node.url, &format!("/api/v1/builds/{id}/steps/{step}/log")).map(|t| {
                // Raw into a pipe or a file; made safe for a terminal.
                if std::io::stdout().is_terminal() {
                    print!("{}", client::clean_log(&t))
                } else {
                    print!("{t}")
                }
            })
        }
        Cmd::Changes { node, at, limit, json } => {
            let limit = limit.to_string();
            let q = [
                ("repo", at.repo.as_deref()),
                ("branch", at.branch.as_deref()),
                ("commit", at.commit.as_deref()),
                ("limit", Some(limit.as_str())),
            ];
            client::get_json(&node.url, "/api/v1/changes", &q).and_then(|v| {
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    Ok(())
                } else {
                    client::print_changes(&v)
                }
            })
        }
        Cmd::Force { at, builder, reason } => force(&at, builder, reason),
        Cmd::Try { node, builders, repo, dir, wait } => {
            let args = tryclient::TryArgs {
                node: &node.url,
                token: node.token.as_deref(),
                dir: &dir,
                repo: repo.as_deref(),
                builders: &builders,
                wait,
            };
            tryclient::run(args).map(|all_good| {
                if !all_good {
                    std::process::exit(1);
                }
            })
        }
        Cmd::Check { file } => check::check(file.as_deref()),
        Cmd::Cancel { node, job, reason } => client::post_json(
            &node.url,
            node.token.as_deref(),
            &format!("/api/v1/jobs/{job}/cancel"),
            &json!({"reason": reason}),
        )
        .map(|v| {
            println!(
                "cancelled job {} (record {})",
                client::clean(v["job"].as_str().unwrap_or("?")),
                client::clean(v["cancel_record"].as_str().unwrap_or("?"))
            )
        }),
        Cmd::Jobs { node, state, json } => client::get_json(&node.url, "/api/v1/jobs", &[("state", state.as_deref())])
            .and_then(|v| {
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    Ok(())
                } else {
                    client::print_jobs(&v)
                }
            }),
        Cmd::SeedHistory { data_dir, results } => seed::seed_history(&data_dir, results),
        Cmd::Reindex { data_dir } => {
            // The rebuild logs its progress.
            init_logging();
            store::RocksStore::open_reindexed(&data_dir.join("db")).map(|(_, n)| {
                println!("indexed {n} records in {}", data_dir.display());
            })
        }
        Cmd::Peers { node, json } => client::get_json(&node.url, "/api/v1/peers", &[]).and_then(|v| {
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(())
            } else {
                client::print_peers(&v)
            }
        }),
    };
    if let Err(e) = r {
        eprintln!("peerbot: {}", client::clean(&format!("{e:#}")));
        std::process::exit(1);
    }
}

fn announce(at: &CommitArgs) -> anyhow::Result<()> {
    client::post_json(
        &at.node.url,
        at.node.token.as_deref(),
        "/api/v1/changes",
        &json!({"repo": at.repo(), "branch": at.branch, "commit": at.commit()?}),
    )
    .map(|v| {
        let jobs: Vec<String> = v["jobs"]
            .as_array()
            .map(|a| a.iter().filter_map(|j| j["builder"].as_str()).map(client::clean).collect())
            .unwrap_or_default();
        let known = if v["already_known"].as_bool().unwrap_or(false) { " (already known)" } else { "" };
        println!(
            "change {}{} for commit {}: builders {}",
            client::clean(v["id"].as_str().unwrap_or("?")),
            known,
            client::clean(v["commit"].as_str().unwrap_or("?")),
            jobs.join(", ")
        );
        if let Some(e) = v["recipe_error"].as_str() {
            println!("recipe error: {}", client::clean(e));
        }
        if let Some(other) = v["disputes"].as_str() {
            println!(
                "another node announced this commit with another recipe (change {}); both are kept",
                client::clean(other)
            );
        }
    })
}

fn force(at: &CommitArgs, builder: Option<String>, reason: String) -> anyhow::Result<()> {
    client::post_json(
        &at.node.url,
        at.node.token.as_deref(),
        "/api/v1/force",
        &json!({"repo": at.repo(), "branch": at.branch, "commit": at.commit()?, "builder": builder, "reason": reason}),
    )
    .map(|v| {
        let jobs: Vec<String> = v["jobs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|j| {
                        let (b, id) = (j["builder"].as_str().unwrap_or("?"), j["job"].as_str().unwrap_or("?"));
                        client::clean(&format!("{b} {id}"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "forced change {} for commit {}",
            client::clean(v["id"].as_str().unwrap_or("?")),
            client::clean(v["commit"].as_str().unwrap_or("?"))
        );
        for j in jobs {
            println!("  job {j}");
        }
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PEERBOT_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,libp2p_gossipsub=warn,libp2p_kad=error,libp2p_swarm=warn,actix_server=warn",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run_node(a: NodeArgs) -> anyhow::Result<()> {
    init_logging();
    let mut labels = platform_labels(std::env::consts::OS, std::env::consts::ARCH);
    for l in &a.label {
        let l = parse_label(l).map_err(|e| anyhow::anyhow!("--label: {e}"))?;
        let key = l.split('=').next().unwrap_or_default().to_string();
        labels.retain(|x| !x.starts_with(&format!("{key}=")));
        labels.push(l);
    }
    if a.executors == 0 || a.executors > executor::MAX_EXECUTORS {
        anyhow::bail!("--executors must be 1 to {}", executor::MAX_EXECUTORS);
    }
    if a.heartbeat_ms < 50 || a.poll_secs == 0 || a.lease_secs == 0 || a.sync_secs == 0 {
        anyhow::bail!("--heartbeat-ms must be at least 50, and --poll-secs, --lease-secs, --sync-secs at least 1");
    }
    let watched: Vec<String> = a.watch.iter().map(|w| w.repo.clone()).collect();
    let repos = RepoPolicy::new(&a.allow_repo, &watched).map_err(|e| anyhow::anyhow!("--allow-repo {e}"))?;
    let key = identity::load_or_create(&a.data_dir)?;
    let extra_labels: Vec<String> = a.label.iter().filter_map(|l| parse_label(l).ok()).collect();
    let membership =
        cluster::admit_self(&a.data_dir, &key, a.cluster.as_deref(), a.admission.as_deref(), &labels, &extra_labels)?;
    let cluster_json = serde_json::json!({
        "id": membership.cluster.to_text(),
        "keeper": membership.keeper,
        "admitted_labels": membership.admission.labels(),
        "admission_expires_ms": membership.admission.expires_ms(),
    });
    info!(cluster = %membership.cluster.to_text(), keeper = membership.keeper, "admitted");
    let work_root = a.work_dir.clone().unwrap_or_else(|| sandbox::default_work_root(&a.data_dir));
    let args: Vec<String> = std::env::args().collect();
    let config_file = config::config_path(&args).map(PathBuf::from);
    let (notifiers, notifier_secrets) = config::notifiers(&args)?;
    if let Some(u) = &a.public_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            anyhow::bail!("--public-url {u:?} is not an http:// or https:// URL");
        }
    }
    let secrets: Vec<&std::path::Path> = config_file
        .iter()
        .chain(a.api_token_file.iter())
        .chain(a.hook_secret_file.iter())
        .chain(notifier_secrets.iter())
        .map(|p| p.as_path())
        .collect();
    let jail = std::sync::Arc::new(sandbox::StepJail::prepare(a.sandbox, &work_root, &a.data_dir, &secrets)?);
    let api_token = match (a.api_token.clone(), &a.api_token_file) {
        (Some(_), Some(_)) => anyhow::bail!("--api-token and --api-token-file: give one"),
        (Some(t), None) if t.trim().len() >= 16 => t.trim().to_string(),
        (Some(_), None) => anyhow::bail!("--api-token must be at least 16 characters"),
        (None, Some(f)) => identity::token_file(f, "--api-token-file")?,
        (None, None) => identity::api_token(&a.data_dir)?,
    };
    let hook_secret =
        a.hook_secret_file.as_deref().map(|f| identity::token_file(f, "--hook-secret-file")).transpose()?;
    store::set_block_cache_mb(a.db_cache_mb);
    store::set_read_cache_mb(a.read_cache_mb);
    let store = store::RocksStore::open(&a.data_dir.join("db"))?;
    let known: Vec<(libp2p::PeerId, Vec<Multiaddr>)> = load_peer_addrs(&store)
        .into_iter()
        .filter_map(|(p, addrs)| Some((p.parse().ok()?, addrs.iter().filter_map(|a| a.parse().ok()).collect())))
        .collect();
    // A notifier's label makes the node one of those its notices are
    // claimed among.
    let mut labels = labels;
    for n in &notifiers {
        labels.push(peerbot_protocol::notify::notifier_label(&n.name));
    }
    let mut cfg = Config::new(labels.clone(), a.executors);
    cfg.notifiers = notifiers.iter().map(|n| n.spec()).collect();
    cfg.heartbeat_ms = a.heartbeat_ms;
    cfg.claim_stagger_ms = a.claim_stagger_ms;
    cfg.lease_ms = a.lease_secs * 1000;
    cfg.sync_interval_ms = a.sync_secs * 1000;
    cfg.seed = rand::random();
    cfg.log_replicas = a.log_replicas;
    cfg.log_horizon_ms = a.log_horizon;
    cfg.cluster = Some(membership.cluster.clone());
    cfg.admission = Some(membership.admission.clone());
    let hooks = actix_web::web::Data::new(hooks::Hooks { secret: hook_secret, repos: repos.clone() });
    cfg.repos = repos;
    cfg.name = identity::node_name(a.name.as_deref())?;
    let name = cfg.name.clone();
    let token_at = match &a.api_token_file {
        Some(f) => f.display().to_string(),
        None if a.api_token.is_none() => a.data_dir.join("api.token").display().to_string(),
        None => "given with --api-token".into(),
    };
    let peer_id = key.public().to_peer_id();
    info!(%peer_id, labels = ?labels, data_dir = %a.data_dir.display(), "starting node");
    if cfg.repos.remote_by_default() {
        info!(watched = ?cfg.repos.watched(), "building remote repositories and the watched ones");
    } else {
        info!(allow = ?cfg.repos.patterns(), watched = ?cfg.repos.watched(), "building only the repositories allowed");
    }

    let sys = actix_rt::System::new();
    let data_dir = a.data_dir.clone();
    sys.block_on(async move {
        // Bounded both ways; what each side does when the other is behind
        // is in `CoreActor::send_net` and `net::ToCore`.
        let (net_tx, net_rx) = tokio::sync::mpsc::channel(net::NET_COMMAND_CAPACITY);
        let (ev_tx, ev_rx) = tokio::sync::mpsc::channel(net::NET_EVENT_CAPACITY);
        let started = std::time::Instant::now();
        let mut core = NodeCore::new(cfg, key.clone(), store.clone(), now_ms());
        let how = core.startup();
        info!(
            records_read = how.records_read,
            from_checkpoint = how.from_checkpoint,
            after_checkpoint = how.after_checkpoint,
            ms = started.elapsed().as_millis() as u64,
            "history read"
        );
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let prechecked = precheck::Prechecked::new(threads);
        core.set_verifier(prechecked.clone());
        let core_addr = CoreActor::create(|ctx| {
            ctx.set_mailbox_capacity(core_actor::CORE_MAILBOX);
            ctx.add_stream(tokio_stream(ev_rx));
            CoreActor::new(core, net_tx, data_dir.clone(), jail).with_precheck(prechecked)
        });
        let net_cfg = net::NetConfig { listen: a.listen.clone(), bootstrap: a.bootstrap.clone(), known };
        let net_failed = net::thread::spawn(key, net_cfg, net_rx, ev_tx)?;
        if !a.watch.is_empty() {
            Watcher::new(
                a.watch.clone(),
                Duration::from_secs(a.poll_secs),
                data_dir.clone(),
                store.clone(),
                core_addr.clone(),
            )
            .start();
        }
        let state = actix_web::web::Data::new(http::AppState::new(
            core_addr.clone(),
            store.clone(),
            data_dir.clone(),
            api_token,
            http::allowed_hosts(&a.http, &a.http_host),
            name.clone(),
        ));
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(state.clone())
                .app_data(hooks.clone())
                .wrap(actix_web::middleware::from_fn(http::check_host))
                .configure(http::routes)
                .configure(trybuild::routes)
                .configure(hooks::routes)
                .configure(web::routes)
        })
        .workers(2)
        .disable_signals()
        .bind(&a.http)
        .with_context(|| format!("cannot serve HTTP on {}", a.http))?;
        let bound = server.addrs().first().map(|s| s.to_string()).unwrap_or_default();
        info!(http = %bound, "HTTP API listening");
        let watched: Vec<String> =
            a.watch.iter().map(|w| format!("{}#{}", w.repo, w.branch.as_deref().unwrap_or("HEAD"))).collect();
        eprintln!("{}", identity::banner(&name, &bound, &token_at, &watched));
        if !notifiers.is_empty() {
            let url = a.public_url.clone().unwrap_or_else(|| identity::page_url(&bound));
            let kinds: Vec<String> = notifiers.iter().map(|n| format!("{} ({})", n.name, n.kind.as_str())).collect();
            info!(notifiers = ?kinds, "notifying");
            let n = notify::Notifiers::new(notifiers, store.clone(), core_addr.clone(), url, name.clone()).start();
            core_addr.do_send(core_actor::SetNotifiers(n));
        }
        core_addr.do_send(SetHttp(bound));
        core_addr.do_send(core_actor::SetCluster(cluster_json));
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let failed = tokio::select! {
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
            e = net_failed => Some(e),
        };
        match &failed {
            Some(e) => tracing::error!("the network failed, shutting down: {e:#}"),
            None => info!("shutting down"),
        }
        executor::kill_all_steps();
        handle.stop(true).await;
        // The core's last input: what it saves must be all it stored.
        let _ = core_addr.send(core_actor::Stop).await;
        if let Err(e) = store.close() {
            tracing::warn!("the next start scans the store's keys: {e:#}");
        }
        System::current().stop();
        match failed {
            Some(e) => Err(e.context("the network failed")),
            None => Ok(()),
        }
    })?;
    Ok(())
}

fn tokio_stream<T: 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
