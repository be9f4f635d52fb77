//! Ahead-of-time export (`gradlift compile --emit obj`): a graph compiled into a relocatable
//! object file, plus what a C program needs to call it.
//!
//! [`export`] compiles the graph with [`codegen::compile_object`] (the lowering the JIT
//! uses, into a `cranelift-object` module) and describes the entry point
//! `void SYMBOL(void *const *table)`:
//!
//! - the C header ([`Export::header`]): the symbol, the table in slot order (for each slot
//!   its kind, name, dtype, shape, byte size, whether the step writes it back, where its
//!   initial value is), the arena's size and alignment, and how to link and call the code;
//! - the initial values ([`Export::init`]): one raw file holding the initial value of every
//!   param, state and const slot (little-endian f32 or i32, row-major), each at the byte
//!   offset the header gives. Consts are not embedded in the object: every leaf the code
//!   reads is a table slot, as in the JIT, so the object is the same code.
//!
//! The object imports the runtime kernels (GEMM, convolution, pooling, softmax, `powf`, ...)
//! by their `#[no_mangle]` names ([`codegen::kernels::Kernel::symbol`]); `runtime-c/` builds
//! them into a static library to link with.

use crate::codegen::plan::{Layout, Slot, ALIGN};
use crate::codegen::{self, CompileError, CompileOptions, CompileReport};
use crate::graph::{Graph, NodeId};
use crate::runtime::TensorData;
use crate::shape::DType;

/// What one slot of an exported step's table holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Its index in the table.
    pub index: usize,
    /// `input`, `param`, `state`, `const`, `output` or `arena`.
    pub kind: &'static str,
    /// The input's, param's, state's or output's name; a const's node label (`%N` when
    /// unnamed); `arena` for the arena.
    pub name: String,
    /// The element type (`f32` for the arena, which holds bytes).
    pub dtype: DType,
    /// The shape (`[bytes]` for the arena).
    pub shape: Vec<usize>,
    /// The buffer's size in bytes.
    pub bytes: usize,
    /// Where its initial value starts in the initial-values file (params, state and consts).
    pub init_offset: Option<usize>,
    /// Whether the step writes a new value into it at the end of a call (the target of an
    /// update: a param or state), besides the outputs and the arena, which it always writes.
    pub updated: bool,
}

/// A graph exported ahead of time ([`export`]).
pub struct Export {
    /// The relocatable object file.
    pub object: Vec<u8>,
    /// The C header describing the entry point and its table.
    pub header: String,
    /// The initial values of the param, state and const slots, at their `init_offset`s.
    pub init: Vec<u8>,
    /// The exported entry point's symbol.
    pub symbol: String,
    /// Every slot of the table, in table order.
    pub slots: Vec<SlotInfo>,
    /// Where compile time went.
    pub report: CompileReport,
}

/// The symbol [`export`] uses unless told otherwise: `gradlift_` and the graph's name with
/// every character that cannot be in a C identifier replaced by `_`.
pub fn default_symbol(g: &Graph) -> String {
    let name: String = g
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("gradlift_{name}")
}

/// Compiles `g` into an object file exporting `symbol`, with its C header and initial values.
/// `init_file` is the initial-values file's name as the header mentions it (where the caller
/// writes [`Export::init`]).
pub fn export(
    g: &Graph,
    opts: &CompileOptions,
    symbol: &str,
    init_file: &str,
) -> Result<Export, CompileError> {
    let code = codegen::compile_object(g, opts, symbol)?;
    let (slots, init) = describe_slots(g, &code.layout);
    let header = header(g, &code.symbol, &slots, init.len(), init_file, opts);
    Ok(Export {
        object: code.bytes,
        header,
        init,
        symbol: code.symbol,
        slots,
        report: code.report,
    })
}

/// The slots of `layout` (for graph `g`) and the initial-values file.
fn describe_slots(g: &Graph, layout: &Layout) -> (Vec<SlotInfo>, Vec<u8>) {
    let updated: Vec<NodeId> = g.updates().iter().map(|u| u.target).collect();
    let name = |id: NodeId| {
        g[id]
            .name
            .clone()
            .unwrap_or_else(|| crate::verify::node_label(g, id))
    };
    let mut init = Vec::new();
    let mut slots = Vec::with_capacity(layout.slot_count());
    layout.for_each_slot(|s| {
        let leaf = |kind: &'static str, id: NodeId, with_init: bool, init: &mut Vec<u8>| {
            let ty = &g[id].ty;
            let init_offset = with_init.then(|| {
                let at = init.len();
                match crate::runtime::initial(g, id).data {
                    TensorData::F32(v) => v.iter().for_each(|x| init.extend(x.to_le_bytes())),
                    TensorData::I32(v) => v.iter().for_each(|x| init.extend(x.to_le_bytes())),
                }
                at
            });
            SlotInfo {
                index: 0,
                kind,
                name: name(id),
                dtype: ty.dtype,
                shape: ty.shape.dims().to_vec(),
                bytes: ty.shape.numel() * 4,
                init_offset,
                updated: updated.contains(&id),
            }
        };
        let info = match s {
            Slot::Input(i) => leaf("input", layout.inputs[i], false, &mut init),
            Slot::Param(i) => leaf("param", layout.params[i], true, &mut init),
            Slot::State(i) => leaf("state", layout.states[i], true, &mut init),
            Slot::Const(i) => leaf("const", layout.consts[i], true, &mut init),
            Slot::Output(i) => {
                let o = &g.outputs()[i];
                SlotInfo {
                    name: o.name.clone(),
                    ..leaf("output", o.node, false, &mut init)
                }
            }
            Slot::Arena => SlotInfo {
                index: 0,
                kind: "arena",
                name: "arena".into(),
                dtype: DType::F32,
                shape: vec![layout.arena_bytes],
                bytes: layout.arena_bytes,
                init_offset: None,
                updated: false,
            },
        };
        slots.push(SlotInfo {
            index: slots.len(),
            ..info
        });
    });
    (slots, init)
}

/// `s` as a C string literal.
fn c_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:03o}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// The C header of an exported step.
fn header(
    g: &Graph,
    symbol: &str,
    slots: &[SlotInfo],
    init_bytes: usize,
    init_file: &str,
    opts: &CompileOptions,
) -> String {
    let up = symbol.to_ascii_uppercase();
    let max_rank = slots
        .iter()
        .map(|s| s.shape.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let arena_bytes = slots.last().map_or(0, |s| s.bytes);
    let intro = format!(
        "Generated by `gradlift compile` from graph {graph}: do not edit.\n\
\n\
void {symbol}(void *const *table) runs one call of the graph (a training step when the\n\
graph has updates). table[i] is the base address of slot i: {n} slots, described in table\n\
order by {symbol}_slots below and listed at the end of this comment. Inputs, consts and\n\
params are read; outputs are written; params and state marked `updated` receive their new\n\
values at the end of the call (every node reads the old values first); the arena holds\n\
intermediates ({up}_ARENA_BYTES bytes aligned to {up}_ARENA_ALIGN; its contents need not\n\
be kept between calls). Other buffers need only the alignment of their elements (4 bytes).\n\
Elements are row-major f32 (float) or i32 (int32_t), little-endian.\n\
\n\
Initial values: the file {init_file} ({up}_INIT_BYTES bytes) holds the initial value of\n\
every param, state and const slot (the params' initializers, the state's initial values,\n\
the consts), each at its init_offset (-1: none); load them before the first call. Consts\n\
are not in the object: their slots must point at these values.\n\
\n\
Floating point: the JIT runs the code with flush-to-zero and denormals-are-zero{fpenv};\n\
set both around calls to get the same bits: _mm_setcsr(_mm_getcsr() | 0x8040) (MXCSR bits\n\
15 and 6, <xmmintrin.h>). Without them denormals are kept (IEEE) and results can differ\n\
from the JIT's in the last bits wherever a denormal occurs.\n\
\n\
Linking: the object imports the runtime kernels (gl_gemm, gl_conv2d, gl_softmax, ...) from\n\
gradlift's static library (built from runtime-c/ in the gradlift repository:\n\
libgradlift_runtime.a); link with it and the system libraries it needs (on Linux: -lm\n\
-lpthread -ldl). The machine code is compiled for the CPU of the machine that compiled it\n\
(its SIMD features). Threads a large matrix product may use: {threads}.\n\
\n\
Table:",
        graph = g.name,
        n = slots.len(),
        fpenv = if opts.flush_denormals {
            ""
        } else {
            " (this export was made for a JIT run without them)"
        },
        threads = opts.threads,
    );
    let mut h = String::from("/*");
    for line in intro.lines() {
        h.push_str(if line.is_empty() { "\n *" } else { "\n * " });
        h.push_str(&line.replace("*/", "* /"));
    }
    h.push('\n');
    for s in slots {
        let shape: Vec<String> = s.shape.iter().map(|d| d.to_string()).collect();
        h.push_str(&format!(
            " *   [{}] {} {}: {}[{}], {} bytes{}\n",
            s.index,
            s.kind,
            s.name.replace("*/", "* /"),
            if s.kind == "arena" {
                "u8"
            } else {
                s.dtype.name()
            },
            shape.join(","),
            s.bytes,
            if s.updated { ", updated" } else { "" }
        ));
    }
    h.push_str(" */\n");
    h.push_str(&format!(
        "#ifndef {up}_H\n#define {up}_H\n\n#include <stddef.h>\n#include <stdint.h>\n\n\
#ifdef __cplusplus\nextern \"C\" {{\n#endif\n\n"
    ));
    h.push_str(
        "#ifndef GRADLIFT_SLOT_KINDS\n#define GRADLIFT_SLOT_KINDS\n\
/* What a slot holds. */\n\
enum gradlift_slot_kind {\n  GRADLIFT_INPUT = 0,\n  GRADLIFT_PARAM = 1,\n  GRADLIFT_STATE = 2,\n  \
GRADLIFT_CONST = 3,\n  GRADLIFT_OUTPUT = 4,\n  GRADLIFT_ARENA = 5\n};\n\
/* Element types. */\nenum gradlift_dtype {\n  GRADLIFT_F32 = 0,\n  GRADLIFT_I32 = 1\n};\n\
/* The slot tables are static: no warning in a file that includes a header but not its table. */\n\
#if defined(__GNUC__)\n#define GRADLIFT_UNUSED __attribute__((unused))\n#else\n#define GRADLIFT_UNUSED\n#endif\n\
#endif\n\n",
    );
    h.push_str(&format!(
        "/* Runs the step; table[i] points at slot i's buffer. */\n\
void {symbol}(void *const *table);\n\n\
#define {up}_SLOT_COUNT {n}\n\
#define {up}_ARENA_BYTES {arena_bytes}\n\
#define {up}_ARENA_ALIGN {ALIGN}\n\
#define {up}_INIT_BYTES {init_bytes}\n\
#define {up}_INIT_FILE {init}\n\
#define {up}_MAX_RANK {max_rank}\n\n\
/* One slot of the table. */\n\
typedef struct {{\n\
  int kind;               /* enum gradlift_slot_kind */\n\
  const char *name;\n\
  int dtype;              /* enum gradlift_dtype (F32 for the arena) */\n\
  int rank;\n\
  int64_t shape[{up}_MAX_RANK];\n\
  size_t bytes;\n\
  int64_t init_offset;    /* byte offset in the initial-values file, or -1 */\n\
  int updated;            /* 1: the step writes its new value at the end of a call */\n\
}} {symbol}_slot;\n\n\
/* The table, in slot order. */\n\
static const {symbol}_slot {symbol}_slots[{up}_SLOT_COUNT] GRADLIFT_UNUSED = {{\n",
        n = slots.len(),
        init = c_string(init_file),
    ));
    for s in slots {
        let kind = match s.kind {
            "input" => "GRADLIFT_INPUT",
            "param" => "GRADLIFT_PARAM",
            "state" => "GRADLIFT_STATE",
            "const" => "GRADLIFT_CONST",
            "output" => "GRADLIFT_OUTPUT",
            _ => "GRADLIFT_ARENA",
        };
        let dtype = match s.dtype {
            DType::F32 => "GRADLIFT_F32",
            DType::I32 => "GRADLIFT_I32",
        };
        let mut dims: Vec<String> = s.shape.iter().map(|d| d.to_string()).collect();
        if dims.is_empty() {
            dims.push("0".into());
        }
        h.push_str(&format!(
            "  {{{kind}, {}, {dtype}, {}, {{{}}}, {}, {}, {}}},\n",
            c_string(&s.name),
            s.shape.len(),
            dims.join(", "),
            s.bytes,
            s.init_offset.map_or(-1, |o| o as i64),
            s.updated as u8
        ));
    }
    h.push_str(&format!(
        "}};\n\n#ifdef __cplusplus\n}}\n#endif\n\n#endif /* {up}_H */\n"
    ));
    h
}
