//! Crash points, for tests that kill tmemd "between any two writes": with the `crash-points`
//! feature, every step of a record write calls the hook set on the writing thread, which
//! typically copies the page file (the state a SIGKILL at that instant would leave).
//! Without the feature this compiles to nothing.

#[cfg(feature = "crash-points")]
mod imp {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Threads with a hook set: a crash point costs one load when there are none (builds
    /// with the feature, e.g. benches beside these tests, must not pay for it).
    static HOOKED: AtomicUsize = AtomicUsize::new(0);

    type Hook = Box<dyn FnMut()>;

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Call `f` at every crash point on this thread (`None` to stop).
    pub fn set_hook(f: Option<Box<dyn FnMut()>>) {
        let on = f.is_some();
        let was = HOOK.with(|h| std::mem::replace(&mut *h.borrow_mut(), f).is_some());
        match (was, on) {
            (false, true) => drop(HOOKED.fetch_add(1, Ordering::Relaxed)),
            (true, false) => drop(HOOKED.fetch_sub(1, Ordering::Relaxed)),
            _ => {}
        }
    }

    /// A point where a kill would leave a distinct state.
    pub fn point() {
        if HOOKED.load(Ordering::Relaxed) == 0 {
            return;
        }
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
