//! The swarm's own thread. On the actix system's thread, beside the Core
//! actor, transfers stalled while the core stored or served a batch, and
//! the transport's encryption took the core's time.

use anyhow::Context as _;
use libp2p::identity::Keypair;
use tokio::sync::{mpsc, oneshot};

use super::{run, NetCommand, NetConfig, NetEvent};

/// Runs the swarm on a thread and single-threaded runtime of its own,
/// until the Core actor drops its command channel. The future returned
/// resolves only if the swarm fails (an address it cannot listen on, say),
/// with the reason: the node then stops rather than run without a network.
pub fn spawn(
    key: Keypair,
    cfg: NetConfig,
    commands: mpsc::Receiver<NetCommand>,
    events: mpsc::Sender<NetEvent>,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Error>> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("the network's runtime")?;
    let (failed, failure) = oneshot::channel();
    std::thread::Builder::new()
        .name("network".into())
        .spawn(move || {
            if let Err(e) = runtime.block_on(run(key, cfg, commands, events)) {
                let _ = failed.send(e);
            }
        })
        .context("starting the network's thread")?;
    Ok(async move {
        match failure.await {
            Ok(e) => e,
            // It ended without failing: the node is stopping anyway.
            Err(_) => std::future::pending().await,
        }
    })
}
