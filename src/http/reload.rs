//! Values built from files that change while serving (TLS certificate, client credentials): one
//! shared current value that a watcher thread rebuilds, and a per-executor view that sees a
//! rebuild with one atomic load. A rebuild that fails keeps the previous value.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::file_version::{file_version, FileVersion};

type Build<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

pub struct Reloadable<T> {
    /// What the value is, for log lines (`TLS certificate`).
    what: &'static str,
    files: Vec<PathBuf>,
    build: Build<T>,
    stamps: Mutex<Vec<FileVersion>>,
    current: Mutex<Arc<T>>,
    generation: AtomicU64,
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    /// Builds the first value.
    ///
    /// # Errors
    /// `build` failed (its message).
    pub fn load(what: &'static str, files: Vec<PathBuf>, build: impl Fn() -> Result<T, String> + Send + Sync + 'static) -> Result<Arc<Self>, String> {
        let stamps = files.iter().map(|f| file_version(f)).collect();
        let value = build()?;
        Ok(Arc::new(Reloadable {
            what,
            files,
            build: Box::new(build),
            stamps: Mutex::new(stamps),
            current: Mutex::new(Arc::new(value)),
            generation: AtomicU64::new(0),
        }))
    }

    /// Rebuilds the value if any of its files changed since the last look: `None` if none
    /// did, else whether the new files are in force. Blocking (reads files): call from a
    /// watcher thread, never from an executor.
    pub fn reload_if_changed(&self) -> Option<bool> {
        let now: Vec<FileVersion> = self.files.iter().map(|f| file_version(f)).collect();
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
            if *stamps == now {
                return None;
            }
            *stamps = now;
        }
        match (self.build)() {
            Ok(value) => {
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
                self.generation.fetch_add(1, Ordering::Release);
                tracing::info!(what = self.what, "reloaded");
                Some(true)
            }
            Err(error) => {
                tracing::error!(what = self.what, %error, "files changed but cannot be used; keeping the previous ones");
                Some(false)
            }
        }
    }

    fn current(&self) -> Arc<T> {
        Arc::clone(&self.current.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// One executor's view of a `Reloadable`.
pub struct LocalView<T> {
    source: Arc<Reloadable<T>>,
    seen: Cell<u64>,
    value: RefCell<Arc<T>>,
}

impl<T: Send + Sync + 'static> LocalView<T> {
    pub fn new(source: Arc<Reloadable<T>>) -> LocalView<T> {
        let seen = source.generation.load(Ordering::Acquire);
        let value = source.current();
        LocalView { source, seen: Cell::new(seen), value: RefCell::new(value) }
    }

    /// Which version of the value `with` shows: it changes on every successful reload.
    pub fn generation(&self) -> u64 {
        self.refresh();
        self.seen.get()
    }

    fn refresh(&self) {
        let generation = self.source.generation.load(Ordering::Acquire);
        if generation != self.seen.get() {
            *self.value.borrow_mut() = self.source.current();
            self.seen.set(generation);
        }
    }

    /// The current value. Cloning the `Arc` is left to callers that need to keep it, so a
    /// look does not write a reference count shared with other cores.
    pub fn with<R>(&self, read: impl FnOnce(&Arc<T>) -> R) -> R {
        self.refresh();
        read(&self.value.borrow())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_rebuilt_and_a_bad_one_keeps_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "1").unwrap();
        let read = path.clone();
        let source = Reloadable::load("number", vec![path.clone()], move || {
            std::fs::read_to_string(&read).map_err(|e| e.to_string())?.trim().parse::<u32>().map_err(|e| e.to_string())
        })
        .unwrap();
        let view = LocalView::new(Arc::clone(&source));
        assert_eq!(view.with(|v| **v), 1);
        assert_eq!(source.reload_if_changed(), None, "nothing changed");
        std::fs::write(&path, "22").unwrap();
        assert_eq!(source.reload_if_changed(), Some(true));
        assert_eq!(view.with(|v| **v), 22);
        std::fs::write(&path, "not a number").unwrap();
        assert_eq!(source.reload_if_changed(), Some(false));
        assert_eq!(view.with(|v| **v), 22, "a bad file keeps the previous value");
    }
}
