//! Work on many independent files (reading, hashing, compressing) spread over the cores.

/// Maps `f` over `items` on one thread per core (at most 8), in order. For work on many independent files
/// (reading, hashing, compressing), which would otherwise leave all cores but one idle.
pub fn map_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    map_parallel_with(items, || (), |_, item| f(item))
}

/// [`map_parallel`] with a state each thread makes once (a compression context, a buffer).
pub fn map_parallel_with<T: Sync, S, R: Send>(
    items: &[T],
    state: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(items.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut own = state();
                    let mut results = Vec::new();
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(index) else {
                            return results;
                        };
                        results.push((index, f(&mut own, item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    done.sort_unstable_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, result)| result).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parallel_map_keeps_the_order_and_each_thread_its_state() {
        let items: Vec<u64> = (0..1000).collect();
        let squares = map_parallel(&items, |n| n * n);
        assert_eq!(squares, items.iter().map(|n| n * n).collect::<Vec<_>>());
        // Each thread counts the items it saw; together they saw every item once.
        let seen = map_parallel_with(
            &items,
            || 0u64,
            |count, n| {
                *count += 1;
                (*n, *count)
            },
        );
        assert_eq!(seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(), items);
        assert!(seen.iter().all(|(_, count)| *count >= 1));
        assert!(map_parallel(&Vec::<u8>::new(), |n| *n).is_empty());
    }
}
