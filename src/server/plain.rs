//! The stand-in for `tls.rs` in a build without TLS: the same items, plain. (Binding
//! refuses TLS settings in such a build, so every listener is plain.)

use std::sync::Arc;

use super::{Builder, Listeners};
use crate::bind::{Binding, Bindings, Tls};
use crate::core::Core;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::runtime::Runtime;

impl Builder {
    /// Each bound listener's endpoint.
    pub(super) fn endpoints(
        &self,
        _: &Arc<dyn Runtime>,
        bindings: &mut Bindings,
    ) -> Result<(Listeners, Tasks), Error> {
        let mut listeners = Vec::with_capacity(bindings.listeners.len());
        for Binding {
            name,
            listener,
            tls,
        } in std::mem::take(&mut bindings.listeners)
        {
            let addr = crate::bind::local_addr(&*listener)?;
            let watched = match tls {
                Tls::Load(tls) => Some(*tls),
                Tls::Plain => None,
            };
            let endpoint = Endpoint::new(name.into(), addr, None).watching(watched);
            listeners.push((Arc::new(endpoint), listener));
        }
        Ok((listeners, Tasks))
    }
}

/// No TLS settings beside the config's.
#[derive(Default)]
pub(super) struct Choice {}

impl Choice {
    pub(super) fn apply(self, core: Core, _: &Tasks) -> Core {
        core
    }
}

/// Nothing to run beside the accept loops.
pub(super) struct Tasks;

impl Tasks {
    pub(super) fn start(self, _: &Arc<Core>) {}
}
