//! Crash points, for tests that kill tmemd "between any two writes": with the `crash-points`
//! feature, every step of a record write calls the hook set on the writing thread, which
//! typically copies the page file (the state a SIGKILL at that instant would leave).
//! Without the feature this compiles to nothing.

#[cfg(feature = "crash-points")]
mod imp {
    use std::cell::RefCell;

    type Hook = Box<dyn FnMut()>;

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Call `f` at every crash point on this thread (`None` to stop).
    pub fn set_hook(f: Option<Box<dyn FnMut()>>) {
        HOOK.with(|h| *h.borrow_mut() = f);
    }

    /// A point where a kill would leave a distinct state.
    pub fn point() {
        // Taken out while it runs, so a hook that writes records does not recurse.
        let hook = HOOK.with(|h| h.borrow_mut().take());
        if let Some(mut f) = hook {
            f();
            HOOK.with(|h| {
                let mut h = h.borrow_mut();
                if h.is_none() {
                    *h = Some(f);
                }
            });
        }
    }
}

#[cfg(feature = "crash-points")]
pub use imp::{point, set_hook};

/// A point where a kill would leave a distinct state (no-op without `crash-points`).
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point() {}
