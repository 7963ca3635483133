//! What herd supervises: the cluster's settings (the program, its environment and sockets, the
//! channel codec; the service forks the workers), and the host-shared cache it serves them.

use herd::cache::{CacheConfig, FileSource, Hub, RedisSource};
use herd::{Cluster, ClusterBuilder};

use super::listen::{self, Sockets};
use crate::config::{CacheSource, Settings};
use crate::exit::{Context, Result};

/// The cache hub the settings ask for, if any.
fn hub(s: &Settings) -> Result<Option<Hub>> {
    let Some(src) = &s.cache else {
        return Ok(None);
    };
    let mut config = CacheConfig::default();
    config.warm_patterns = s.warm.clone();
    config.max_stale = s.max_stale;
    config.progress = crate::progress::warm_up();
    let hub = match src {
        CacheSource::Dir(d) => Hub::new(
            FileSource::folder(d).or_fail(|| format!("cache dir {}", d.display()))?,
            config,
        ),
        CacheSource::Snapshot(p) => Hub::new(
            FileSource::snapshot(p).or_fail(|| format!("cache snapshot {}", p.display()))?,
            config,
        ),
        CacheSource::Redis(url) => Hub::new(
            RedisSource::open(url).or_fail(|| format!("cache redis {url}"))?,
            config,
        ),
    };
    tracing::info!(source = %hub.source().describe(), "serving the host-shared cache");
    Ok(Some(hub))
}

/// The cluster's builder (the service forks the workers) and its cache hub.
pub(super) fn builder(s: &Settings, sockets: Sockets) -> Result<(ClusterBuilder, Option<Hub>)> {
    let hub = hub(s)?;
    let mut builder = Cluster::builder()
        .codec(s.codec)
        .grace(s.grace)
        .stop_settle(s.stop_settle)
        .unresponsive(s.unresponsive)
        .capture_output(true)
        .balance(s.balance)
        .rescue(s.rescue)
        // What a worker leaves behind re-parents to herd, is killed with the worker's process
        // group once it exits, and is reaped here.
        .subreaper(true);
    builder = builder.stop_by(s.stop.clone());
    builder = listen::program(builder, s, sockets)?;
    for (k, v) in &s.env {
        builder = builder.env(k, v);
    }
    if let Some(hub) = &hub {
        builder = builder.cache(hub.clone());
        // Node workers find herd's addon (zero-copy cache values) through the environment,
        // unless it names one already (or `off`).
        if std::env::var_os(herd::env::HERD_NODE_ADDON).is_none()
            && !s.env.contains_key(herd::env::HERD_NODE_ADDON)
        {
            if let Some(addon) = crate::which::node_addon() {
                tracing::debug!(addon = %addon.display(), "Node workers get herd's addon");
                builder = builder.env(herd::env::HERD_NODE_ADDON, addon);
            }
        }
    }
    Ok((builder, hub))
}
