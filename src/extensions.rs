//! Typed request-scoped values attached to a connection.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;

/// A map from type to one value of that type, for state that lives as long as one
/// connection (a session, an authenticated user, a parser's settings).
///
/// Shared server-wide state does not belong here: capture it in the handler closure.
///
/// ```
/// let mut ext = berth::Extensions::default();
/// #[derive(Debug, PartialEq)]
/// struct User(String);
/// ext.insert(User("ada".into()));
/// assert_eq!(ext.get::<User>(), Some(&User("ada".into())));
/// assert_eq!(ext.remove::<User>(), Some(User("ada".into())));
/// assert!(ext.get::<User>().is_none());
/// ```
#[derive(Default)]
pub struct Extensions {
    // Boxed and optional: most connections never use extensions, and an empty `Option<Box>`
    // is one word in every `Conn` where a `HashMap` is six.
    #[allow(clippy::box_collection)]
    map: Option<Box<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>,
}

impl Extensions {
    /// Stores `value`, returning the previous value of that type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) -> Option<T> {
        self.map
            .get_or_insert_with(Default::default)
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|old| old.downcast().ok().map(|b| *b))
    }

    /// The value of type `T`, if any.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.map.as_ref()?.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// The value of type `T`, mutably, if any.
    pub fn get_mut<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.map
            .as_mut()?
            .get_mut(&TypeId::of::<T>())?
            .downcast_mut()
    }

    /// Takes the value of type `T` out, if any.
    pub fn remove<T: Any + Send + Sync>(&mut self) -> Option<T> {
        self.map
            .as_mut()?
            .remove(&TypeId::of::<T>())
            .and_then(|b| b.downcast().ok().map(|b| *b))
    }

    /// Number of values stored.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    /// Whether no value is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.len())
            .finish()
    }
}
