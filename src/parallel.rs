//! Work spread over the machine's cores with scoped threads, for the load path: compiling a plan's kernels and
//! preparing a checkpoint's layers are dozens of independent jobs that each run on one thread otherwise.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::Result;

/// `f` applied to every item on up to `threads` threads (at least one), results in the items' order; the first
/// error by position, if any (the remaining items are then skipped). A panic in `f` propagates. With
/// `E = Infallible` it cannot fail.
pub fn map<T: Sync, R: Send, E: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> std::result::Result<R, E> + Sync,
) -> std::result::Result<Vec<R>, E> {
    let threads = threads.clamp(1, items.len().max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<std::result::Result<R, E>>>> =
        items.iter().map(|_| Mutex::new(None)).collect();
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(i) else { return };
        if failed.load(Ordering::Relaxed) {
            return;
        }
        let r = f(item);
        if r.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    };
    if threads == 1 {
        work();
    } else {
        // A panicking worker makes the scope panic once all have been joined.
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(work);
            }
        });
    }
    // Every item ran unless one failed (skipped items leave their slot empty).
    let mut out = Vec::with_capacity(items.len());
    for slot in slots {
        match slot.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(r)) => out.push(r),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(out)
}

/// [`map`] on every core, for its errors only.
pub fn for_each<T: Sync>(items: &[T], f: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    map(items, cores(), f).map(|_| ())
}

/// The machine's cores (1 where unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn keeps_order_and_reports_the_first_error() {
        let items: Vec<u32> = (0..100).collect();
        for threads in [1, 3, 16] {
            let doubled: std::result::Result<_, std::convert::Infallible> =
                map(&items, threads, |&i| Ok(i * 2));
            assert_eq!(
                doubled.unwrap(),
                (0..100).map(|i| i * 2).collect::<Vec<_>>()
            );
        }
        let err = map(&items, 4, |&i| {
            if i == 7 || i == 9 {
                Err(Error::InvalidArgument {
                    name: "item".into(),
                    value: i.to_string(),
                    reason: "bad".into(),
                })
            } else {
                Ok(i)
            }
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains('7') || err.contains('9'), "{err}");
        let empty: std::result::Result<Vec<u32>, std::convert::Infallible> =
            map(&[], 4, |&i| Ok(i));
        assert_eq!(empty, Ok(vec![]));
    }
}
