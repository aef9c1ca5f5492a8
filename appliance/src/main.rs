//! The `moat` command: runs the appliance and talks to a running one.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use moat::compile::{compile_policy, rule_line, source_dirs};
use moat::config::{Config, PluginPlace};
use moat::control::{ClientError, ControlClient, Credentials, LogQuery};
use moat::daemon::{App, ConfigSource, join_offline};
use moat::policy::{Decision, Policy, PolicyEngine, Question, Ruling, WasmPolicy};
use moat::store::{Access, DataDir};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "moat",
    version,
    about = "A DNS appliance: blocks ads, caches and forwards"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance (embedded default config without --config).
    Run {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Start in safe mode: ignore the saved policy and tuning files and
        /// serve the last policy bundle held (init does this after failed
        /// starts); the reason shows in status.
        #[arg(long, value_name = "REASON", num_args = 0..=1, require_equals = true,
              default_missing_value = "started with --safe-mode")]
        safe_mode: Option<String>,
    },
    /// Validate a configuration file without starting.
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
    },
    /// Show the running appliance's status.
    Status(Target),
    /// Make the running appliance re-read its configuration.
    Reload(Target),
    /// Pause blocking, for a duration ("5m", "1h") or until resumed.
    Pause {
        /// How long; omit to pause until `moat resume`.
        duration: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Resume blocking.
    Resume(Target),
    /// Show counters: queries, cache, blocked, top names and clients.
    Stats(Target),
    /// Show the newest queries, newest first.
    Log {
        /// Only names containing this.
        #[arg(long)]
        name: Option<String>,
        /// Only this client's queries.
        #[arg(long)]
        client: Option<String>,
        /// Only this query type (A, AAAA, …).
        #[arg(long)]
        qtype: Option<String>,
        /// Only queries answered so: cached, forwarded, stale, blocked, rejected, failed, local, shed, limited.
        #[arg(long)]
        verdict: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        target: Target,
    },
    /// Compile or try out a policy offline.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Policy plugins of your own (`[[policy.plugins]]`).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// On the primary: print a one-time code a replica pairs with.
    Code {
        /// How long the code stays valid ("10m" unless given).
        #[arg(long)]
        valid: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Pair this appliance (running or not) with a primary and become its
    /// replica.
    Join {
        /// `[ADDRESS] CODE`: the primary's sync address, HOST:PORT (when
        /// left out, the one primary on the LAN, found by mDNS), and the
        /// code `moat code` printed on it.
        #[arg(required = true, num_args = 1..=2, value_names = ["ADDRESS", "CODE"])]
        args: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// On the primary: list the replicas, their status and stats.
    Replicas(Target),
    /// On the primary: close a replica's connection and refuse it from now on.
    Revoke {
        /// The replica's name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Check a signed image update.
    #[command(subcommand)]
    Update(UpdateCommand),
}

#[derive(Subcommand)]
enum UpdateCommand {
    /// Check FILE against the running slot: signed by a release key it pins,
    /// for its target, newer, every part intact. Exits non-zero with the
    /// reason otherwise.
    Verify {
        /// The update (`moat-TARGET.update` from `image/build`).
        file: PathBuf,
        /// The root slot to check against (where init mounts the running one).
        #[arg(long, default_value = moat::update::RUNNING_SLOT)]
        slot: PathBuf,
        /// Accept a version not newer than the slot's.
        #[arg(long)]
        allow_downgrade: bool,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Check a module as the primary does before signing: no imports, the
    /// memory limit, this ABI version, the smoke set.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
    },
    /// Write a plugin crate from the template (with this build's SDK) that
    /// builds for wasm32-unknown-unknown as is.
    New {
        /// The crate's name.
        name: String,
        /// Where its directory goes (here unless given).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Ask a module about NAME and print its verdict.
    Test {
        /// The `.wasm` file.
        file: PathBuf,
        /// The name to ask about.
        name: String,
        /// Who asks (127.0.0.1 unless given).
        #[arg(long, default_value = "127.0.0.1")]
        client: std::net::IpAddr,
        /// When: Unix seconds or RFC 3339 (now unless given).
        #[arg(long)]
        time: Option<String>,
        /// A TOML file holding the plugin's configuration (the body of
        /// its `[policy.plugins.config]`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Compile the policy of a config into WASM modules in DIR; print a summary.
    Compile {
        /// TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Where the modules go.
        #[arg(long)]
        out: PathBuf,
    },
    /// Say what the policy does with NAME and which rule decided.
    Test {
        /// The name to try.
        name: String,
        /// TOML configuration file (the embedded default without it).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// Which running appliance a command talks to: the one of `--config` on
/// this machine, or a remote one at `--url`.
#[derive(clap::Args)]
struct Target {
    /// The configuration the daemon runs with (to find its data directory).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// A remote appliance's control plane, https://HOST[:PORT].
    #[arg(long, env = "MOAT_URL", requires_all = ["token", "fingerprint"])]
    url: Option<String>,
    /// The remote appliance's control token (its data directory's control.token).
    #[arg(long, env = "MOAT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The SHA-256 fingerprint of the remote appliance's HTTPS certificate
    /// (hex, colons allowed), as its console and status show it.
    #[arg(long, env = "MOAT_FINGERPRINT")]
    fingerprint: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    // On the appliance image, Moat is the init process.
    if std::process::id() == 1 {
        moat::init::main();
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(moat::recent_log::Tee)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Every TLS user in the process (DoT, DoH, the CLI's client) uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run { config, safe_mode } => {
            let source = config.map_or(ConfigSource::Embedded, ConfigSource::File);
            run(source, safe_mode).await
        }
        Command::CheckConfig { file } => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Status(target) => show(&target, &client(&target)?.status().await?),
        Command::Stats(target) => {
            let mut stats = serde_json::to_value(client(&target)?.stats().await?)?;
            if !target.json
                && let Some(map) = stats.as_object_mut()
            {
                // A day of minutes is for charts, not for a terminal.
                map.remove("series");
            }
            show(&target, &stats)
        }
        Command::Log {
            name,
            client: from,
            qtype,
            verdict,
            limit,
            target,
        } => {
            let query = LogQuery {
                limit: Some(limit),
                name,
                client: from,
                qtype,
                verdict,
                ..LogQuery::default()
            };
            let page = client(&target)?.query_log(&query).await?;
            if target.json {
                return show(&target, &page);
            }
            for entry in &page.page.entries {
                println!(
                    "{}  {:<39} {:<6} {:<9} {}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_millis(entry.unix_ms)
                    ),
                    entry.client.to_string(),
                    qtype_name(entry.qtype),
                    scalar(&serde_json::to_value(entry.outcome)?),
                    String::from_utf8_lossy(&entry.name),
                );
            }
            Ok(())
        }
        Command::Reload(target) => show(&target, &client(&target)?.reload().await?),
        Command::Pause { duration, target } => {
            if let Some(text) = &duration {
                humantime::parse_duration(text).with_context(|| format!("duration `{text}`"))?;
            }
            show(&target, &client(&target)?.pause(duration).await?)
        }
        Command::Resume(target) => show(&target, &client(&target)?.resume().await?),
        Command::Policy(command) => policy_tool(command),
        Command::Update(command) => update_tool(command),
        Command::Plugin(command) => plugin_tool(command),
        Command::Code { valid, target } => {
            let issued = client(&target)?.pairing_code(valid).await?;
            if target.json {
                return show(&target, &issued);
            }
            println!(
                "{}  (single use, valid for {})",
                issued.code,
                humantime::format_duration(Duration::from_secs(issued.valid_secs))
            );
            Ok(())
        }
        Command::Join { args, target } => match args.as_slice() {
            [code] => join(None, code, &target).await,
            [address, code] => join(Some(address), code, &target).await,
            _ => anyhow::bail!("join takes [ADDRESS] CODE"),
        },
        Command::Replicas(target) => show(&target, &client(&target)?.replicas().await?),
        Command::Revoke { name, target } => show(&target, &client(&target)?.revoke(&name).await?),
    }
}

/// Pairs through the running daemon (a remote one with `--url`), or
/// directly when it is not running.
async fn join(address: Option<&str>, code: &str, target: &Target) -> Result<()> {
    let pin = if target.url.is_some() {
        client(target)?.join(address, code).await?
    } else {
        let config = match &target.config {
            Some(path) => Config::load(path)?,
            None => Config::embedded(),
        };
        match ControlClient::for_config(&config) {
            Ok(client) => match client.join(address, code).await {
                Ok(pin) => pin,
                Err(ClientError::Unreachable { .. }) => {
                    join_offline(&config, address, code).await?
                }
                Err(err) => return Err(err.into()),
            },
            Err(ClientError::NoToken(_)) => join_offline(&config, address, code).await?,
            Err(err) => return Err(err.into()),
        }
    };
    println!(
        "paired with primary {} at {} (certificate {})",
        pin.name, pin.address, pin.fingerprint
    );
    Ok(())
}

fn policy_tool(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Compile { config: path, out } => {
            let config = Config::load(&path)?;
            let data = DataDir::open(&out)?.allow_sources_from(source_dirs(Some(&path), &config));
            let compiled = compile_policy(&config.policy, &data)?;
            data.write("blocklist.wasm", &compiled.blocklist, Access::Public)?;
            let summary = json!({
                "out": out.join("blocklist.wasm"),
                "summary": compiled.summary,
                "sources": compiled.sources,
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        PolicyCommand::Test { name, config: path } => {
            let config = match &path {
                Some(path) => Config::load(path)?,
                None => Config::embedded(),
            };
            let data = DataDir::open(&config.instance.data_dir)?
                .allow_sources_from(source_dirs(path.as_deref(), &config));
            let compiled = compile_policy(&config.policy, &data)?;
            let engine = PolicyEngine::start()?;
            let lower = name.trim_end_matches('.').to_ascii_lowercase();
            let question = Question {
                name: lower.as_bytes(),
                qtype: 1,
                client: [127, 0, 0, 1].into(),
                unix_time: moat::clock::unix_now(),
            };
            // The query path's order: configured plugins placed first, local
            // records, plugins before the blocklist, the blocklist, the rest.
            let placed = |place: PluginPlace| {
                compiled
                    .plugins
                    .iter()
                    .zip(&config.policy.plugins)
                    .filter(move |(_, spec)| spec.place == place)
                    .map(|((plugin, module), _)| (format!(" (plugin `{plugin}`)"), module))
            };
            let chain = placed(PluginPlace::First)
                .chain([(String::new(), &compiled.local_records)])
                .chain(placed(PluginPlace::BeforeBlocklist))
                .chain([(String::new(), &compiled.blocklist)])
                .chain(placed(PluginPlace::Last));
            let mut said = None;
            for (by, module) in chain {
                let plugin = WasmPolicy::new(&engine, module)?;
                let decision = plugin.decide(&question);
                if decision != Decision::NoOpinion {
                    said = Some((decision, plugin.explain(&question)?, by));
                    break;
                }
            }
            match said {
                Some((decision, Some(rule), by)) => {
                    let line = rule_line(&config.policy, &data, &rule)
                        .map(|line| format!(", line {line}"))
                        .unwrap_or_default();
                    println!("{name}: {}{by} by {rule}{line}", decision_label(&decision))
                }
                Some((decision, None, by)) => {
                    println!(
                        "{name}: {}{by} (no rule matches)",
                        decision_label(&decision)
                    )
                }
                None => println!("{name}: NoOpinion (no rule matches)"),
            }
        }
    }
    Ok(())
}

fn plugin_tool(command: PluginCommand) -> Result<()> {
    let read = |file: &PathBuf| {
        std::fs::read(file).map_err(|err| anyhow::anyhow!("{}: {err}", file.display()))
    };
    match command {
        PluginCommand::Check { file } => {
            moat::compile::check_plugin(&read(&file)?, &PolicyEngine::start()?)
                .map_err(|reason| anyhow::anyhow!("{}: refused: {reason}", file.display()))?;
            println!("{}: accepted", file.display());
        }
        PluginCommand::New { name, dir } => {
            let root = moat::policy::new_plugin(&name, &dir)?;
            println!(
                "{}: a plugin crate; build it with `cargo build --release --target wasm32-unknown-unknown` there",
                root.display()
            );
        }
        PluginCommand::Test {
            file,
            name,
            client,
            time,
            config,
        } => {
            let config = match &config {
                Some(path) => {
                    std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?
                }
                None => String::new(),
            };
            let module = moat::compile::with_config(&read(&file)?, &config)
                .map_err(|reason| anyhow::anyhow!("{}: refused: {reason}", file.display()))?;
            let plugin = WasmPolicy::new(&PolicyEngine::start()?, &module)?;
            let unix_time = match time.as_deref() {
                None => moat::clock::unix_now(),
                Some(text) => text.parse().or_else(|_| {
                    humantime::parse_rfc3339(text)
                        .ok()
                        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|since| since.as_secs())
                        .with_context(|| format!("--time `{text}`: Unix seconds or RFC 3339"))
                })?,
            };
            let lower = name.trim_end_matches('.').to_ascii_lowercase();
            let question = Question {
                name: lower.as_bytes(),
                qtype: 1,
                client,
                unix_time,
            };
            let ruling = plugin.rule(&question);
            let rule = match plugin.explain(&question)? {
                Some(rule) => format!(" by {rule}"),
                None => String::new(),
            };
            let holds = match ruling.holds_until {
                Ruling::FOREVER => "until the policy changes".to_owned(),
                0 => "for this query only".to_owned(),
                until => format!("until {until}"),
            };
            println!(
                "{name}: {}{rule} (asked by {client} at {unix_time}; holds {holds})",
                decision_label(&ruling.decision)
            );
        }
    }
    Ok(())
}

fn update_tool(command: UpdateCommand) -> Result<()> {
    let UpdateCommand::Verify {
        file,
        slot,
        allow_downgrade,
    } = command;
    let installed = moat::update::Installed::load(&slot)?;
    let verified = moat::update::verify(&file, &installed, allow_downgrade)
        .with_context(|| format!("{}: refused", file.display()))?;
    let manifest = &verified.manifest;
    println!(
        "{}: {} version {} (running {}), signed by release key {}",
        file.display(),
        manifest.target,
        manifest.version,
        installed.version,
        verified.signed_by
    );
    for part in &manifest.parts {
        println!("  {} {} bytes, SHA-256 checked", part.name, part.size);
    }
    Ok(())
}

/// A decision as `moat policy test` and `moat plugin test` print it.
fn decision_label(decision: &Decision) -> String {
    match decision {
        Decision::Answer(answer) => format!("Answer ({} records)", answer.records().count()),
        other => format!("{other:?}"),
    }
}

async fn run(source: ConfigSource, safe_mode: Option<String>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let app = match safe_mode {
        Some(reason) => App::build_safe(source, reason)?,
        None => App::build(source)?,
    };
    tracing::debug!(addrs = ?app.addrs()?, "bound");
    let running = app.spawn()?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                if let Err(err) = running.daemon().reload().await {
                    tracing::error!(error = %err, "reload refused; the running configuration stays");
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

fn client(target: &Target) -> Result<ControlClient> {
    if let (Some(url), Some(token), Some(fingerprint)) =
        (&target.url, &target.token, &target.fingerprint)
    {
        let pin = fingerprint
            .replace(':', "")
            .parse()
            .with_context(|| format!("--fingerprint `{fingerprint}`"))?;
        return Ok(ControlClient::remote(
            url,
            pin,
            Credentials::Token(token.clone()),
        )?);
    }
    let config = match &target.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded(),
    };
    Ok(ControlClient::for_config(&config)?)
}

/// Prints an answer: as the daemon's JSON with `--json`, else as an outline.
fn show(target: &Target, answer: &impl serde::Serialize) -> Result<()> {
    let value = serde_json::to_value(answer)?;
    if target.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    print_human(&value, 0);
    Ok(())
}

fn print_human(value: &Value, indent: usize) {
    let pad = "  ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                if value.is_object() || value.is_array() {
                    println!("{pad}{key}:");
                    print_human(value, indent + 1);
                } else {
                    println!("{pad}{key}: {}", scalar(value));
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Array(pair) if pair.len() == 2 => {
                        println!("{pad}- {} {}", scalar(&pair[0]), scalar(&pair[1]))
                    }
                    Value::Object(_) | Value::Array(_) => {
                        println!("{pad}-");
                        print_human(item, indent + 1);
                    }
                    _ => println!("{pad}- {}", scalar(item)),
                }
            }
        }
        _ => println!("{pad}{}", scalar(value)),
    }
}

fn qtype_name(qtype: u16) -> String {
    hickory_proto::rr::RecordType::from(qtype).to_string()
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
