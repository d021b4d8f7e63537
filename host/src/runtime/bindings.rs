//! Host bindings generated from `wit/tool.wit`.

wasmtime::component::bindgen!({
    world: "tool",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

pub use self::backstop::tool::host::Level;
pub use self::backstop::tool::types::{CallContext, Effect as WitEffect};

/// Bindings for tools that also export `reconcile`; the shared interfaces
/// are the ones above, so the Store implements them once.
pub mod reconcilable {
    wasmtime::component::bindgen!({
        world: "reconcilable-tool",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
        with: {
            "backstop:tool/types": super::backstop::tool::types,
            "backstop:tool/host": super::backstop::tool::host,
        },
    });
}
