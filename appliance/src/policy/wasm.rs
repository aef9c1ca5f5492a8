//! The WASM policy host: one engine per process, a pre-instantiated module
//! per policy version, one instance per worker thread, typed calls bounded
//! in time (epoch interruption) and memory (a store limiter). A trap, a
//! timeout or a bad verdict is a fault: counted, logged once per module, and
//! decided as `Decision::Fault` (the query path applies the fail mode).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use moat_plugin_abi::{
    ABI_VERSION, ANSWER_CAPACITY, CLIENT_LEN, DECIDES_BY_CLIENT_EXPORT, NAME_CAPACITY,
    QUERY_CAPACITY, Verdict,
};
use wasmtime::{
    Engine, InstancePre, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder, TypedFunc,
};

use super::{Decision, LocalAnswer, Policy, Question};

/// How often the epoch advances.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Ticks a call may run: 20–30 ms.
const CALL_TICKS: u64 = 2;
/// Ticks instantiating and checking a module may take: about 2 s.
const LOAD_TICKS: u64 = 200;
/// Linear memory a plugin may grow to beyond its data.
const MEMORY_HEADROOM: usize = 16 << 20;

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// wasmtime refused the module.
    #[error("invalid plugin module: {0}")]
    Invalid(String),
}

/// The process's engine, with a thread advancing its epoch.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).expect("wasmtime engine with default settings");
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("wasm epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .expect("start the epoch thread");
        engine
    })
}

/// A loaded policy module, shared by every worker.
pub struct WasmPolicy {
    pre: InstancePre<StoreLimits>,
    /// Distinguishes this module from any other for per-thread instances.
    id: u64,
    memory_limit: usize,
    reads_client: bool,
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

/// A worker's instance of one module.
struct Worker {
    policy_id: u64,
    policy_alive: Weak<()>,
    store: Store<StoreLimits>,
    memory: Memory,
    query_buffer: usize,
    answer_buffer: Option<usize>,
    decide: TypedFunc<(i32, i32), i32>,
}

/// Instances a worker thread keeps: every module of the chain in force,
/// plus room for the next version while a swap drains. The oldest goes first.
const WORKER_INSTANCES: usize = 4;

thread_local! {
    static WORKERS: RefCell<Vec<Worker>> = const { RefCell::new(Vec::new()) };
}

impl WasmPolicy {
    /// Compiles `wasm` and checks it once, by instantiating it.
    pub fn new(wasm: &[u8]) -> Result<Arc<Self>, PluginError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let invalid = |err: wasmtime::Error| PluginError::Invalid(format!("{err:#}"));
        let module = Module::new(engine(), wasm).map_err(invalid)?;
        let data_end = data_end(&module);
        let pre = Linker::new(engine())
            .instantiate_pre(&module)
            .map_err(invalid)?;
        let policy = Self {
            pre,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            memory_limit: data_end + MEMORY_HEADROOM,
            reads_client: module.get_export(DECIDES_BY_CLIENT_EXPORT).is_some(),
            faults: AtomicU64::new(0),
            fault_logged: AtomicBool::new(false),
            instances: AtomicU64::new(0),
            alive: Arc::new(()),
        };
        policy.instantiate().map_err(invalid)?;
        Ok(Arc::new(policy))
    }

    /// Instances made of this module so far (one per worker thread, plus
    /// one after each fault).
    pub fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed)
    }

    fn instantiate(&self) -> wasmtime::Result<Worker> {
        self.instances.fetch_add(1, Ordering::Relaxed);
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_limit)
            .instances(1)
            .build();
        let mut store = Store::new(engine(), limits);
        store.limiter(|limits| limits);
        // Loading may meet a busy CPU; each decision gets `CALL_TICKS` anew.
        store.set_epoch_deadline(LOAD_TICKS);
        let instance = self.pre.instantiate(&mut store)?;
        let version: TypedFunc<(), i32> =
            instance.get_typed_func(&mut store, "moat_abi_version")?;
        let found = version.call(&mut store, ())?;
        if found != ABI_VERSION {
            return Err(wasmtime::Error::msg(format!(
                "plugin speaks ABI {found}, host speaks {ABI_VERSION}"
            )));
        }
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| wasmtime::Error::msg("plugin exports no memory"))?;
        let buffer: TypedFunc<(), i32> =
            instance.get_typed_func(&mut store, "moat_query_buffer")?;
        let query_buffer = buffer.call(&mut store, ())? as u32 as usize;
        if query_buffer + QUERY_CAPACITY > memory.data_size(&store) {
            return Err(wasmtime::Error::msg("query buffer outside memory"));
        }
        let answer_buffer =
            match instance.get_typed_func::<(), i32>(&mut store, "moat_answer_buffer") {
                Ok(answer) => {
                    let at = answer.call(&mut store, ())? as u32 as usize;
                    if at + ANSWER_CAPACITY > memory.data_size(&store) {
                        return Err(wasmtime::Error::msg("answer buffer outside memory"));
                    }
                    Some(at)
                }
                Err(_) => None,
            };
        let decide = instance.get_typed_func(&mut store, "moat_decide")?;
        Ok(Worker {
            policy_id: self.id,
            policy_alive: Arc::downgrade(&self.alive),
            store,
            memory,
            query_buffer,
            answer_buffer,
            decide,
        })
    }

    fn call(&self, worker: &mut Worker, question: &Question<'_>) -> wasmtime::Result<Decision> {
        let name = &question.name[..question.name.len().min(NAME_CAPACITY)];
        let mut input = [0u8; QUERY_CAPACITY];
        let client = match question.client {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        input[..CLIENT_LEN].copy_from_slice(&client.octets());
        input[CLIENT_LEN..CLIENT_LEN + name.len()].copy_from_slice(name);
        let input = &input[..CLIENT_LEN + name.len()];
        worker
            .memory
            .write(&mut worker.store, worker.query_buffer, input)?;
        worker.store.set_epoch_deadline(CALL_TICKS);
        let code = worker.decide.call(
            &mut worker.store,
            (name.len() as i32, i32::from(question.qtype)),
        )?;
        match Verdict::from_code(code) {
            Some(Verdict::NoOpinion) => Ok(Decision::NoOpinion),
            Some(Verdict::Allow) => Ok(Decision::Allow),
            Some(Verdict::Block) => Ok(Decision::Block),
            Some(Verdict::Answer) => read_answer(worker).map(Decision::Answer),
            None => Err(wasmtime::Error::msg(format!("bad verdict code {code}"))),
        }
    }

    fn fault(&self, err: &wasmtime::Error) -> Decision {
        self.faults.fetch_add(1, Ordering::Relaxed);
        if !self.fault_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(module = self.id, error = %format!("{err:#}"), "policy plugin fault (logged once per module)");
        }
        Decision::Fault
    }
}

impl Policy for WasmPolicy {
    fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    fn reads_client(&self) -> bool {
        self.reads_client
    }

    fn decide(&self, question: &Question<'_>) -> Decision {
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
                Ok(decision) => decision,
                Err(err) => {
                    // The instance may be half-way through anything: start afresh next time.
                    workers.remove(index);
                    self.fault(&err)
                }
            }
        })
    }
}

/// Copies a plugin's answer out of its answer buffer, checking its form.
fn read_answer(worker: &Worker) -> wasmtime::Result<LocalAnswer> {
    let at = worker
        .answer_buffer
        .ok_or_else(|| wasmtime::Error::msg("answered without an answer buffer"))?;
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

    use super::*;
    use crate::compile::compile_policy;
    use crate::config::Config;
    use crate::store::DataDir;

    fn ask(policy: &dyn Policy, name: &str) -> Decision {
        policy.decide(&Question {
            name: name.as_bytes(),
            qtype: 1,
            client: [127, 0, 0, 1].into(),
        })
    }

    /// A module (WAT text, which wasmtime compiles too) speaking the ABI
    /// whose `moat_decide` body is `body`.
    fn fixture(body: &str) -> Vec<u8> {
        fixture_with(body, "")
    }

    /// Like `fixture`, with `extra` exports.
    fn fixture_with(body: &str, extra: &str) -> Vec<u8> {
        (format!(
            r#"(module
                (memory (export "memory") 1) {extra}
                (func (export "moat_abi_version") (result i32) i32.const {ABI_VERSION})
                (func (export "moat_query_buffer") (result i32) i32.const 1024)
                (func (export "moat_decide") (param i32 i32) (result i32) {body}))"#
        ))
        .into_bytes()
    }

    fn compiled(policy_toml: &str) -> Vec<u8> {
        let root = std::env::temp_dir().join(format!(
            "moat-wasm-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let data = DataDir::open(&root).unwrap();
        let list = root.join("list.txt");
        std::fs::write(
            &list,
            "0.0.0.0 ads.example\n||tracker.example^\n@@||ok.tracker.example^\n",
        )
        .unwrap();
        let text = format!(
            "[policy]\n{policy_toml}\n[[policy.blocklists]]\nsource = \"{}\"\n",
            list.display()
        );
        let config = Config::parse(&text, "test").unwrap();
        let module = compile_policy(&config.policy, &data).unwrap().blocklist;
        std::fs::remove_dir_all(root).unwrap();
        module
    }

    #[test]
    fn every_rule_kind_and_precedence_in_the_real_module() {
        let module = compiled(
            "deny = [\"exact.example\", \"*.denied.ok.tracker.example\"]\nallow = [\"fine.ads.example\", \"*.kept.ads.example\"]",
        );
        let policy = WasmPolicy::new(&module).unwrap();
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
    fn a_trap_is_a_fault() {
        let policy = WasmPolicy::new(&fixture("unreachable")).unwrap();
        assert_eq!(ask(&*policy, "a.example"), Decision::Fault);
        assert_eq!(ask(&*policy, "b.example"), Decision::Fault);
        assert_eq!(policy.faults(), 2);
    }

    #[test]
    fn a_runaway_loop_is_stopped() {
        let policy = WasmPolicy::new(&fixture("(loop (br 0)) i32.const 0")).unwrap();
        let started = crate::clock::now();
        assert_eq!(ask(&*policy, "a.example"), Decision::Fault);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stopped after {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_memory_grab_is_refused_and_bad_verdicts_are_faults() {
        // Grows memory until refused, then returns the page count: not a verdict.
        let body = "(block (loop (br_if 1 (i32.eq (memory.grow (i32.const 256)) (i32.const -1))) (br 0))) memory.size";
        let policy = WasmPolicy::new(&fixture(body)).unwrap();
        assert_eq!(ask(&*policy, "a.example"), Decision::Fault);
        assert!(policy.memory_limit <= 1 << 30);
    }

    #[test]
    fn the_client_address_reaches_the_plugin() {
        // Blocks when the last byte of the client's address is 7.
        let body = "(select (i32.const 2) (i32.const 0) (i32.eq (i32.load8_u (i32.const 1039)) (i32.const 7)))";
        let policy = WasmPolicy::new(&fixture_with(
            body,
            r#"(func (export "moat_decides_by_client") (result i32) i32.const 1)"#,
        ))
        .unwrap();
        assert!(policy.reads_client(), "the export says so");
        assert!(
            !WasmPolicy::new(&fixture("i32.const 0"))
                .unwrap()
                .reads_client()
        );
        let from = |client: [u8; 4]| {
            policy.decide(&Question {
                name: b"a.example",
                qtype: 1,
                client: client.into(),
            })
        };
        assert_eq!(from([127, 0, 0, 7]), Decision::Block);
        assert_eq!(from([127, 0, 0, 1]), Decision::NoOpinion);
    }

    #[test]
    fn a_thread_keeps_one_instance_per_module_of_the_chain() {
        let local = WasmPolicy::new(&fixture("i32.const 0")).unwrap();
        let blocklist = WasmPolicy::new(&fixture("i32.const 2")).unwrap();
        let chain = crate::policy::Chain(vec![local.clone(), blocklist.clone()]);
        for _ in 0..100 {
            assert_eq!(ask(&chain, "a.example"), Decision::Block);
        }
        // One probe at load, one for this thread.
        assert_eq!((local.instances(), blocklist.instances()), (2, 2));
    }

    #[test]
    fn instances_of_a_replaced_policy_are_dropped() {
        let old = WasmPolicy::new(&fixture("i32.const 2")).unwrap();
        assert_eq!(ask(&*old, "a.example"), Decision::Block);
        drop(old);
        let new = WasmPolicy::new(&fixture("i32.const 0")).unwrap();
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
        let err = WasmPolicy::new(module).unwrap_err().to_string();
        assert!(err.contains("ABI 99"), "{err}");
        assert!(WasmPolicy::new(b"not wasm").is_err());
    }
}
