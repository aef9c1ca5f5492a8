//! The WASM policy host: one engine per process (made by the caller, see
//! [`PolicyEngine`]), a pre-instantiated module per policy version, one
//! instance per worker thread, typed calls bounded in time (epoch
//! interruption) and memory (a store limiter). A trap, a timeout or a bad
//! verdict is a fault: counted, logged once per module, and decided as
//! `Decision::Fault` (the query path applies the fail mode).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use moat_plugin_abi::{
    ABI_VERSION, ANSWER_CAPACITY, DECIDES_BY_CLIENT_EXPORT, DECIDES_BY_TIME_EXPORT, HOLDS_FOREVER,
    QUERY_CAPACITY, Query, VALID_UNTIL_EXPORT, Verdict,
};
use wasmtime::{
    Engine, InstancePre, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder, TypedFunc,
};

use super::{Decision, Explanation, LocalAnswer, Policy, Question, Ruling};

/// How often the epoch advances.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Ticks a call may run: 20–30 ms.
const CALL_TICKS: u64 = 2;
/// Ticks instantiating and checking a module may take: about 2 s.
const LOAD_TICKS: u64 = 200;
/// Linear memory a plugin may grow to beyond its data.
const MEMORY_HEADROOM: usize = 16 << 20;

/// Why a plugin could not be loaded, or could not explain.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// wasmtime refused the module, or it lacks an export of the ABI.
    #[error("invalid plugin module: {0}")]
    Invalid(String),
    /// The module was built for another version of the plugin ABI.
    #[error(
        "plugin speaks ABI {found}, this build of moat speaks ABI {ABI_VERSION}: \
         compile the policy with this build"
    )]
    AbiVersion {
        /// The version the module reports.
        found: i32,
    },
    /// The plugin trapped, ran out of time or wrote a malformed result.
    #[error("plugin fault: {0}")]
    Fault(String),
    /// The engine could not be made or its epoch thread started.
    #[error("cannot start the WASM engine: {0}")]
    Engine(String),
}

/// Compiles `wasm`, again when the kernel refused for a moment to seal the
/// memfd that holds the module's memory image (`EBUSY` while its pages are
/// pinned): a passing refusal, not a bad module.
fn compile(engine: &wasmtime::Engine, wasm: &[u8]) -> wasmtime::Result<Module> {
    let busy = |err: &wasmtime::Error| {
        err.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ResourceBusy)
        })
    };
    let mut tries = 1;
    loop {
        match Module::new(engine, wasm) {
            Err(err) if tries < 4 && busy(&err) => {
                tracing::debug!(error = %err, "module memory image busy; compiling again");
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            compiled => return compiled,
        }
    }
}

impl PluginError {
    fn invalid(err: wasmtime::Error) -> Self {
        Self::Invalid(format!("{err:#}"))
    }

    fn fault(err: wasmtime::Error) -> Self {
        Self::Fault(format!("{err:#}"))
    }
}

/// The engine policy modules are compiled with and run on: one per
/// process, made by the caller and passed to every [`WasmPolicy`]. Cheap
/// to clone (a handle).
#[derive(Clone)]
pub struct PolicyEngine {
    engine: Engine,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyEngine")
    }
}

impl PolicyEngine {
    /// An engine whose epoch a thread advances every 10 ms while the
    /// engine lives, which bounds every plugin call.
    pub fn start() -> Result<Self, PluginError> {
        let engine = Self::unticked()?;
        let ticking = engine.engine.weak();
        std::thread::Builder::new()
            .name("wasm epoch".into())
            .spawn(move || {
                while let Some(engine) = ticking.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|err| PluginError::Engine(format!("epoch thread: {err}")))?;
        Ok(engine)
    }

    /// An engine whose epoch only [`PolicyEngine::increment_epoch`]
    /// advances: calls are bounded by whoever calls that.
    pub(crate) fn unticked() -> Result<Self, PluginError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|err| PluginError::Engine(format!("{err:#}")))?;
        Ok(Self { engine })
    }

    /// Advances the epoch by one tick.
    #[cfg(test)]
    pub(crate) fn increment_epoch(&self) {
        self.engine.increment_epoch();
    }
}

/// A loaded policy module, shared by every worker.
pub struct WasmPolicy {
    pre: InstancePre<StoreLimits>,
    /// Distinguishes this module from any other for per-thread instances.
    id: u64,
    memory_limit: usize,
    reads_client: bool,
    time: ByTime,
    faults: AtomicU64,
    fault_logged: AtomicBool,
    instances: AtomicU64,
    /// Held only by this policy: workers of a dropped policy see it gone.
    alive: Arc<()>,
}

impl std::fmt::Debug for WasmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPolicy")
            .field("id", &self.id)
            .field("faults", &self.faults)
            .finish()
    }
}

/// How a module's verdicts depend on the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByTime {
    /// They do not: a verdict holds until the policy changes.
    Never,
    /// Each names when it may change (`moat_valid_until`).
    Until,
    /// They do, at any moment: a verdict holds for its question only.
    Always,
}

/// A worker's instance of one module.
struct Worker {
    policy_id: u64,
    policy_alive: Weak<()>,
    store: Store<StoreLimits>,
    memory: Memory,
    query_buffer: usize,
    answer_buffer: usize,
    decide: TypedFunc<(i32, i32), i32>,
    explain: TypedFunc<(i32, i32), i32>,
    valid_until: Option<TypedFunc<(), i64>>,
}

/// Instances a worker thread keeps: every module of the chain in force,
/// plus room for the next version while a swap drains. The oldest goes first.
const WORKER_INSTANCES: usize = 4;

thread_local! {
    static WORKERS: RefCell<Vec<Worker>> = const { RefCell::new(Vec::new()) };
}

impl WasmPolicy {
    /// Compiles `wasm` on `engine` and checks it once, by instantiating it.
    pub fn new(engine: &PolicyEngine, wasm: &[u8]) -> Result<Arc<Self>, PluginError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let module = compile(&engine.engine, wasm).map_err(PluginError::invalid)?;
        let data_end = data_end(&module);
        let pre = Linker::new(&engine.engine)
            .instantiate_pre(&module)
            .map_err(PluginError::invalid)?;
        let policy = Self {
            pre,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            memory_limit: data_end + MEMORY_HEADROOM,
            reads_client: module.get_export(DECIDES_BY_CLIENT_EXPORT).is_some(),
            time: if module.get_export(VALID_UNTIL_EXPORT).is_some() {
                ByTime::Until
            } else if module.get_export(DECIDES_BY_TIME_EXPORT).is_some() {
                ByTime::Always
            } else {
                ByTime::Never
            },
            faults: AtomicU64::new(0),
            fault_logged: AtomicBool::new(false),
            instances: AtomicU64::new(0),
            alive: Arc::new(()),
        };
        policy.instantiate()?;
        Ok(Arc::new(policy))
    }

    /// Instances made of this module so far (one per worker thread, plus
    /// one after each fault).
    #[cfg(test)]
    pub(crate) fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed)
    }

    /// The rule that decides `question`, as the plugin itself tells it
    /// (its `moat_explain` export); `None` when no rule does. For people,
    /// not the query path: it runs on an instance of its own.
    pub fn explain(&self, question: &Question<'_>) -> Result<Option<Explanation>, PluginError> {
        let mut worker = self.instantiate()?;
        let len = write_question(&mut worker, question).map_err(PluginError::fault)?;
        worker.store.set_epoch_deadline(CALL_TICKS);
        let written = worker
            .explain
            .call(&mut worker.store, (len, i32::from(question.qtype)))
            .map_err(PluginError::fault)?;
        let written = usize::try_from(written)
            .ok()
            .filter(|&written| written <= ANSWER_CAPACITY)
            .ok_or_else(|| PluginError::Fault(format!("explanation of {written} bytes")))?;
        if written == 0 {
            return Ok(None);
        }
        let at = worker.answer_buffer;
        let bytes = &worker.memory.data(&worker.store)[at..at + written];
        let (kind, pattern, origin) = moat_plugin_abi::Explanation::decode(bytes)
            .ok_or_else(|| PluginError::Fault("malformed explanation".to_owned()))?;
        Ok(Some(Explanation {
            kind,
            pattern: String::from_utf8_lossy(pattern).into_owned(),
            origin: String::from_utf8_lossy(origin).into_owned(),
        }))
    }

    /// Asks the plugin the smoke set (names, types, clients and times a
    /// plugin meets) on an instance of its own; the first trap, timeout or
    /// bad verdict is the error.
    pub(crate) fn smoke(&self) -> Result<(), PluginError> {
        let long = format!("{}.example", "a".repeat(200));
        let names = ["example.com", "a.b.c.example.org", "", "localhost", &long];
        let clients: [std::net::IpAddr; 3] = [
            [127, 0, 0, 1].into(),
            [192, 168, 1, 23].into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ];
        let times = [0, 1_700_000_000, crate::clock::unix_now(), u64::MAX];
        let mut worker = self.instantiate()?;
        for (index, name) in names.iter().enumerate() {
            for (qtype, client) in [(1, clients[index % 3]), (28, clients[(index + 1) % 3])] {
                let question = Question {
                    name: name.as_bytes(),
                    qtype,
                    client,
                    unix_time: times[index % times.len()],
                };
                self.call(&mut worker, &question).map_err(|err| {
                    PluginError::Fault(format!("asked {name:?} (type {qtype}): {err:#}"))
                })?;
            }
        }
        Ok(())
    }

    fn instantiate(&self) -> Result<Worker, PluginError> {
        self.instances.fetch_add(1, Ordering::Relaxed);
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_limit)
            .instances(1)
            .build();
        let mut store = Store::new(self.pre.module().engine(), limits);
        store.limiter(|limits| limits);
        // Loading may meet a busy CPU; each decision gets `CALL_TICKS` anew.
        store.set_epoch_deadline(LOAD_TICKS);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(PluginError::invalid)?;
        let version: TypedFunc<(), i32> = instance
            .get_typed_func(&mut store, "moat_abi_version")
            .map_err(PluginError::invalid)?;
        let found = version.call(&mut store, ()).map_err(PluginError::fault)?;
        if found != ABI_VERSION {
            return Err(PluginError::AbiVersion { found });
        }
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| PluginError::Invalid("plugin exports no memory".to_owned()))?;
        let mut buffer = |export: &str, capacity: usize| -> Result<usize, PluginError> {
            let address: TypedFunc<(), i32> = instance
                .get_typed_func(&mut store, export)
                .map_err(PluginError::invalid)?;
            let at = address.call(&mut store, ()).map_err(PluginError::fault)? as u32 as usize;
            if at + capacity > memory.data_size(&store) {
                return Err(PluginError::Invalid(format!("{export} outside memory")));
            }
            Ok(at)
        };
        let query_buffer = buffer("moat_query_buffer", QUERY_CAPACITY)?;
        let answer_buffer = buffer("moat_answer_buffer", ANSWER_CAPACITY)?;
        let decide = instance
            .get_typed_func(&mut store, "moat_decide")
            .map_err(PluginError::invalid)?;
        let explain = instance
            .get_typed_func(&mut store, "moat_explain")
            .map_err(PluginError::invalid)?;
        let valid_until = match self.time {
            ByTime::Until => Some(
                instance
                    .get_typed_func(&mut store, VALID_UNTIL_EXPORT)
                    .map_err(PluginError::invalid)?,
            ),
            ByTime::Never | ByTime::Always => None,
        };
        Ok(Worker {
            policy_id: self.id,
            policy_alive: Arc::downgrade(&self.alive),
            store,
            memory,
            query_buffer,
            answer_buffer,
            decide,
            explain,
            valid_until,
        })
    }

    fn call(&self, worker: &mut Worker, question: &Question<'_>) -> wasmtime::Result<Ruling> {
        let len = write_question(worker, question)?;
        worker.store.set_epoch_deadline(CALL_TICKS);
        let code = worker
            .decide
            .call(&mut worker.store, (len, i32::from(question.qtype)))?;
        let decision = match Verdict::from_code(code) {
            Some(Verdict::NoOpinion) => Decision::NoOpinion,
            Some(Verdict::Allow) => Decision::Allow,
            Some(Verdict::Block) => Decision::Block,
            Some(Verdict::Answer) => read_answer(worker).map(Decision::Answer)?,
            Some(Verdict::Refuse) => Decision::Refuse,
            None => return Err(wasmtime::Error::msg(format!("bad verdict code {code}"))),
        };
        let holds_until = match &worker.valid_until {
            Some(valid_until) => match valid_until.call(&mut worker.store, ())? {
                HOLDS_FOREVER => Ruling::FOREVER,
                until => u64::try_from(until).unwrap_or(0),
            },
            None if self.time == ByTime::Always => 0,
            None => Ruling::FOREVER,
        };
        Ok(Ruling {
            decision,
            holds_until,
            by: None,
        })
    }

    fn fault(&self, err: &dyn std::fmt::Display) -> Ruling {
        self.faults.fetch_add(1, Ordering::Relaxed);
        if !self.fault_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(module = self.id, error = %err, "policy plugin fault (logged once per module)");
        }
        Ruling {
            decision: Decision::Fault,
            holds_until: 0,
            by: None,
        }
    }
}

impl Policy for WasmPolicy {
    fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    fn reads_client(&self) -> bool {
        self.reads_client
    }

    fn rule(&self, question: &Question<'_>) -> Ruling {
        WORKERS.with(|workers| {
            let mut workers = workers.borrow_mut();
            let index = match workers
                .iter()
                .position(|worker| worker.policy_id == self.id)
            {
                Some(index) => index,
                None => match self.instantiate() {
                    Ok(worker) => {
                        // Instances of replaced policies go first, so their memory drains.
                        workers.retain(|worker| worker.policy_alive.strong_count() > 0);
                        if workers.len() >= WORKER_INSTANCES {
                            workers.remove(0);
                        }
                        workers.push(worker);
                        workers.len() - 1
                    }
                    Err(err) => return self.fault(&err),
                },
            };
            match self.call(&mut workers[index], question) {
                Ok(ruling) => ruling,
                Err(err) => {
                    // The instance may be half-way through anything: start afresh next time.
                    workers.remove(index);
                    self.fault(&format_args!("{err:#}"))
                }
            }
        })
    }
}

/// Writes `question` into the query buffer (the client group empty until
/// there are client groups); gives the name's length as the plugin takes it.
fn write_question(worker: &mut Worker, question: &Question<'_>) -> wasmtime::Result<i32> {
    let client = match question.client {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let mut input = [0u8; QUERY_CAPACITY];
    let len = Query {
        client: client.octets(),
        unix_time: question.unix_time,
        group: b"",
        name: question.name,
    }
    .write(&mut input);
    let input = &input[..moat_plugin_abi::NAME_AT + len as usize];
    worker
        .memory
        .write(&mut worker.store, worker.query_buffer, input)?;
    Ok(len)
}

/// Copies a plugin's answer out of its answer buffer, checking its form.
fn read_answer(worker: &Worker) -> wasmtime::Result<LocalAnswer> {
    let at = worker.answer_buffer;
    let buffer = &worker.memory.data(&worker.store)[at..at + ANSWER_CAPACITY];
    let len =
        LocalAnswer::checked_len(buffer).ok_or_else(|| wasmtime::Error::msg("malformed answer"))?;
    Ok(LocalAnswer(buffer[..len].to_vec()))
}

/// Highest byte the module's data segments reach, from its minimum memory.
fn data_end(module: &Module) -> usize {
    module
        .exports()
        .find_map(|export| {
            export
                .ty()
                .memory()
                .map(|memory| memory.minimum() as usize * 65_536)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use moat_plugin_abi::RuleKind;

    use super::*;
    use crate::compile::{CompiledPolicy, compile_policy};
    use crate::config::Config;
    use crate::store::DataDir;

    /// An engine no test advances: calls on it are never interrupted.
    fn engine() -> &'static PolicyEngine {
        static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
        ENGINE.get_or_init(|| PolicyEngine::unticked().unwrap())
    }

    fn load(wasm: &[u8]) -> Result<Arc<WasmPolicy>, PluginError> {
        WasmPolicy::new(engine(), wasm)
    }

    fn question(name: &str) -> Question<'_> {
        Question {
            name: name.as_bytes(),
            qtype: 1,
            client: [127, 0, 0, 1].into(),
            unix_time: 0,
        }
    }

    fn ask(policy: &dyn Policy, name: &str) -> Decision {
        policy.decide(&question(name))
    }

    /// A module (WAT text, which wasmtime compiles too) speaking the ABI
    /// whose `moat_decide` body is `body`.
    fn fixture(body: &str) -> Vec<u8> {
        fixture_with(body, "")
    }

    /// Like `fixture`, with `extra` exports.
    fn fixture_with(body: &str, extra: &str) -> Vec<u8> {
        crate::policy::plugin_module_wat(ABI_VERSION, 1, extra, body).into_bytes()
    }

    /// Like `fixture` (deciding nothing), with `body` as `moat_explain`'s.
    fn fixture_explaining(body: &str) -> Vec<u8> {
        String::from_utf8(fixture("i32.const 0"))
            .unwrap()
            .replacen(
                "(param i32 i32) (result i32) i32.const 0)",
                &format!("(param i32 i32) (result i32) {body})"),
                1,
            )
            .into_bytes()
    }

    /// Compiles `[policy]` from `policy_toml` plus one blocklist source per
    /// entry of `lists`; gives the modules and the sources' paths.
    fn compiled_with(policy_toml: &str, lists: &[&str]) -> (CompiledPolicy, Vec<String>) {
        let root = std::env::temp_dir().join(format!(
            "moat-wasm-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let data = DataDir::open(&root).unwrap();
        let mut text = format!("[policy]\n{policy_toml}\n");
        let mut paths = Vec::new();
        for (index, list) in lists.iter().enumerate() {
            let path = root.join(format!("list-{index}.txt"));
            std::fs::write(&path, list).unwrap();
            text.push_str(&format!(
                "[[policy.blocklists]]\nsource = \"{}\"\n",
                path.display()
            ));
            paths.push(path.display().to_string());
        }
        let config = Config::parse(&text, "test").unwrap();
        let compiled = compile_policy(&config.policy, &data).unwrap();
        std::fs::remove_dir_all(root).unwrap();
        (compiled, paths)
    }

    const LIST: &str = "||ads.example^\n||tracker.example^\n@@||ok.tracker.example^\n";

    fn compiled(policy_toml: &str) -> Vec<u8> {
        compiled_with(policy_toml, &[LIST]).0.blocklist
    }

    fn rule(kind: RuleKind, pattern: &str, origin: &str) -> Option<Explanation> {
        Some(Explanation {
            kind,
            pattern: pattern.to_owned(),
            origin: origin.to_owned(),
        })
    }

    #[test]
    fn every_rule_kind_and_precedence_in_the_real_module() {
        let module = compiled(
            "deny = [\"exact.example\", \"*.denied.ok.tracker.example\"]\nallow = [\"fine.ads.example\", \"*.kept.ads.example\"]",
        );
        let policy = load(&module).unwrap();
        assert_eq!(ask(&*policy, "ads.example"), Decision::Block, "listed name");
        assert_eq!(
            ask(&*policy, "a.b.ads.example"),
            Decision::Block,
            "listed names cover subdomains"
        );
        assert_eq!(
            ask(&*policy, "badads.example"),
            Decision::NoOpinion,
            "suffixes stop at label boundaries"
        );
        assert_eq!(
            ask(&*policy, "x.tracker.example"),
            Decision::Block,
            "adblock rule"
        );
        assert_eq!(
            ask(&*policy, "ok.tracker.example"),
            Decision::Allow,
            "adblock exception"
        );
        assert_eq!(
            ask(&*policy, "fine.ads.example"),
            Decision::Allow,
            "exact allow beats the list"
        );
        assert_eq!(
            ask(&*policy, "sub.fine.ads.example"),
            Decision::Block,
            "exact allow is exact"
        );
        assert_eq!(
            ask(&*policy, "x.kept.ads.example"),
            Decision::Allow,
            "suffix allow"
        );
        assert_eq!(
            ask(&*policy, "exact.example"),
            Decision::Block,
            "exact deny"
        );
        assert_eq!(ask(&*policy, "sub.exact.example"), Decision::NoOpinion);
        assert_eq!(
            ask(&*policy, "x.denied.ok.tracker.example"),
            Decision::Block,
            "deny beats allow"
        );
        assert_eq!(ask(&*policy, "example"), Decision::NoOpinion);
        assert_eq!(ask(&*policy, ""), Decision::NoOpinion);
        assert_eq!(policy.faults(), 0);
    }

    #[test]
    fn the_blocklist_explains_which_rule_decided() {
        let (compiled, lists) = compiled_with(
            "deny = [\"exact.example\", \"*.denied.ads.example\"]\nallow = [\"fine.ads.example\"]",
            &[LIST],
        );
        let policy = load(&compiled.blocklist).unwrap();
        let explain = |name: &str| policy.explain(&question(name)).unwrap();
        let list = lists[0].as_str();
        assert_eq!(
            explain("x.denied.ads.example"),
            rule(RuleKind::DenySuffix, "*.denied.ads.example", "policy.deny"),
            "deny beats the list"
        );
        assert_eq!(
            explain("exact.example"),
            rule(RuleKind::DenyExact, "exact.example", "policy.deny")
        );
        assert_eq!(
            explain("fine.ads.example"),
            rule(RuleKind::AllowExact, "fine.ads.example", "policy.allow"),
            "allow beats the list"
        );
        assert_eq!(
            explain("a.b.ads.example"),
            rule(RuleKind::BlockSuffix, "*.ads.example", list),
            "a list entry covers the names below it"
        );
        assert_eq!(
            explain("x.ok.tracker.example"),
            rule(RuleKind::AllowSuffix, "*.ok.tracker.example", list),
            "a list's exception"
        );
        assert_eq!(explain("elsewhere.example"), None, "undecided");
        assert_eq!(explain("badads.example"), None);
        assert_eq!(ask(&*policy, "a.b.ads.example"), Decision::Block);
        assert_eq!(ask(&*policy, "fine.ads.example"), Decision::Allow);
    }

    #[test]
    fn the_blocklist_names_the_first_source_that_lists_a_name() {
        let lists = [
            "0.0.0.0 one.example\n||shared.example^\n",
            "0.0.0.0 two.example\n||shared.example^\n",
            "0.0.0.0 three.example\n",
        ];
        let (compiled, paths) = compiled_with("", &lists);
        let policy = load(&compiled.blocklist).unwrap();
        let origin = |name: &str| {
            policy
                .explain(&question(name))
                .unwrap()
                .map(|explanation| explanation.origin)
        };
        assert_eq!(origin("one.example").as_ref(), Some(&paths[0]));
        assert_eq!(origin("x.shared.example").as_ref(), Some(&paths[0]));
        assert_eq!(origin("two.example").as_ref(), Some(&paths[1]));
        assert_eq!(origin("three.example").as_ref(), Some(&paths[2]));
        assert_eq!(origin("four.example"), None);
    }

    #[test]
    fn local_records_explain_which_owner_answers() {
        let records = [
            ("nas.lan", "A", "192.168.1.20"),
            ("*.lan", "A", "192.168.1.2"),
            ("*.dev.lan", "AAAA", "fd00::2"),
        ];
        let mut toml = String::new();
        for (name, kind, value) in records {
            toml.push_str(&format!(
                "[[policy.local_records]]\nname = \"{name}\"\ntype = \"{kind}\"\nvalue = \"{value}\"\n"
            ));
        }
        let (compiled, _) = compiled_with(&toml.replacen("[[", "local_ptr = true\n[[", 1), &[]);
        let policy = load(&compiled.local_records).unwrap();
        let explain = |name: &str| policy.explain(&question(name)).unwrap();
        let local = "policy.local_records";
        assert_eq!(
            explain("nas.lan"),
            rule(RuleKind::LocalName, "nas.lan", local)
        );
        assert_eq!(
            explain("printer.lan"),
            rule(RuleKind::LocalWildcard, "*.lan", local)
        );
        assert_eq!(
            explain("box.dev.lan"),
            rule(RuleKind::LocalWildcard, "*.dev.lan", local),
            "the longest wildcard"
        );
        assert_eq!(
            explain("20.1.168.192.in-addr.arpa"),
            rule(RuleKind::LocalName, "20.1.168.192.in-addr.arpa", local),
            "a PTR made from an A record"
        );
        assert_eq!(explain("lan"), None, "a wildcard covers only names below");
        assert_eq!(explain("elsewhere.example"), None);
        assert!(matches!(ask(&*policy, "nas.lan"), Decision::Answer(_)));
    }

    #[test]
    fn a_bad_explanation_is_a_fault() {
        let too_long = load(&fixture_explaining("i32.const 99999")).unwrap();
        assert!(matches!(
            too_long.explain(&question("a.example")),
            Err(PluginError::Fault(_))
        ));
        // Three zero bytes: kind 0, then a pattern length cut short.
        let malformed = load(&fixture_explaining("i32.const 3")).unwrap();
        let err = malformed.explain(&question("a.example")).unwrap_err();
        assert!(err.to_string().contains("malformed explanation"), "{err}");
    }

    #[test]
    fn a_trap_is_a_fault() {
        let policy = load(&fixture("unreachable")).unwrap();
        assert_eq!(ask(&*policy, "a.example"), Decision::Fault);
        assert_eq!(ask(&*policy, "b.example"), Decision::Fault);
        assert_eq!(policy.faults(), 2);
    }

    #[test]
    fn a_runaway_loop_is_stopped_once_the_epoch_moves() {
        // An engine of its own: its epoch moves only here. The plugin
        // loops for 9-byte names only.
        let engine = PolicyEngine::unticked().unwrap();
        let body = "(if (i32.eq (local.get 0) (i32.const 9)) (then (loop (br 0)))) i32.const 0";
        let policy = WasmPolicy::new(&engine, &fixture(body)).unwrap();
        let (ready, warmed) = std::sync::mpsc::channel();
        let asking = std::thread::spawn({
            let policy = Arc::clone(&policy);
            move || {
                // Instantiates this thread's worker before the epoch moves.
                assert_eq!(ask(&*policy, "warm"), Decision::NoOpinion);
                ready.send(()).unwrap();
                ask(&*policy, "a.example")
            }
        });
        warmed.recv().unwrap();
        let mut ticks = 0u64;
        while !asking.is_finished() {
            engine.increment_epoch();
            ticks += 1;
            std::thread::yield_now();
        }
        assert_eq!(asking.join().unwrap(), Decision::Fault);
        assert!(ticks >= CALL_TICKS, "stopped after {ticks} ticks");
        assert_eq!(policy.faults(), 1);
        assert_eq!(policy.instances(), 2, "the probe and the worker, no other");
    }

    #[test]
    fn a_runaway_explanation_is_stopped_once_the_epoch_moves() {
        let engine = PolicyEngine::unticked().unwrap();
        let module = fixture_explaining("(loop (br 0)) i32.const 0");
        let policy = WasmPolicy::new(&engine, &module).unwrap();
        let explaining = std::thread::spawn({
            let policy = Arc::clone(&policy);
            move || policy.explain(&question("a.example"))
        });
        while !explaining.is_finished() {
            engine.increment_epoch();
            std::thread::yield_now();
        }
        assert!(matches!(
            explaining.join().unwrap(),
            Err(PluginError::Fault(_))
        ));
    }

    #[test]
    fn a_memory_grab_is_refused_and_bad_verdicts_are_faults() {
        // Grows memory until refused, then returns the page count: not a verdict.
        let body = "(block (loop (br_if 1 (i32.eq (memory.grow (i32.const 256)) (i32.const -1))) (br 0))) memory.size";
        let policy = load(&fixture(body)).unwrap();
        assert_eq!(ask(&*policy, "a.example"), Decision::Fault);
        assert!(policy.memory_limit <= 1 << 30);
    }

    #[test]
    fn the_client_address_reaches_the_plugin() {
        // Blocks when the last byte of the client's address is 7.
        let body = "(select (i32.const 2) (i32.const 0) (i32.eq (i32.load8_u (i32.const 1039)) (i32.const 7)))";
        let policy = load(&fixture_with(
            body,
            r#"(func (export "moat_decides_by_client") (result i32) i32.const 1)"#,
        ))
        .unwrap();
        assert!(policy.reads_client(), "the export says so");
        assert!(!load(&fixture("i32.const 0")).unwrap().reads_client());
        let from = |client: [u8; 4]| {
            policy.decide(&Question {
                name: b"a.example",
                qtype: 1,
                client: client.into(),
                unix_time: 0,
            })
        };
        assert_eq!(from([127, 0, 0, 7]), Decision::Block);
        assert_eq!(from([127, 0, 0, 1]), Decision::NoOpinion);
    }

    #[test]
    fn the_time_reaches_the_plugin_and_marks_it_as_deciding_by_time() {
        // Blocks when the time in the query buffer is 12345.
        let body = "(select (i32.const 2) (i32.const 0) (i64.eq (i64.load (i32.const 1040)) (i64.const 12345)))";
        let policy = load(&fixture_with(
            body,
            r#"(func (export "moat_decides_by_time") (result i32) i32.const 1)"#,
        ))
        .unwrap();
        assert!(!policy.reads_client(), "by time, not by client");
        let at = |unix_time| {
            policy.rule(&Question {
                unix_time,
                ..question("a.example")
            })
        };
        assert_eq!(at(12_345).decision, Decision::Block);
        assert_eq!(at(12_345 + 3600).decision, Decision::NoOpinion);
        assert_eq!(
            at(12_345 + 3600).holds_until,
            0,
            "without a boundary its verdicts hold for their question only"
        );
    }

    #[test]
    fn a_plugin_names_the_boundary_of_each_verdict() {
        // Refuses; its verdicts hold until the time asked plus 60 s.
        let policy = load(&fixture_with(
            "i32.const 4",
            r#"(func (export "moat_valid_until") (result i64)
                (i64.add (i64.load (i32.const 1040)) (i64.const 60)))"#,
        ))
        .unwrap();
        let ruling = policy.rule(&Question {
            unix_time: 1_000,
            ..question("a.example")
        });
        assert_eq!(
            (ruling.decision, ruling.holds_until),
            (Decision::Refuse, 1_060)
        );
        let lasting = load(&fixture_with(
            "i32.const 0",
            r#"(func (export "moat_valid_until") (result i64) i64.const 0x7fffffffffffffff)"#,
        ))
        .unwrap();
        assert_eq!(
            lasting.rule(&question("a.example")).holds_until,
            Ruling::FOREVER
        );
        let plain = load(&fixture("i32.const 0")).unwrap();
        assert_eq!(
            plain.rule(&question("a.example")).holds_until,
            Ruling::FOREVER
        );
    }

    #[test]
    fn a_configured_plugin_faults_by_its_fail_mode_and_is_switched_off() {
        use crate::config::PluginFailMode;
        use crate::policy::{Chain, Configured, SWITCH_OFF_FAULTS};
        for (fail_mode, expected) in [
            (PluginFailMode::Skip, Decision::Block),
            (PluginFailMode::Open, Decision::Allow),
            (PluginFailMode::Closed, Decision::FailClosed),
        ] {
            let trapping = load(&fixture("unreachable")).unwrap();
            let plugin = Arc::new(Configured::new(
                "trap".parse().unwrap(),
                fail_mode,
                Arc::clone(&trapping),
            ));
            // The built-in after it blocks everything.
            let chain = Chain(vec![
                plugin as Arc<dyn Policy>,
                load(&fixture("i32.const 2")).unwrap(),
            ]);
            for asked in 1..=SWITCH_OFF_FAULTS + 5 {
                assert_eq!(
                    ask(&chain, "a.example"),
                    expected,
                    "{fail_mode:?}, query {asked}"
                );
            }
            assert_eq!(
                trapping.faults(),
                u64::from(SWITCH_OFF_FAULTS),
                "{fail_mode:?}: not called once switched off"
            );
            let status = chain.plugins();
            assert_eq!(status.len(), 1);
            assert!(status[0].switched_off, "{status:?}");
            assert_eq!(status[0].name, "trap");
        }
        let fine = Configured::new(
            "fine".parse().unwrap(),
            PluginFailMode::Skip,
            load(&fixture("i32.const 2")).unwrap(),
        );
        assert_eq!(ask(&fine, "a.example"), Decision::Block);
        assert!(!fine.plugins()[0].switched_off);
    }

    #[test]
    fn a_runaway_plugin_is_contained_and_switched_off_while_the_others_decide() {
        use crate::config::PluginFailMode;
        use crate::policy::{Chain, Configured, SWITCH_OFF_FAULTS};
        let looping = WasmPolicy::new(
            &PolicyEngine::start().unwrap(),
            &fixture("(loop (br 0)) i32.const 0"),
        )
        .unwrap();
        let chain = Chain(vec![
            Arc::new(Configured::new(
                "loops".parse().unwrap(),
                PluginFailMode::Skip,
                looping.clone(),
            )) as Arc<dyn Policy>,
            load(&fixture("i32.const 2")).unwrap(),
        ]);
        for _ in 0..SWITCH_OFF_FAULTS + 2 {
            assert_eq!(ask(&chain, "a.example"), Decision::Block);
        }
        assert_eq!(looping.faults(), u64::from(SWITCH_OFF_FAULTS));
        assert!(chain.plugins()[0].switched_off);
    }

    #[test]
    fn a_thread_keeps_one_instance_per_module_of_the_chain() {
        let local = load(&fixture("i32.const 0")).unwrap();
        let blocklist = load(&fixture("i32.const 2")).unwrap();
        let chain = crate::policy::Chain(vec![local.clone(), blocklist.clone()]);
        for _ in 0..100 {
            assert_eq!(ask(&chain, "a.example"), Decision::Block);
        }
        // One probe at load, one for this thread.
        assert_eq!((local.instances(), blocklist.instances()), (2, 2));
    }

    #[test]
    fn instances_of_a_replaced_policy_are_dropped() {
        let old = load(&fixture("i32.const 2")).unwrap();
        assert_eq!(ask(&*old, "a.example"), Decision::Block);
        drop(old);
        let new = load(&fixture("i32.const 0")).unwrap();
        assert_eq!(ask(&*new, "a.example"), Decision::NoOpinion);
        let ids: Vec<u64> =
            WORKERS.with(|workers| workers.borrow().iter().map(|w| w.policy_id).collect());
        assert_eq!(ids, [new.id], "only the policy in force keeps an instance");
    }

    #[test]
    fn wrong_abi_version_is_refused() {
        let module = (r#"(module (memory (export "memory") 1)
                (func (export "moat_abi_version") (result i32) i32.const 99)
                (func (export "moat_query_buffer") (result i32) i32.const 0)
                (func (export "moat_decide") (param i32 i32) (result i32) i32.const 0))"#)
            .as_bytes();
        let err = load(module).unwrap_err().to_string();
        assert!(err.contains("ABI 99"), "{err}");
        assert!(load(b"not wasm").is_err());
    }

    #[test]
    fn a_module_of_the_first_abi_is_refused_by_its_version() {
        // ABI 1 had no `moat_explain` and no required answer buffer.
        let module = (r#"(module (memory (export "memory") 1)
                (func (export "moat_abi_version") (result i32) i32.const 1)
                (func (export "moat_query_buffer") (result i32) i32.const 0)
                (func (export "moat_decide") (param i32 i32) (result i32) i32.const 0))"#)
            .as_bytes();
        let err = load(module).unwrap_err();
        assert!(matches!(err, PluginError::AbiVersion { found: 1 }), "{err}");
        let said = err.to_string();
        assert!(said.contains("ABI 1,") && said.contains("ABI 4"), "{said}");
        let without_explain = String::from_utf8(fixture("i32.const 0")).unwrap().replace(
            r#"(func (export "moat_explain") (param i32 i32) (result i32) i32.const 0)"#,
            "",
        );
        let err = load(without_explain.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("moat_explain"), "{err}");
    }
}
