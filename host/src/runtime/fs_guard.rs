//! Refuses to open files that can block the opener forever.
//!
//! wasmtime-wasi opens files on a blocking thread. Opening a named pipe
//! in a granted directory blocks that thread until someone opens the other
//! end: the call was reported at its timeout, but the thread stayed, one
//! per such call, and `backstop call` could not exit. Tools get regular
//! files and directories only: `open-at` is shadowed by a version that
//! looks at what the path names first (`stat-at`, which does not block)
//! and answers `access` for anything but a regular file, a directory or a
//! symbolic link (a pipe, a socket, a device).
//!
//! Only a process outside the sandbox could swap a regular file for a
//! pipe between the look and the open (WASI has no call that makes one);
//! the exit path (`Runtime`'s guest pool is shut down without waiting)
//! still holds then.

use super::state::HostState;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, Host, HostDescriptor, OpenFlags,
    PathFlags,
};

/// The `wasi:filesystem` version wasmtime-wasi's linker defines; a
/// component importing any 0.2.x resolves to it.
const TYPES: &str = "wasi:filesystem/types@0.2.12";

pub fn shadow_open_at(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store,
         (fd, path_flags, path, oflags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let mut view = store.data_mut().filesystem();
                let rep = fd.rep();
                let looked = HostDescriptor::stat_at(
                    &mut view,
                    Resource::new_borrow(rep),
                    path_flags,
                    path.clone(),
                )
                .await;
                // wasmtime-wasi reports a pipe or a socket as `unknown`
                // on Unix: only what is known to be safe passes.
                if let Ok(stat) = &looked {
                    if !matches!(
                        stat.type_,
                        DescriptorType::RegularFile
                            | DescriptorType::Directory
                            | DescriptorType::SymbolicLink
                    ) {
                        return Ok((Err(ErrorCode::Access),));
                    }
                }
                let opened = HostDescriptor::open_at(
                    &mut view,
                    Resource::new_borrow(rep),
                    path_flags,
                    path,
                    oflags,
                    flags,
                )
                .await;
                match opened {
                    Ok(d) => Ok((Ok(d),)),
                    Err(e) => Ok((Err(Host::convert_error_code(&mut view, e)?),)),
                }
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
