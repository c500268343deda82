//! Agent libraries: loading them from shadow copies, checking their SDK, never unloading them.
//!
//! A library is loaded from a **shadow copy**: the file is copied (`fs::copy`, never a hard link,
//! which the dynamic loader would map to the image it already has) to a unique name, the copy is
//! loaded, and then removed from disk (the mapping stays). So a rebuild of the original, at the
//! same path, is a new file the loader has never seen, and the old image keeps serving the
//! sessions that still use it.
//!
//! Libraries are never unloaded: unloading a Rust cdylib is unsound (thread-locals, statics and
//! code pointers may outlive it). Each distinct content loaded costs its mapped size for the life
//! of the process; [`Libraries::loaded_count`] says how many. Loading the same content again
//! (same path, same bytes) reuses the image already loaded.

use abi_stable::library::{lib_header_from_path, LibHeader, LibraryError, RootModule};
use abi_stable::std_types::{RVec, Tuple2};
use mta_agent_sdk::abi::{AgentFactoryBox, AgentLibraryRef};
use mta_agent_sdk::{AgentClass, EventSet};
use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A loaded agent library.
#[derive(Debug)]
pub struct Library {
    /// The path it was configured with.
    pub path: PathBuf,
    /// Hash of its content.
    pub fingerprint: u64,
    /// The load number of this content in this process (1 is the first library loaded).
    pub generation: u64,
    /// The SDK version the library was built against.
    pub sdk_version: String,
    /// Its factories.
    pub factories: Vec<FactoryInfo>,
}

/// One factory a library exports.
#[derive(Clone, Debug)]
pub struct FactoryInfo {
    /// Its name (`classFactory`).
    pub name: String,
    /// The class of agent it creates.
    pub class: AgentClass,
    /// For delivery agents, the delivery protocol.
    pub delivery_protocol: String,
    /// The events its agent handles.
    pub events: EventSet,
    new_factory: NewFactory,
}

type NewFactory = extern "C" fn(
    RVec<Tuple2<abi_stable::std_types::RString, abi_stable::std_types::RString>>,
) -> abi_stable::std_types::RResult<
    AgentFactoryBox,
    abi_stable::std_types::RString,
>;

impl FactoryInfo {
    /// Builds a factory from parameters; `Err` is the agent's own message.
    pub fn instantiate(&self, parameters: &[(String, String)]) -> Result<AgentFactoryBox, String> {
        let params: RVec<_> = parameters
            .iter()
            .map(|(n, v)| Tuple2(n.as_str().into(), v.as_str().into()))
            .collect();
        (self.new_factory)(params)
            .into_result()
            .map_err(|e| e.into_string())
    }
}

/// Why a library could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No file at the path.
    #[error("library {} does not exist", .0.display())]
    Missing(PathBuf),
    /// Other users could have written it.
    #[error("{0}")]
    Insecure(String),
    /// Copying or reading failed.
    #[error("library {}: {error}", .0.display(), error = .1)]
    Io(PathBuf, std::io::Error),
    /// The dynamic loader refused it.
    #[error("library {} is not loadable: {reason}", .0.display(), reason = .1)]
    NotLoadable(PathBuf, String),
    /// It exports no agent root module.
    #[error("library {} is not an mta agent library: it exports no agent root module (expected an `export_agents!` line)", .0.display())]
    NotAnAgentLibrary(PathBuf),
    /// Built against an SDK this host cannot use.
    #[error("library {} was built against mta-agent-sdk {found}, but this host uses mta-agent-sdk {expected}: rebuild the agent against a compatible SDK (same major version; below 1.0, a minor version at least the host's)", .path.display())]
    IncompatibleSdk {
        /// The library.
        path: PathBuf,
        /// The host's SDK version.
        expected: String,
        /// The library's SDK version.
        found: String,
    },
    /// The SDK's types have a different layout in the library.
    #[error("library {} was built against an incompatible mta-agent-sdk {found} (this host uses {expected}): {detail}", .path.display())]
    IncompatibleLayout {
        /// The library.
        path: PathBuf,
        /// The host's SDK version.
        expected: String,
        /// The library's SDK version.
        found: String,
        /// abi_stable's explanation.
        detail: String,
    },
}

/// The libraries loaded by this process.
#[derive(Debug)]
pub struct Libraries {
    shadow_dir: PathBuf,
    loaded: Mutex<HashMap<(PathBuf, u64), Arc<Library>>>,
    count: AtomicU64,
}

impl Libraries {
    /// A registry for a one-shot command: shadow copies in a private temporary directory, its
    /// name unpredictable, made 0700 when first needed and removed when empty.
    pub fn for_command() -> Self {
        let mut noise = [0u8; 8];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut noise);
        }
        Self::new(std::env::temp_dir().join(format!(
            "mta-shadow-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(noise)
        )))
    }

    /// A registry whose shadow copies go to `shadow_dir`: made 0700 if missing; if it exists it
    /// must be a directory of the MTA's own user that nobody else can enter (it must also allow
    /// executable mappings).
    pub fn new(shadow_dir: PathBuf) -> Self {
        Self {
            shadow_dir,
            loaded: Mutex::new(HashMap::new()),
            count: AtomicU64::new(0),
        }
    }

    /// How many library images this process has loaded (none is ever unloaded).
    pub fn loaded_count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Loads the library at `path`, or returns the already-loaded image of the same content.
    pub fn load(&self, path: &Path) -> Result<Arc<Library>, LoadError> {
        if let Err(why) = crate::agents::strict_modes::check(path, "the library") {
            if path.exists() {
                return Err(LoadError::Insecure(why));
            }
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LoadError::Missing(path.to_path_buf()))
            }
            Err(e) => return Err(LoadError::Io(path.to_path_buf(), e)),
        };
        let fingerprint = fingerprint(&bytes);
        let key = (path.to_path_buf(), fingerprint);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(library) = loaded.get(&key) {
            return Ok(library.clone());
        }
        let generation = self.count.load(Ordering::Relaxed) + 1;
        let shadow = self.shadow_copy(path, &bytes, fingerprint, generation)?;
        let result = load_root_module(path, &shadow);
        let _ = std::fs::remove_file(&shadow);
        let _ = std::fs::remove_dir(&self.shadow_dir); // only when empty (one-shot commands)
        let (module, sdk_version) = result?;
        self.count.store(generation, Ordering::Relaxed);
        let factories = (module.factories())()
            .into_iter()
            .map(|d| FactoryInfo {
                name: d.name.as_str().to_string(),
                class: d.class,
                delivery_protocol: d.delivery_protocol.as_str().to_string(),
                events: d.events,
                new_factory: d.new_factory,
            })
            .collect();
        let library = Arc::new(Library {
            path: path.to_path_buf(),
            fingerprint,
            generation,
            sdk_version,
            factories,
        });
        loaded.insert(key, library.clone());
        Ok(library)
    }

    fn shadow_copy(
        &self,
        path: &Path,
        bytes: &[u8],
        fingerprint: u64,
        generation: u64,
    ) -> Result<PathBuf, LoadError> {
        let io = |e| LoadError::Io(path.to_path_buf(), e);
        private_dir(&self.shadow_dir).map_err(io)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "agent".into());
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_else(|| "so".into());
        let shadow = self.shadow_dir.join(format!(
            "{stem}-{}-{generation}-{fingerprint:016x}.{ext}",
            std::process::id()
        ));
        // Written from the bytes we hashed, so the image loaded is exactly the one fingerprinted
        // even if the original is being rewritten right now; a new file (never one that was
        // there, never through a symlink), readable by this user only.
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&shadow);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&shadow)
            .map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        Ok(shadow)
    }
}

/// Makes `dir` (mode 0700) or checks that it is a real directory of this user that no one else
/// may enter: shadow copies are loaded as code.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let ours = meta.uid() == rustix::process::geteuid().as_raw();
    if meta.is_dir() && ours && meta.mode() & 0o077 != 0 {
        // Ours, made by an older version with looser modes: close it.
        use std::os::unix::fs::PermissionsExt;
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    if !meta.is_dir() || !ours {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the shadow directory {} is not a private directory of this user (a symlink, another owner, or mode {:o}): refused",
                dir.display(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

fn load_root_module(path: &Path, shadow: &Path) -> Result<(AgentLibraryRef, String), LoadError> {
    // The loader's messages name the shadow copy; the operator knows the original.
    let named =
        |text: String| text.replace(&shadow.display().to_string(), &path.display().to_string());
    let header = lib_header_from_path(shadow).map_err(|e| match e {
        LibraryError::GetSymbolError { .. } => LoadError::NotAnAgentLibrary(path.to_path_buf()),
        LibraryError::OpenError { err, .. } => {
            LoadError::NotLoadable(path.to_path_buf(), named(err.to_string()))
        }
        other => LoadError::NotLoadable(path.to_path_buf(), other.to_string().trim().to_string()),
    })?;
    let expected = AgentLibraryRef::VERSION_STRINGS.version.to_string();
    let found = header.version_strings().version.to_string();
    let module = init_root_module(header).map_err(|e| match e {
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::IncompatibleSdk {
            path: path.to_path_buf(),
            expected: expected_version.to_string(),
            found: actual_version.to_string(),
        },
        LibraryError::AbiInstability(detail) => LoadError::IncompatibleLayout {
            path: path.to_path_buf(),
            expected: expected.clone(),
            found: found.clone(),
            detail: detail.to_string().trim().to_string(),
        },
        other => LoadError::NotLoadable(path.to_path_buf(), other.to_string().trim().to_string()),
    })?;
    Ok((module, found))
}

/// abi_stable's own check refuses a library whose prefix types (vtables, root module) have
/// fewer fields than the host's: it assumes the library is at least as new as the host. This
/// boundary has prefix types in both directions: the library provides its root module and agent
/// vtables, the host provides `EventHost` and what it hands out, and the SDK appends methods to
/// the latter. So the layout is accepted when it is compatible either way: the library newer
/// than the host, or older. Fields past a prefix are read through accessors that check, at run
/// time, whether the provider's vtable has them (the SDK's default bodies answer otherwise), so
/// either way nothing reads past what its provider has. Each check starts from fresh globals:
/// only this library against this host, whatever other libraries were seen.
fn init_root_module(header: &LibHeader) -> Result<AgentLibraryRef, LibraryError> {
    use abi_stable::abi_stability::abi_checking::{
        check_layout_compatibility_with_globals as check, CheckingGlobals,
    };
    // The version first, as abi_stable's own loading does: an old SDK is named as such, not
    // as a layout difference.
    let version = |strings| abi_stable::sabi_types::VersionNumber::new(strings);
    let expected = version(AgentLibraryRef::VERSION_STRINGS)?;
    let actual = version(header.version_strings())?;
    if expected.major != actual.major || (expected.major == 0 && expected.minor > actual.minor) {
        return Err(LibraryError::IncompatibleVersionNumber {
            library_name: AgentLibraryRef::NAME,
            expected_version: expected,
            actual_version: actual,
        });
    }
    if let Some(library) = header.layout() {
        let host = <AgentLibraryRef as abi_stable::StableAbi>::LAYOUT;
        if let Err(errors) = check(host, library, &CheckingGlobals::new()) {
            if check(library, host, &CheckingGlobals::new()).is_err() {
                return Err(LibraryError::AbiInstability(
                    abi_stable::std_types::RBoxError::new(errors),
                ));
            }
        }
    }
    // SAFETY: the layout was checked just above (abi_stable's version check still runs).
    unsafe { header.init_root_module_with_unchecked_layout::<AgentLibraryRef>() }
}

/// A content hash: the same bytes reuse the same image.
fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

#[cfg(test)]
mod shadow_tests {
    use super::*;

    #[test]
    fn a_shadow_directory_that_is_a_symlink_or_not_ours_is_refused() {
        let base = std::env::temp_dir().join(format!("mta-shadow-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let fresh = base.join("fresh");
        private_dir(&fresh).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Planted: a symlink to a directory someone else controls.
        let elsewhere = base.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let planted = base.join("planted");
        std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();
        assert!(private_dir(&planted).is_err());
        if rustix::process::geteuid().is_root() {
            let theirs = base.join("theirs");
            std::fs::create_dir_all(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            assert!(private_dir(&theirs).is_err());
        }
        // The copy is a new file, never written through a symlink planted at its name.
        let libraries = Libraries::new(fresh.clone());
        let target = base.join("victim");
        std::fs::write(&target, b"original").unwrap();
        let name = fresh.join(format!("lib-{}-1-{:016x}.so", std::process::id(), 7u64));
        std::os::unix::fs::symlink(&target, &name).unwrap();
        let shadow = libraries
            .shadow_copy(Path::new("/x/lib.so"), b"new", 7, 1)
            .unwrap();
        assert_eq!(shadow, name);
        assert_eq!(std::fs::read(&target).unwrap(), b"original");
        assert!(!std::fs::symlink_metadata(&shadow)
            .unwrap()
            .file_type()
            .is_symlink());
        let _ = std::fs::remove_dir_all(&base);
    }
}
