//! The daemon's background work: query-log flushes, re-sealing the
//! primary's bundle before it expires, keeping the URL lists fresh,
//! closing a sync port nothing needs, and following the host's addresses
//! for its own name.
//! Each task sends the policy owner only the change it is about.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::owner::Command;
use super::{Daemon, DaemonError, live};
use crate::clock;
use crate::lists::ListDownloader;
use crate::store::files;

/// How often the primary checks whether its bundle is due for re-sealing.
const RESEAL_CHECK: Duration = Duration::from_secs(3600);

/// Writes the query log's new entries to disk. Under a flood the ring
/// overwrites what it cannot hold; those entries are counted, so the log
/// costs bounded CPU and memory whatever the query rate.
pub(super) fn flush_query_log(daemon: &Daemon) {
    let tuning = daemon.snapshot.load().config.tuning.query_log.clone();
    let dir = daemon.data.path(files::QUERY_LOG);
    match daemon
        .handler
        .query_log()
        .flush(&dir, clock::unix_now_ms(), &tuning)
    {
        Ok(report)
            if report.lost > 0 && !daemon.query_log_loss_reported.swap(true, Ordering::Relaxed) =>
        {
            tracing::warn!(
                lost = report.lost,
                "query log cannot keep up; entries it drops are counted in status (reported once)"
            );
        }
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(error = %err, dir = %dir.display(), "query log flush failed")
        }
    }
}

/// How often the host's addresses are looked at again.
const OWN_ADDRS_RESCAN: Duration = Duration::from_secs(10);

/// Keeps the addresses the appliance's own name answers (over DNS) those
/// of its links: DHCP may change them at any time.
pub(super) async fn follow_own_addrs(daemon: Arc<Daemon>) {
    loop {
        let addrs = crate::links::all_addrs(&crate::links::scan());
        daemon.handler.set_own_addrs(addrs);
        tokio::time::sleep(OWN_ADDRS_RESCAN).await;
    }
}

/// Flushes the query log every `tuning.query_log.flush_interval`.
pub(super) async fn flush_query_log_periodically(daemon: Arc<Daemon>) {
    loop {
        let interval = daemon
            .snapshot
            .load()
            .config
            .tuning
            .query_log
            .flush_interval;
        tokio::time::sleep(interval.max(Duration::from_millis(100))).await;
        let flushing = Arc::clone(&daemon);
        let _ = tokio::task::spawn_blocking(move || flush_query_log(&flushing)).await;
    }
}

/// How often the primary checks whether its sync port is still needed.
const SYNC_IDLE_CHECK: Duration = Duration::from_secs(5);

/// Closes the primary's sync port once it has no replica and no pairing
/// code that can still be tried, so an appliance with no fleet keeps no
/// port open after a code expires.
pub(super) async fn close_idle_sync_periodically(daemon: Arc<Daemon>) {
    loop {
        tokio::time::sleep(SYNC_IDLE_CHECK).await;
        let role = daemon.role.lock();
        let Ok(server) = role.server("closes its sync port") else {
            continue;
        };
        if server.close_if_idle() {
            let _ = std::fs::remove_file(daemon.data.path(files::SYNC_ADDR));
            tracing::info!("sync endpoint closed: no replicas and no pairing code");
        }
    }
}

/// Asks the owner, now and then, to re-seal a bundle that expires soon.
pub(super) async fn reseal_periodically(daemon: Arc<Daemon>) {
    loop {
        tokio::time::sleep(RESEAL_CHECK).await;
        if let Err(err) = daemon.commands.call(Command::Reseal).await {
            tracing::error!(error = %err, "cannot re-seal the bundle");
        }
    }
}

/// Downloads the primary's URL lists at their refresh intervals and has a
/// changed list compiled. A replica downloads nothing: its lists come
/// compiled in the primary's bundle.
pub(super) fn download_lists_periodically(
    daemon: Arc<Daemon>,
) -> Result<impl Future<Output = ()> + Send + 'static, DaemonError> {
    let config = daemon.config();
    let tls = live::upstream_tls(config.instance.upstream_ca_file.as_deref())?;
    let mut downloader = ListDownloader::new(daemon.data.clone(), tls);
    Ok(async move {
        loop {
            let sources = if daemon.role.lock().is_primary() {
                daemon.snapshot.load().config.policy.blocklists.clone()
            } else {
                Vec::new()
            };
            let (changed, wait) = downloader.round(&sources).await;
            if changed {
                match daemon.commands.call(Command::SourcesChanged).await {
                    Ok(version) => tracing::info!(?version, "policy rebuilt from downloaded lists"),
                    Err(err) => tracing::error!(error = %err, "downloaded lists not applied"),
                }
            }
            tokio::time::sleep(wait).await;
        }
    })
}
