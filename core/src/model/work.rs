//! A count of the steps taken by loops whose length depends on the input
//! (character scans, edit-distance cells), kept only in unit tests, so a test can
//! assert that the work grows linearly with the input without timing anything.

#[cfg(test)]
thread_local! {
    static WORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Records `n` steps of work (nothing outside unit tests).
#[inline]
pub(crate) fn add(n: usize) {
    #[cfg(test)]
    WORK.with(|w| w.set(w.get() + n as u64));
    #[cfg(not(test))]
    let _ = n;
}

/// The work recorded on this thread since the last call.
#[cfg(test)]
pub(crate) fn take() -> u64 {
    WORK.with(|w| w.replace(0))
}
