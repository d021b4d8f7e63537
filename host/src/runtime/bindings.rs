//! Host bindings generated from `wit/tool.wit`.

wasmtime::component::bindgen!({
    world: "tool",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

pub use self::backstop::tool::host::Level;
pub use self::backstop::tool::types::{CallContext, Effect as WitEffect};
