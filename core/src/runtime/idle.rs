//! Releasing the memory of idle bizes' compiled code.
//!
//! A biz's compiled artifact is mapped from the compiled cache for as long as
//! it is installed. The pages its calls touch (and, by the kernel's
//! fault-around, the pages around them) stay in the process's page tables,
//! about a megabyte per biz, whether or not the biz is ever called again. With
//! hundreds of bizes installed that is most of the process's memory
//! (`benches/density.rs`), for code that mostly sits idle.
//!
//! So the epoch thread looks, every few seconds, for images no call has used
//! for [`RuntimeConfig::idle_release`](super::RuntimeConfig::idle_release) and
//! asks the kernel to reclaim their pages (`madvise(MADV_PAGEOUT)`): they leave
//! the page tables and, unless another process maps them, the page cache. The
//! mapping itself stays, so nothing is reloaded, relinked or re-checked: the
//! next call faults the pages it needs back in from the file, a few hundred
//! microseconds to a few milliseconds once, which is why only bizes idle for a
//! while are released. Only file-backed images are released (a component
//! compiled in memory, without a cache directory, has nowhere to be re-read
//! from); the pages are clean copies of the file, so releasing them cannot
//! change what runs.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Milliseconds since the first call of this function in the process.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The compiled code of one loaded biz and when it was last used.
#[derive(Debug)]
pub(crate) struct Image {
    range: Range<usize>,
    file_backed: bool,
    last_use: AtomicU64,
    calls: AtomicUsize,
    released: AtomicBool,
}

impl Image {
    /// Marks the image in use until the guard drops.
    pub(crate) fn begin(&self) -> InUse<'_> {
        self.calls.fetch_add(1, Ordering::AcqRel);
        self.released.store(false, Ordering::Release);
        InUse(self)
    }
}

/// A call using an image.
pub(crate) struct InUse<'a>(&'a Image);

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.last_use.store(now_ms(), Ordering::Release);
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every image loaded by one runtime.
#[derive(Debug, Default)]
pub(crate) struct Images {
    images: Mutex<Vec<Weak<Image>>>,
}

impl Images {
    /// Tracks the image mapped at `range`, used from now.
    pub(crate) fn track(&self, range: Range<*const u8>, file_backed: bool) -> Arc<Image> {
        let image = Arc::new(Image {
            range: range.start.addr()..range.end.addr(),
            file_backed,
            last_use: AtomicU64::new(now_ms()),
            calls: AtomicUsize::new(0),
            released: AtomicBool::new(false),
        });
        let mut images = self.images.lock().unwrap_or_else(|p| p.into_inner());
        // Forget dropped images here too, so a runtime that never sweeps (no idle
        // release configured) does not collect them.
        images.retain(|i| i.strong_count() > 0);
        images.push(Arc::downgrade(&image));
        image
    }

    /// Hands back the pages of every file-backed image unused for `idle`;
    /// returns how many were released.
    pub(crate) fn sweep(&self, idle: Duration) -> usize {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let due: Vec<Arc<Image>> = {
            let mut images = self.images.lock().unwrap_or_else(|p| p.into_inner());
            images.retain(|i| i.strong_count() > 0);
            images
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|i| {
                    i.file_backed
                        && !i.released.load(Ordering::Acquire)
                        && i.calls.load(Ordering::Acquire) == 0
                        && now.saturating_sub(i.last_use.load(Ordering::Acquire)) >= idle_ms
                })
                .collect()
        };
        // Outside the lock: madvise walks page tables. A call that starts on an
        // image meanwhile only faults its pages back in.
        due.iter().filter(|image| release(image)).count()
    }
}

/// Asks the kernel to reclaim the image's pages.
fn release(image: &Image) -> bool {
    #[cfg(target_os = "linux")]
    {
        let page = 4096;
        let start = image.range.start & !(page - 1);
        let len = image.range.end.saturating_sub(start);
        if len == 0 {
            return false;
        }
        // SAFETY: the range is the image's own mapping (kept alive by the `Arc`
        // the caller holds, so not unmapped meanwhile), and MADV_PAGEOUT is
        // advisory: it never changes what the memory reads as, since the pages
        // are clean copies of the file they are re-read from.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "cannot release an idle biz's compiled code"
            );
            return false;
        }
        // A call that began meanwhile keeps it marked in use.
        if image.calls.load(Ordering::Acquire) == 0 {
            image.released.store(true, Ordering::Release);
        }
        true
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = image;
        false
    }
}
