//! The swarm's own thread. On the actix system's thread, beside the Core
//! actor, transfers stalled while the core stored or served a batch, and
//! the transport's encryption took the core's time.

use anyhow::Context as _;
use libp2p::identity::Keypair;
use tokio::sync::{mpsc, oneshot};

use super::{run, NetCommand, NetConfig, NetEvent};

/// Runs the swarm on a thread and single-threaded runtime of its own,
/// until the Core actor drops its command channel. The future returned
/// resolves only if the swarm fails (an address it cannot listen on, say)
/// or its thread panics, with the reason: the node then stops rather than
/// run without a network.
pub fn spawn(
    key: Keypair,
    cfg: NetConfig,
    commands: mpsc::Receiver<NetCommand>,
    events: mpsc::Sender<NetEvent>,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Error>> {
    // `Some` is a failure, `None` the clean end; nothing sent, a panic.
    let (ended, end) = oneshot::channel::<Option<anyhow::Error>>();
    std::thread::Builder::new()
        .name("network".into())
        .spawn(move || {
            // Built here: a runtime dropped on the actix thread would panic.
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("the network's runtime")
                .and_then(|rt| rt.block_on(run(key, cfg, commands, events)));
            let _ = ended.send(outcome.err());
        })
        .context("starting the network's thread")?;
    Ok(async move {
        match end.await {
            Ok(Some(e)) => e,
            // The Core actor has stopped: the node is stopping anyway.
            Ok(None) => std::future::pending().await,
            Err(_) => anyhow::anyhow!("the network's thread panicked (its message is in the log above)"),
        }
    })
}
