//! Upstream resolvers: choosing which to ask (strategy), tracking their
//! health, and checking that an answer belongs to the question.

mod transport;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use parking_lot::Mutex;

use crate::clock;
use crate::config::{Strategy, UpstreamTuning, UpstreamUrl};
use crate::stats::Stats;
use transport::Connector;

/// Why an upstream gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The upstream could not be set up from its URL.
    #[error("bad upstream: {0}")]
    Setup(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// Socket or TLS failure.
    #[error("I/O: {0}")]
    Io(String),
    /// A DoH request failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// The answer was not a valid DNS message for our question.
    #[error("bad answer: {0}")]
    BadAnswer(String),
    /// The upstream answered SERVFAIL, REFUSED or similar.
    #[error("answered {0}")]
    Failed(ResponseCode),
    /// Every upstream failed; the last error is kept.
    #[error("all upstreams failed, last: {0}")]
    AllFailed(Box<Self>),
}

impl From<std::io::Error> for UpstreamError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err.to_string())
    }
}

/// An upstream's response, with whether that upstream is trusted: only a
/// trusted upstream's AD bit is passed on.
#[derive(Debug)]
pub(crate) struct Upstreamed {
    /// The response.
    pub message: Message,
    /// Whether the upstream that gave it is marked `trusted`.
    pub trusted: bool,
}

/// What the query path sends a miss to: `Upstreams` in service, a table
/// in tests.
pub(crate) trait Resolver: Send + Sync + std::fmt::Debug + 'static {
    /// Resolves `query`, a message with one question; upstream latency and
    /// errors are counted in `stats`.
    fn resolve(
        &self,
        query: &Message,
        stats: &Stats,
    ) -> impl Future<Output = Result<Upstreamed, UpstreamError>> + Send;
}

impl<R: Resolver> Resolver for Arc<R> {
    fn resolve(
        &self,
        query: &Message,
        stats: &Stats,
    ) -> impl Future<Output = Result<Upstreamed, UpstreamError>> + Send {
        (**self).resolve(query, stats)
    }
}

/// One upstream and what we have learned about it.
#[derive(Debug)]
struct Upstream {
    url: UpstreamUrl,
    connector: Connector,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    retry_after: Option<Instant>,
    /// Smoothed latency in microseconds; 0 until the first answer.
    smoothed_us: f64,
}

/// The set of upstreams in force, with its strategy.
#[derive(Debug)]
pub(crate) struct Upstreams {
    upstreams: Vec<Upstream>,
    strategy: Strategy,
    tuning: UpstreamTuning,
    next: AtomicUsize,
}

/// A health snapshot of one upstream, for status output.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UpstreamStatus {
    /// The URL.
    pub url: String,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Smoothed latency in milliseconds.
    pub latency_ms: f64,
    /// Whether it is being skipped after failures.
    pub backing_off: bool,
}

impl Upstreams {
    /// Prepares the upstreams; `tls` is used for DoT and DoH.
    pub(crate) fn new(
        urls: &[UpstreamUrl],
        strategy: Strategy,
        tuning: UpstreamTuning,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Self, UpstreamError> {
        let upstreams = urls
            .iter()
            .map(|url| {
                Ok(Upstream {
                    url: url.clone(),
                    connector: Connector::new(url, tls)?,
                    health: Mutex::default(),
                })
            })
            .collect::<Result<_, UpstreamError>>()?;
        Ok(Self {
            upstreams,
            strategy,
            tuning,
            next: AtomicUsize::new(0),
        })
    }

    /// Health of every upstream.
    pub(crate) fn status(&self) -> Vec<UpstreamStatus> {
        let now = clock::now();
        self.upstreams
            .iter()
            .map(|upstream| {
                let health = upstream.health.lock();
                UpstreamStatus {
                    url: upstream.url.to_string(),
                    consecutive_failures: health.consecutive_failures,
                    latency_ms: health.smoothed_us / 1000.0,
                    backing_off: health.retry_after.is_some_and(|until| until > now),
                }
            })
            .collect()
    }

    /// Upstream indices to try, healthy ones first, in strategy order.
    fn order(&self) -> Vec<usize> {
        let now = clock::now();
        let count = self.upstreams.len();
        let mut order: Vec<usize> = match self.strategy {
            Strategy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..count).map(|offset| (start + offset) % count).collect()
            }
            Strategy::Fastest | Strategy::Parallel => {
                let mut order: Vec<usize> = (0..count).collect();
                let latency = |index: usize| self.upstreams[index].health.lock().smoothed_us;
                order.sort_by(|&a, &b| latency(a).total_cmp(&latency(b)));
                order
            }
        };
        order.sort_by_key(|&index| {
            self.upstreams[index]
                .health
                .lock()
                .retry_after
                .is_some_and(|until| until > now)
        });
        order
    }

    async fn ask(
        &self,
        upstream: &Upstream,
        query: &Message,
        stats: &Stats,
    ) -> Result<Upstreamed, UpstreamError> {
        let started = clock::now();
        let result = self.exchange(upstream, query).await;
        let elapsed = clock::now().saturating_duration_since(started);
        let mut health = upstream.health.lock();
        match &result {
            Ok(_) => {
                stats.record_upstream_latency(elapsed);
                let sample = elapsed.as_micros() as f64;
                health.smoothed_us = if health.smoothed_us == 0.0 {
                    sample
                } else {
                    0.7 * health.smoothed_us + 0.3 * sample
                };
                health.consecutive_failures = 0;
                health.retry_after = None;
            }
            Err(err) => {
                stats.record_upstream_error();
                health.consecutive_failures += 1;
                let factor = 1u32 << (health.consecutive_failures - 1).min(4);
                health.retry_after = Some(clock::now() + self.tuning.failure_backoff * factor);
                tracing::debug!(upstream = %upstream.url, error = %err, "upstream failed");
            }
        }
        result.map(|message| Upstreamed {
            message,
            trusted: upstream.url.trusted,
        })
    }

    async fn exchange(
        &self,
        upstream: &Upstream,
        query: &Message,
    ) -> Result<Message, UpstreamError> {
        let mut query = query.clone();
        query.metadata.id = rand::random();
        let bytes = query
            .to_vec()
            .map_err(|err| UpstreamError::BadAnswer(err.to_string()))?;
        let answer = upstream
            .connector
            .exchange(&bytes, self.tuning.timeout)
            .await?;
        let answer =
            Message::from_vec(&answer).map_err(|err| UpstreamError::BadAnswer(err.to_string()))?;
        check_answer(&query, &answer)?;
        Ok(answer)
    }
}

impl Resolver for Upstreams {
    /// Tries upstreams in the strategy's order until one gives a good answer.
    async fn resolve(&self, query: &Message, stats: &Stats) -> Result<Upstreamed, UpstreamError> {
        let order = self.order();
        let width = if self.strategy == Strategy::Parallel {
            2
        } else {
            1
        };
        let mut last_error = UpstreamError::Setup("no upstreams".into());
        for group in order.chunks(width) {
            let mut attempts: FuturesUnordered<_> = group
                .iter()
                .map(|&index| self.ask(&self.upstreams[index], query, stats))
                .collect();
            while let Some(result) = attempts.next().await {
                match result {
                    Ok(answer) => return Ok(answer),
                    Err(err) => last_error = err,
                }
            }
        }
        Err(UpstreamError::AllFailed(Box::new(last_error)))
    }
}

/// Builds the upstream query for a question: recursion desired, EDNS with
/// our payload size and the client's DO bit, the client's CD bit.
pub(crate) fn upstream_query(question: Query, dnssec_ok: bool, checking_disabled: bool) -> Message {
    let mut message = Message::new(0, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.checking_disabled = checking_disabled;
    message.add_query(question);
    let mut edns = Edns::new();
    edns.set_max_payload(super::SERVER_UDP_PAYLOAD);
    edns.set_dnssec_ok(dnssec_ok);
    message.set_edns(edns);
    message
}

fn check_answer(query: &Message, answer: &Message) -> Result<(), UpstreamError> {
    let bad = |why: &str| Err(UpstreamError::BadAnswer(why.to_owned()));
    if answer.metadata.id != query.metadata.id {
        return bad("wrong ID");
    }
    if answer.metadata.message_type != MessageType::Response {
        return bad("not a response");
    }
    if answer.metadata.truncation {
        return bad("truncated");
    }
    let same_question = match (query.queries.first(), answer.queries.first()) {
        (Some(asked), Some(answered)) => {
            // Name equality in hickory ignores letter case.
            asked.query_type == answered.query_type
                && asked.query_class == answered.query_class
                && asked.name == answered.name
        }
        _ => false,
    };
    if !same_question || answer.queries.len() != 1 {
        return bad("question does not match");
    }
    match answer.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(()),
        other => Err(UpstreamError::Failed(other)),
    }
}
