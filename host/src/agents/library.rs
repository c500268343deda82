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
    /// Built against an SDK this host cannot use (see `mta_agent_sdk::version`).
    #[error("library {} was built against mta-agent-sdk {found}, but this host uses mta-agent-sdk {expected}: rebuild the agent against mta-agent-sdk {wanted} (the SDK's version rule: {rule})", .path.display(), wanted = minor_of(expected), rule = mta_agent_sdk::version::RULE)]
    IncompatibleSdk {
        /// The library.
        path: PathBuf,
        /// The host's SDK version.
        expected: String,
        /// The library's SDK version.
        found: String,
    },
    /// The SDK's types have a different layout in the library although the versions are
    /// compatible: an SDK changed without the version bump the rule asks for.
    ///
    /// Displayed as one line naming the first type that differs; abi_stable's report, thousands
    /// of lines long, is in `detail`, logged at debug level and printed by `--verbose`.
    #[error("library {} was built against mta-agent-sdk {found} and this host uses mta-agent-sdk {expected}, but their layouts differ: {difference}; rebuild the agent against this host's SDK (--verbose or MTA_LOG=debug shows abi_stable's full report)", .path.display())]
    IncompatibleLayout {
        /// The library.
        path: PathBuf,
        /// The host's SDK version.
        expected: String,
        /// The library's SDK version.
        found: String,
        /// The first type that differs and how.
        difference: String,
        /// abi_stable's full report.
        detail: String,
    },
}

impl LoadError {
    /// abi_stable's full report behind a one-line layout error, for `--verbose` and the debug log.
    pub fn full_report(&self) -> Option<&str> {
        match self {
            LoadError::IncompatibleLayout { detail, .. } => Some(detail),
            _ => None,
        }
    }
}

/// `0.1` for `0.1.3` (below 1.0, what a compatible SDK must share), `1` for `1.2.0`.
fn minor_of(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}"),
        (Some(major), Some(minor)) => format!("{major}.{minor}"),
        _ => version.to_string(),
    }
}

/// Whether load errors also print abi_stable's full report on standard error (`--verbose`).
static FULL_REPORTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes every refused library print abi_stable's full report on standard error, for the
/// one-shot commands' `--verbose`; a running server logs it at debug level instead.
pub fn print_full_reports() {
    FULL_REPORTS.store(true, Ordering::Relaxed);
}

/// The libraries loaded by this process.
#[derive(Debug)]
pub struct Libraries {
    shadow_dir: PathBuf,
    loaded: Mutex<HashMap<(PathBuf, u64), Arc<Library>>>,
    /// Each path's file as last read, and the fingerprint of what was read: a reload of the
    /// agents file alone then costs a `stat` per library, not reading and hashing each one (a
    /// release build of a sample agent is 7 MB).
    stamps: Mutex<HashMap<PathBuf, (Stamp, u64)>>,
    count: AtomicU64,
}

/// What tells that a file was not written since it was read, without reading it: device,
/// inode, size, and modification and change times to the nanosecond (a rebuild or a rename is a
/// new inode; a write in place moves both times, and the change time cannot be set back).
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
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
            stamps: Mutex::new(HashMap::new()),
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
        // Taken before the read: a write during the read leaves a stamp that no longer matches.
        let before = std::fs::metadata(path).ok().map(|m| stamp(&m));
        if let Some(before) = before {
            let known = self
                .stamps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(path)
                .filter(|(s, _)| *s == before)
                .map(|(_, fingerprint)| *fingerprint);
            if let Some(library) = known.and_then(|fingerprint| {
                self.loaded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(path.to_path_buf(), fingerprint))
                    .cloned()
            }) {
                return Ok(library);
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
        let remember = |fingerprint| {
            if let Some(before) = before {
                self.stamps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(path.to_path_buf(), (before, fingerprint));
            }
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(library) = loaded.get(&key) {
            remember(fingerprint);
            return Ok(library.clone());
        }
        let generation = self.count.load(Ordering::Relaxed) + 1;
        let shadow = self.shadow_copy(path, &bytes, fingerprint, generation)?;
        let result = load_root_module(path, &shadow);
        let _ = std::fs::remove_file(&shadow);
        let _ = std::fs::remove_dir(&self.shadow_dir); // only when empty (one-shot commands)
        if let Err(error) = &result {
            if let (Some(report), true) =
                (error.full_report(), FULL_REPORTS.load(Ordering::Relaxed))
            {
                eprintln!("abi_stable's report for {}:\n{report}", path.display());
            }
        }
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
        remember(fingerprint);
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
    // The SDK's rule first, so that a version it refuses is reported as a version and not as
    // the layout difference abi_stable would find next.
    if !mta_agent_sdk::version::compatible(&expected, &found) {
        return Err(LoadError::IncompatibleSdk {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
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
        LibraryError::AbiInstability(detail) => {
            let error = LoadError::IncompatibleLayout {
                path: path.to_path_buf(),
                expected: expected.clone(),
                found: found.clone(),
                difference: header
                    .layout()
                    .and_then(first_difference)
                    .unwrap_or_else(|| "abi_stable reports a difference".into()),
                detail: detail.to_string().trim().to_string(),
            };
            tracing::debug!(
                message = "Agent library layout differs from the host's SDK.",
                library = %path.display(),
                report = %error.full_report().unwrap_or_default()
            );
            error
        }
        other => LoadError::NotLoadable(path.to_path_buf(), other.to_string().trim().to_string()),
    })?;
    Ok((module, found))
}

/// The first type whose layout differs between the host's SDK and the library's, and how:
/// `PropertyScope: incompatible repr attributes (host: ..., library: ...)`.
///
/// abi_stable's loader hands back its report already formatted (thousands of lines), so the
/// check is run again here, in the host, for its structured result; it only runs after a load
/// was refused.
fn first_difference(library: &'static abi_stable::type_layout::TypeLayout) -> Option<String> {
    use abi_stable::abi_stability::abi_checking::{check_layout_compatibility, AbiInstability};
    use abi_stable::type_layout::TLFieldOrFunction;
    let errors =
        check_layout_compatibility(<AgentLibraryRef as abi_stable::StableAbi>::LAYOUT, library)
            .err()?;
    let first = errors.errors.iter().find(|e| !e.errs.is_empty())?;
    // The innermost entry is the type that differs; the path to it says where the SDK uses it:
    // the last function on the way, and the trait object (`EventHost_TO`) that function is in.
    let mut owner = None;
    let mut function = None;
    for step in first.stack_trace.iter().map(|ef| &ef.expected) {
        match step {
            TLFieldOrFunction::Field(field) => {
                if let Some(name) = field.layout().name().strip_suffix("_TO") {
                    owner = Some(name);
                }
            }
            TLFieldOrFunction::Function(f) => function = Some(f.name.as_str()),
        }
    }
    let ty = match first.stack_trace.last().map(|ef| &ef.expected) {
        Some(TLFieldOrFunction::Field(field)) => field.layout().full_type().to_string(),
        Some(TLFieldOrFunction::Function(f)) => format!("fn {}", f.name.as_str()),
        None => errors.interface.full_type().to_string(),
    };
    let place = match (owner, function) {
        (Some(owner), Some(function)) => format!("type {} (in {owner}::{function})", ty.trim()),
        (None, Some(function)) => format!("type {} (in {function})", ty.trim()),
        _ => format!("type {}", ty.trim()),
    };
    let short =
        |what: &str,
         both: Option<abi_stable::abi_stability::abi_checking::ExpectedFound<String>>| {
            match both {
                Some(b)
                    if !b.expected.contains('\n')
                        && !b.found.contains('\n')
                        && b.expected.len() + b.found.len() < 120 =>
                {
                    format!(
                        "{what} (host: {}, library: {})",
                        b.expected.trim(),
                        b.found.trim()
                    )
                }
                _ => what.to_string(),
            }
        };
    let how = match &first.errs[0] {
        AbiInstability::Name(v) => short("a different type", v.display_str()),
        AbiInstability::Package(v) => short("from a different package", v.display_str()),
        AbiInstability::PackageVersion(v) => {
            short("from an incompatible package version", v.display_str())
        }
        AbiInstability::Size(v) => short("a different size", v.display_str()),
        AbiInstability::Alignment(v) => short("a different alignment", v.display_str()),
        AbiInstability::ReprAttr(v) => short(
            "a different repr attribute",
            Some(v.as_ref().map(|x| format!("{x:?}"))),
        ),
        AbiInstability::FieldCountMismatch(v) => {
            short("a different number of fields", v.display_str())
        }
        AbiInstability::UnexpectedField(v) => short(
            "a different field",
            Some(v.as_ref().map(|f| f.name().to_string())),
        ),
        AbiInstability::TooManyVariants(v) => {
            short("a different number of variants", v.display_str())
        }
        AbiInstability::UnexpectedVariant(v) => short(
            "a different variant",
            Some(v.as_ref().map(|x| format!("{x:?}"))),
        ),
        AbiInstability::EnumDiscriminant(v) => short(
            "a different discriminant",
            Some(v.as_ref().map(|x| format!("{x:?}"))),
        ),
        AbiInstability::MismatchedPrimitive(v) => short(
            "a different primitive",
            Some(v.as_ref().map(|x| format!("{x:?}"))),
        ),
        AbiInstability::MismatchedPrefixSize(v) => short("a different prefix", v.display_str()),
        AbiInstability::TLDataDiscriminant(v) => short(
            "a different kind of type",
            Some(v.as_ref().map(|x| format!("{x:?}"))),
        ),
        other => format!("{other:?}")
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or("differs")
            .to_string(),
    };
    Some(format!("{place} has {how}"))
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
