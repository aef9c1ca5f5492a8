//! Configured plugins (`[[policy.plugins]]`): each module is read from the
//! primary's allowed directories, checked (valid, imports nothing, one
//! memory within `MAX_DECLARED_MEMORY`) and given its configuration as a
//! data segment at `DATA_BASE`. Its ABI version and the smoke set are
//! checked when the host loads it, before the policy is signed
//! (`daemon/policy.rs`).

use moat_plugin_abi::{MAX_DECLARED_MEMORY, config_header};
use wasmparser::{Parser, Payload, Validator};

use super::link::with_data_segment;
use super::sources::allowed;
use crate::config::{PluginName, PluginSpec};
use crate::policy::{PolicyEngine, WasmPolicy};
use crate::store::DataDir;

/// Largest module file read.
pub(crate) const MAX_MODULE_BYTES: u64 = 16 << 20;

/// A plugin the compiler refuses, and why.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{name}` refused: {reason}")]
pub struct PluginRefused {
    /// The plugin's name.
    pub name: PluginName,
    /// What is wrong with it.
    pub reason: String,
}

/// The module of `spec` with its configuration, checked.
pub(crate) fn build(spec: &PluginSpec, data: &DataDir) -> Result<Vec<u8>, PluginRefused> {
    let refuse = |reason: String| PluginRefused {
        name: spec.name,
        reason,
    };
    let module = read_module(spec, data).map_err(refuse)?;
    configured(&module, spec).map_err(refuse)
}

/// `module`, checked as [`build`] checks it, with `spec`'s configuration.
fn configured(module: &[u8], spec: &PluginSpec) -> Result<Vec<u8>, String> {
    check_module(module)?;
    with_data_segment(module, &config_data(spec))
        .map_err(|err| format!("cannot add its configuration: {err}"))
}

/// `module` with the configuration `config_toml` (the body of a
/// `[policy.plugins.config]` table), checked as the compiler checks a
/// configured plugin: what `moat plugin test` runs.
pub fn with_config(module: &[u8], config_toml: &str) -> Result<Vec<u8>, String> {
    let config: toml::Table =
        toml::from_str(config_toml).map_err(|err| format!("its configuration: {err}"))?;
    let mut spec = toml::Table::new();
    spec.insert("name".into(), "test".into());
    spec.insert("module".into(), "test.wasm".into());
    spec.insert("config".into(), config.into());
    let spec: PluginSpec = toml::Value::Table(spec)
        .try_into()
        .map_err(|err| format!("its configuration: {err}"))?;
    configured(module, &spec)
}

/// Checks `module` as the primary does before signing (with an empty
/// configuration): what [`build`] checks, then its ABI version, exports
/// and the smoke set; gives the reason it is refused.
pub fn check_plugin(module: &[u8], engine: &PolicyEngine) -> Result<(), String> {
    let module = with_config(module, "")?;
    let loaded = WasmPolicy::new(engine, &module).map_err(|err| err.to_string())?;
    loaded.smoke().map_err(|err| err.to_string())
}

/// The bytes of `spec`'s module file, at most [`MAX_MODULE_BYTES`].
pub(crate) fn read_module(spec: &PluginSpec, data: &DataDir) -> Result<Vec<u8>, String> {
    let shown = spec.module.display();
    let path =
        allowed(&spec.module, data.source_dirs()).map_err(|err| format!("{shown}: {err}"))?;
    let len = std::fs::metadata(&path)
        .map_err(|err| format!("{shown}: {err}"))?
        .len();
    if len > MAX_MODULE_BYTES {
        return Err(format!(
            "{shown}: {len} bytes; a module may have at most {MAX_MODULE_BYTES}"
        ));
    }
    std::fs::read(&path).map_err(|err| format!("{shown}: {err}"))
}

/// The configuration as the plugin finds it at `DATA_BASE`.
fn config_data(spec: &PluginSpec) -> Vec<u8> {
    let lines = spec.config_lines();
    [&config_header(lines.len())[..], lines.as_bytes()].concat()
}

/// A valid module that imports nothing and declares one 32-bit memory of
/// at most [`MAX_DECLARED_MEMORY`] bytes.
fn check_module(module: &[u8]) -> Result<(), String> {
    Validator::new()
        .validate_all(module)
        .map_err(|err| format!("not a valid WASM module: {err}"))?;
    let mut memories = 0;
    for payload in Parser::new(0).parse_all(module) {
        match payload.map_err(|err| format!("not a valid WASM module: {err}"))? {
            Payload::ImportSection(imports) => {
                if let Some(import) = imports.into_iter().next() {
                    let import = import.map_err(|err| format!("unreadable import: {err}"))?;
                    return Err(format!(
                        "it imports `{}.{}`; a plugin may import nothing",
                        import.module, import.name
                    ));
                }
            }
            Payload::MemorySection(section) => {
                for memory in section {
                    let memory = memory.map_err(|err| format!("unreadable memory: {err}"))?;
                    memories += 1;
                    let declared = memory.initial.saturating_mul(65_536);
                    if memory.memory64 || memory.shared {
                        return Err("its memory must be 32-bit and not shared".to_owned());
                    }
                    if declared > MAX_DECLARED_MEMORY {
                        return Err(format!(
                            "it declares {declared} bytes of memory; a plugin may declare at most {MAX_DECLARED_MEMORY}"
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    if memories != 1 {
        return Err(format!("it defines {memories} memories; a plugin has one"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::compile::{KIOSK_EXAMPLE, SCHEDULE_EXAMPLE, compile_policy};
    use crate::config::Config;
    use crate::policy::{Decision, Policy, PolicyEngine, Question, Ruling, WasmPolicy};

    fn engine() -> &'static PolicyEngine {
        static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
        ENGINE.get_or_init(|| PolicyEngine::start().unwrap())
    }

    /// A data directory holding `module` as `plugin.wasm`, and a policy
    /// naming it with `config` (inline TOML table body).
    fn compiled(module: &[u8], config: &str) -> Result<Vec<u8>, crate::compile::CompileError> {
        let root = std::env::temp_dir().join(format!(
            "moat-plugins-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let data = DataDir::open(&root).unwrap();
        let path = root.join("plugin.wasm");
        std::fs::write(&path, module).unwrap();
        let text = format!(
            "[[policy.plugins]]\nname = \"bedtime\"\nmodule = \"{}\"\nconfig = {{ {config} }}\n",
            path.display()
        );
        let policy = Config::parse(&text, "test").unwrap().policy;
        let compiled = compile_policy(&policy, &data);
        std::fs::remove_dir_all(root).unwrap();
        compiled.map(|mut compiled| compiled.plugins.remove(0).1)
    }

    /// A module speaking the ABI, with `extra` fields; `moat_decide` is `body`.
    fn module(extra: &str, memory_pages: u32, body: &str) -> Vec<u8> {
        module_of(moat_plugin_abi::ABI_VERSION, extra, memory_pages, body)
    }

    /// Like `module`, saying it speaks ABI `abi`.
    fn module_of(abi: i32, extra: &str, memory_pages: u32, body: &str) -> Vec<u8> {
        wat::parse_str(crate::policy::plugin_module_wat(
            abi,
            memory_pages,
            extra,
            body,
        ))
        .unwrap()
    }

    #[test]
    fn check_plugin_says_what_the_primary_would() {
        assert_eq!(check_plugin(SCHEDULE_EXAMPLE, engine()), Ok(()));
        let err = check_plugin(&module("", 1, "unreachable"), engine()).unwrap_err();
        assert!(err.contains("plugin fault"), "{err}");
        let err = check_plugin(&module_of(1, "", 1, "i32.const 0"), engine()).unwrap_err();
        assert!(err.contains("ABI 1"), "{err}");
    }

    fn refusal(module: &[u8]) -> String {
        compiled(module, "")
            .and_then(|module| {
                let refuse = |err: crate::policy::PluginError| PluginRefused {
                    name: "bedtime".parse().unwrap(),
                    reason: err.to_string(),
                };
                WasmPolicy::new(engine(), &module)
                    .map_err(refuse)?
                    .smoke()
                    .map_err(refuse)?;
                Ok(module)
            })
            .map(|_| "accepted".to_owned())
            .unwrap_or_else(|err| err.to_string())
    }

    #[test]
    fn a_plain_module_is_accepted_with_its_configuration() {
        assert_eq!(refusal(&module("", 1, "i32.const 0")), "accepted");
        let with_config = compiled(&module("", 1, "i32.const 0"), "a = \"b\"").unwrap();
        let policy = WasmPolicy::new(engine(), &with_config).unwrap();
        assert_eq!(policy.smoke().map_err(|err| err.to_string()), Ok(()));
    }

    #[test]
    fn each_bad_module_is_refused_naming_the_plugin_and_the_reason() {
        for (module, says) in [
            (
                module(r#"(import "env" "now" (func))"#, 1, "i32.const 0"),
                "imports `env.now`",
            ),
            (
                module("", 1024, "i32.const 0"),
                "declares 67108864 bytes of memory",
            ),
            (module("", 1, "unreachable"), "plugin fault"),
            (module("", 1, "i32.const 7"), "bad verdict code 7"),
            (module("", 1, "(loop (br 0)) i32.const 0"), "plugin fault"),
            (
                b"\0asm\x01\0\0\0garbage".to_vec(),
                "not a valid WASM module",
            ),
        ] {
            let said = refusal(&module);
            assert!(
                said.starts_with("plugin `bedtime` refused: ") && said.contains(says),
                "{says}: {said}"
            );
        }
        let abi = moat_plugin_abi::ABI_VERSION;
        let said = refusal(&module_of(abi + 1, "", 1, "i32.const 0"));
        assert!(
            said.starts_with("plugin `bedtime` refused: ")
                && said.contains(&format!("ABI {}", abi + 1)),
            "{said}"
        );
    }

    /// Unix seconds of 2026-11-27 (a Friday), 00:00 UTC.
    const FRIDAY: u64 = 1_795_737_600;

    #[test]
    fn the_schedule_example_blocks_in_its_window_only() {
        let module = compiled(
            SCHEDULE_EXAMPLE,
            r#"names = ["social.example"], clients = ["192.168.1.0/24"], days = ["fri"], from = "21:00", until = "22:00""#,
        )
        .unwrap();
        let policy = WasmPolicy::new(engine(), &module).unwrap();
        policy.smoke().unwrap();
        assert!(policy.reads_client(), "verdicts are kept per client");
        let ask = |name: &str, client: [u8; 4], unix_time: u64| {
            policy.decide(&Question {
                name: name.as_bytes(),
                qtype: 1,
                client: client.into(),
                unix_time,
            })
        };
        let kid = [192, 168, 1, 40];
        let at_nine = FRIDAY + 21 * 3600 + 60;
        assert_eq!(ask("social.example", kid, at_nine), Decision::Block);
        assert_eq!(ask("m.social.example", kid, at_nine), Decision::Block);
        assert_eq!(
            ask("social.example", kid, at_nine + 3600),
            Decision::NoOpinion,
            "an hour later"
        );
        assert_eq!(
            ask("social.example", [10, 0, 0, 1], at_nine),
            Decision::NoOpinion
        );
        assert_eq!(ask("other.example", kid, at_nine), Decision::NoOpinion);
        let explained = policy
            .explain(&Question {
                name: b"m.social.example",
                qtype: 1,
                client: kid.into(),
                unix_time: at_nine,
            })
            .unwrap()
            .unwrap();
        assert_eq!(explained.pattern, "social.example");
        let holds = |name: &str, unix_time: u64| {
            policy
                .rule(&Question {
                    name: name.as_bytes(),
                    qtype: 1,
                    client: kid.into(),
                    unix_time,
                })
                .holds_until
        };
        assert_eq!(holds("social.example", at_nine), FRIDAY + 22 * 3600);
        assert_eq!(
            holds("social.example", FRIDAY + 20 * 3600),
            FRIDAY + 21 * 3600,
            "the boundary it names"
        );
        assert_eq!(holds("other.example", at_nine), Ruling::FOREVER);
        assert_eq!(policy.faults(), 0);
    }

    #[test]
    fn the_kiosk_example_refuses_or_answers_for_its_clients_only() {
        let config = r#"clients = ["127.0.0.2"], names = ["kiosk.example"]"#;
        let refusing =
            WasmPolicy::new(engine(), &compiled(KIOSK_EXAMPLE, config).unwrap()).unwrap();
        refusing.smoke().unwrap();
        assert_eq!(check_plugin(KIOSK_EXAMPLE, engine()), Ok(()));
        let ask = |policy: &WasmPolicy, name: &str, client: [u8; 4], qtype: u16| {
            policy.decide(&Question {
                name: name.as_bytes(),
                qtype,
                client: client.into(),
                unix_time: FRIDAY,
            })
        };
        let kiosk = [127, 0, 0, 2];
        assert_eq!(ask(&refusing, "other.example", kiosk, 1), Decision::Refuse);
        assert_eq!(
            ask(&refusing, "www.kiosk.example", kiosk, 1),
            Decision::NoOpinion
        );
        assert_eq!(
            ask(&refusing, "other.example", [127, 0, 0, 3], 1),
            Decision::NoOpinion
        );
        let answering = WasmPolicy::new(
            engine(),
            &compiled(
                KIOSK_EXAMPLE,
                &format!(r#"{config}, answer = ["10.0.0.9"]"#),
            )
            .unwrap(),
        )
        .unwrap();
        let Decision::Answer(answer) = ask(&answering, "other.example", kiosk, 1) else {
            panic!("an answer");
        };
        assert_eq!(
            answer.records().collect::<Vec<_>>(),
            [(1, 60, [10, 0, 0, 9].as_slice())]
        );
        let Decision::Answer(nodata) = ask(&answering, "other.example", kiosk, 28) else {
            panic!("an answer");
        };
        assert_eq!(nodata.records().count(), 0, "no AAAA configured");
    }
}
