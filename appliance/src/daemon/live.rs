//! Builds the reloadable part of the query path: policy from a bundle
//! (its upstreams and forward zones included), tuning and instance
//! settings from the local configuration. Each set of upstreams (the
//! general ones, each forward zone's) is kept, with its health and pooled
//! connections, across any change that leaves it as it was; so is the
//! client gate, with its rate-limit counts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::DaemonError;
use super::policy::OpenedBundle;
use crate::config::{Config, ForwardTarget, ServerTuning, Strategy, UpstreamTuning, UpstreamUrl};
use crate::dns::access::Gate;
use crate::dns::handler::{Live, MissLimits};
use crate::dns::upstream::Upstreams;
use crate::dns::zones::Zones;

/// What the upstreams are made from; equal inputs, equal upstreams.
#[derive(Debug, PartialEq)]
struct UpstreamInputs {
    urls: Vec<UpstreamUrl>,
    strategy: Strategy,
    tuning: UpstreamTuning,
    ca_file: Option<PathBuf>,
}

/// Makes each new `Live`, reusing each set of upstreams while its inputs stay.
#[derive(Debug, Default)]
pub(super) struct LiveBuilder {
    upstreams: Vec<(UpstreamInputs, Arc<Upstreams>)>,
    gate: Option<(ServerTuning, Arc<Gate>)>,
}

impl LiveBuilder {
    /// The query path's settings for `config` running `bundle`.
    pub(super) fn build(
        &mut self,
        config: &Config,
        bundle: &OpenedBundle,
    ) -> Result<Live, DaemonError> {
        let policy = &bundle.policy;
        let mut kept = std::mem::take(&mut self.upstreams);
        let mut set = |urls: Vec<UpstreamUrl>| self.upstreams(&mut kept, config, bundle, urls);
        let upstreams = set(policy.general_upstreams())?;
        let forwarders = policy
            .forward_zones()
            .filter_map(|zone| match &zone.target {
                ForwardTarget::Upstreams(urls) => Some(set(urls.clone())),
                ForwardTarget::General => None,
            })
            .collect::<Result<_, _>>()?;
        Ok(Live {
            policy: Arc::clone(&bundle.plugins),
            fail_mode: policy.fail_mode,
            upstreams,
            forwarders,
            zones: Zones::new(policy).with_own_name(&config.instance.name),
            blocked_response: policy.blocked_response.clone(),
            blocked_ttl: u32::try_from(policy.blocked_ttl.as_secs()).unwrap_or(u32::MAX),
            udp_max_payload: config.tuning.server.udp_max_payload,
            query_log: config.tuning.query_log.enabled,
            miss_limits: MissLimits {
                questions: config.tuning.server.max_misses_in_flight.max(1),
                per_client: config.tuning.server.max_misses_per_client.max(1),
            },
            gate: self.gate(&config.tuning.server),
            plugin_clock_offset_secs: config.tuning.plugins.clock_offset_secs,
        })
    }

    fn gate(&mut self, tuning: &ServerTuning) -> Arc<Gate> {
        if let Some((kept, gate)) = &self.gate
            && kept == tuning
        {
            return Arc::clone(gate);
        }
        let gate = Arc::new(Gate::new(tuning));
        self.gate = Some((tuning.clone(), Arc::clone(&gate)));
        gate
    }

    /// The upstreams for `urls`: one of the `kept` sets (of the last
    /// build) if its inputs are the same, else a new set.
    fn upstreams(
        &mut self,
        kept: &mut Vec<(UpstreamInputs, Arc<Upstreams>)>,
        config: &Config,
        bundle: &OpenedBundle,
        urls: Vec<UpstreamUrl>,
    ) -> Result<Arc<Upstreams>, DaemonError> {
        let inputs = UpstreamInputs {
            urls,
            strategy: bundle.policy.strategy,
            tuning: config.tuning.upstream.clone(),
            ca_file: config.instance.upstream_ca_file.clone(),
        };
        if let Some(index) = kept.iter().position(|(kept, _)| *kept == inputs) {
            let (inputs, upstreams) = kept.swap_remove(index);
            self.upstreams.push((inputs, Arc::clone(&upstreams)));
            return Ok(upstreams);
        }
        let tls = Arc::new(upstream_tls(inputs.ca_file.as_deref())?);
        let upstreams = Arc::new(Upstreams::new(
            &inputs.urls,
            inputs.strategy,
            inputs.tuning.clone(),
            &tls,
        )?);
        self.upstreams.push((inputs, Arc::clone(&upstreams)));
        Ok(upstreams)
    }
}

/// TLS settings for DoT and DoH upstreams and list downloads: the public
/// web roots plus any CA in `instance.upstream_ca_file`.
pub(super) fn upstream_tls(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, DaemonError> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots
                .add(cert)
                .map_err(|err| ca_error(path, err.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ca_error(Path::new(""), err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn read_ca_file(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, DaemonError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| ca_error(path, err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ca_error(path, err.to_string()))?;
    if certs.is_empty() {
        return Err(ca_error(path, "no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn ca_error(path: &Path, reason: String) -> DaemonError {
    DaemonError::UpstreamCa {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Chain;

    fn opened(config: &Config) -> OpenedBundle {
        OpenedBundle {
            policy: config.policy.clone(),
            plugins: Arc::new(Chain(Vec::new())),
        }
    }

    #[test]
    fn upstreams_are_kept_while_their_inputs_stay() {
        let config = |upstream: &str, ttl: &str| {
            Config::parse(
                &format!(
                    "[policy]\nupstreams = [\"{upstream}\"]\nblocked_ttl = \"{ttl}\"\n\
                     [tuning.cache]\nmax_ttl = \"1h\"\n"
                ),
                "t",
            )
            .unwrap()
        };
        let mut builder = LiveBuilder::default();
        let first = config("udp://127.0.0.1:5300", "10s");
        let kept = config("udp://127.0.0.1:5300", "20s");
        let moved = config("udp://127.0.0.1:5301", "20s");
        let a = builder.build(&first, &opened(&first)).unwrap();
        let b = builder.build(&kept, &opened(&kept)).unwrap();
        assert!(
            Arc::ptr_eq(&a.upstreams, &b.upstreams),
            "a change elsewhere keeps the upstreams, health and connections included"
        );
        assert_eq!(b.blocked_ttl, 20, "the rest of the change applies");
        let c = builder.build(&moved, &opened(&moved)).unwrap();
        assert!(!Arc::ptr_eq(&b.upstreams, &c.upstreams));
        let mut retuned = moved.clone();
        retuned.tuning.upstream.timeout *= 2;
        let d = builder.build(&retuned, &opened(&retuned)).unwrap();
        assert!(
            !Arc::ptr_eq(&c.upstreams, &d.upstreams),
            "upstream tuning rebuilds them"
        );
    }

    #[test]
    fn each_forward_zone_gets_upstreams_kept_while_they_stay() {
        let config = |router: &str, ttl: &str| {
            let text = format!(
                "[policy]\nupstreams = [\"udp://127.0.0.1:5300\", \"[/lan/]udp://{router}\", \
                 \"[/public.lan/]#\"]\nblocked_ttl = \"{ttl}\"\n"
            );
            Config::parse(&text, "t").unwrap()
        };
        let mut builder = LiveBuilder::default();
        let first = config("127.0.0.1:5400", "10s");
        let a = builder.build(&first, &opened(&first)).unwrap();
        assert_eq!(a.forwarders.len(), 1, "`#` needs no upstreams of its own");
        let kept = config("127.0.0.1:5400", "20s");
        let b = builder.build(&kept, &opened(&kept)).unwrap();
        assert!(Arc::ptr_eq(&a.forwarders[0], &b.forwarders[0]));
        let moved = config("127.0.0.1:5401", "20s");
        let c = builder.build(&moved, &opened(&moved)).unwrap();
        assert!(!Arc::ptr_eq(&b.forwarders[0], &c.forwarders[0]));
        assert!(
            Arc::ptr_eq(&b.upstreams, &c.upstreams),
            "the general upstreams stay"
        );
    }
}
