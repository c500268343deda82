//! A library exporting the agent root module under the SDK's name but with the version of an
//! older SDK (0.0.1), as a library built against that SDK would. The host must refuse it and
//! name both versions.

#![allow(non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::RVec;
use abi_stable::{
    declare_root_module_statics, export_root_module, prefix_type::PrefixTypeTrait, StableAbi,
};

#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = OldLibraryRef)))]
#[sabi(missing_field(panic))]
pub struct OldLibrary {
    #[sabi(last_prefix_field)]
    pub factories: extern "C" fn() -> RVec<u8>,
}

impl RootModule for OldLibraryRef {
    declare_root_module_statics! {OldLibraryRef}
    const BASE_NAME: &'static str = "mta_agent_library";
    const NAME: &'static str = "mta_agent_library";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("0.0.1");
}

extern "C" fn factories() -> RVec<u8> {
    RVec::new()
}

#[export_root_module]
pub fn get_library() -> OldLibraryRef {
    OldLibrary { factories }.leak_into_prefix()
}
