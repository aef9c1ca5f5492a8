//! Adds a plugin's data to its module: one active data segment at
//! `DATA_BASE`, and a memory large enough to hold it. Every other section
//! is copied unchanged.

use moat_plugin_abi::DATA_BASE;
use wasm_encoder::{
    ConstExpr, DataCountSection, DataSection, MemorySection, MemoryType, RawSection,
};
use wasmparser::{Parser, Payload};

const PAGE: u64 = 65_536;

/// Why a module could not take its data.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The template is not a valid module.
    #[error("plugin template unreadable: {0}")]
    Parse(#[from] wasmparser::BinaryReaderError),
    /// The template does not have exactly one memory.
    #[error("plugin template must define exactly one memory")]
    Memory,
    /// The data would not fit in 32-bit memory.
    #[error("plugin data of {0} bytes is too large")]
    TooLarge(usize),
}

/// Returns `template` with `data` placed at `DATA_BASE`.
pub(crate) fn with_data_segment(template: &[u8], data: &[u8]) -> Result<Vec<u8>, LinkError> {
    let data_end = u64::from(DATA_BASE) + data.len() as u64;
    if data_end > u64::from(u32::MAX) {
        return Err(LinkError::TooLarge(data.len()));
    }
    let needed_pages = data_end.div_ceil(PAGE);
    let mut module = wasm_encoder::Module::new();
    let mut saw_memory = false;
    let mut saw_data = false;
    for payload in Parser::new(0).parse_all(template) {
        let payload = payload?;
        match &payload {
            Payload::MemorySection(reader) => {
                let memories = reader.clone().into_iter().collect::<Result<Vec<_>, _>>()?;
                let [memory] = memories.as_slice() else {
                    return Err(LinkError::Memory);
                };
                let mut section = MemorySection::new();
                section.memory(MemoryType {
                    minimum: memory.initial.max(needed_pages),
                    maximum: memory.maximum.map(|maximum| maximum.max(needed_pages)),
                    memory64: false,
                    shared: false,
                    page_size_log2: None,
                });
                module.section(&section);
                saw_memory = true;
            }
            Payload::DataCountSection { count, .. } => {
                module.section(&DataCountSection { count: count + 1 });
            }
            Payload::DataSection(reader) => {
                let mut raw = reader.clone().into_iter().collect::<Result<Vec<_>, _>>()?;
                let mut section = DataSection::new();
                for segment in raw.drain(..) {
                    copy_segment(&mut section, segment)?;
                }
                section.active(
                    0,
                    &ConstExpr::i32_const(DATA_BASE as i32),
                    data.iter().copied(),
                );
                module.section(&section);
                saw_data = true;
            }
            Payload::CustomSection(_) | Payload::Version { .. } | Payload::End(_) => {}
            other => {
                if let Some((id, range)) = other.as_section() {
                    module.section(&RawSection {
                        id,
                        data: &template[range],
                    });
                }
            }
        }
    }
    if !saw_memory {
        return Err(LinkError::Memory);
    }
    if !saw_data {
        // The template had no data: the new section goes last, where it belongs.
        let mut section = DataSection::new();
        section.active(
            0,
            &ConstExpr::i32_const(DATA_BASE as i32),
            data.iter().copied(),
        );
        module.section(&section);
    }
    Ok(module.finish())
}

fn copy_segment(section: &mut DataSection, segment: wasmparser::Data<'_>) -> Result<(), LinkError> {
    match segment.kind {
        wasmparser::DataKind::Passive => {
            section.passive(segment.data.iter().copied());
        }
        wasmparser::DataKind::Active {
            memory_index,
            offset_expr,
        } => {
            let bytes = offset_expr_bytes(&offset_expr)?;
            section.active(
                memory_index,
                &ConstExpr::raw(bytes),
                segment.data.iter().copied(),
            );
        }
    }
    Ok(())
}

/// The raw bytes of a constant expression, without its `end`.
fn offset_expr_bytes(expr: &wasmparser::ConstExpr<'_>) -> Result<Vec<u8>, LinkError> {
    let mut reader = expr.get_binary_reader();
    let bytes = reader.read_bytes(reader.bytes_remaining())?;
    Ok(bytes[..bytes.len().saturating_sub(1)].to_vec())
}
