//! Blocklist downloads: every URL source of the policy in force is fetched
//! at its refresh interval and kept in the data directory; a failed or
//! oversized download keeps the last good copy. Whether a changed list is
//! compiled is the caller's business.

use std::time::Duration;

use crate::clock;
use crate::compile::{record_download, store_download};
use crate::config::{BlocklistSource, SourceLocation};
use crate::store::DataDir;

/// Largest blocklist downloaded.
pub(crate) const MAX_LIST_BYTES: usize = 256 << 20;
/// How long one download may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a round waits when no source has a refresh interval.
const IDLE_ROUND: Duration = Duration::from_secs(60);
/// The shortest wait between rounds.
const MIN_ROUND: Duration = Duration::from_millis(500);

/// Fetches the URL blocklists into the data directory.
#[derive(Debug)]
pub(crate) struct ListDownloader {
    data: DataDir,
    tls: rustls::ClientConfig,
    client: Option<reqwest::Client>,
}

impl ListDownloader {
    /// A downloader storing into `data`, trusting what `tls` trusts.
    pub(crate) fn new(data: DataDir, tls: rustls::ClientConfig) -> Self {
        Self {
            data,
            tls,
            client: None,
        }
    }

    /// Downloads every URL source in `sources` once; returns whether any
    /// list changed and how long to wait before the next round.
    pub(crate) async fn round(&mut self, sources: &[BlocklistSource]) -> (bool, Duration) {
        let urls: Vec<_> = sources
            .iter()
            .filter(|source| matches!(source.source, SourceLocation::Url(_)))
            .collect();
        let wait = urls
            .iter()
            .map(|source| source.refresh)
            .min()
            .unwrap_or(IDLE_ROUND)
            .max(MIN_ROUND);
        let mut changed = false;
        for source in urls {
            let Some(client) = self.client() else { break };
            changed |= self.download(&client, source).await;
        }
        (changed, wait)
    }

    fn client(&mut self) -> Option<reqwest::Client> {
        if self.client.is_none() {
            self.client = reqwest::Client::builder()
                .tls_backend_preconfigured(self.tls.clone())
                .build()
                .inspect_err(|err| tracing::warn!(error = %err, "no HTTP client for blocklists"))
                .ok();
        }
        self.client.clone()
    }

    /// Downloads one list; true when its content changed.
    async fn download(&self, client: &reqwest::Client, source: &BlocklistSource) -> bool {
        let SourceLocation::Url(url) = &source.source else {
            return false;
        };
        let (changed, outcome) = match fetch(client, url).await {
            Ok(Some(body)) => match store_download(source, &self.data, &body) {
                Ok(changed) => (changed, Ok(())),
                Err(err) => {
                    tracing::warn!(%url, error = %err, "cannot keep the downloaded list");
                    (false, Err(format!("cannot keep the download: {err}")))
                }
            },
            Ok(None) => {
                tracing::warn!(%url, limit = MAX_LIST_BYTES, "list too large; keeping the last good copy");
                (false, Err(format!("larger than {MAX_LIST_BYTES} bytes")))
            }
            Err(err) => {
                tracing::warn!(%url, error = %err, "list download failed; keeping the last good copy");
                (false, Err(format!("download failed: {err}")))
            }
        };
        record_download(&self.data, url, outcome, clock::unix_now());
        changed
    }
}

/// The body at `url`, or `None` when it is larger than `MAX_LIST_BYTES`.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
) -> Result<Option<bytes::Bytes>, reqwest::Error> {
    let response = client
        .get(url)
        .timeout(DOWNLOAD_TIMEOUT)
        .send()
        .await?
        .error_for_status()?;
    if response
        .content_length()
        .is_some_and(|len| len > MAX_LIST_BYTES as u64)
    {
        return Ok(None);
    }
    let body = response.bytes().await?;
    Ok((body.len() <= MAX_LIST_BYTES).then_some(body))
}
