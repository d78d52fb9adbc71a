//! Spreading a large image list over several pods (`--shard INDEX/COUNT`).
//!
//! Each repository goes to the shard with the highest hash of (repository, shard) — rendezvous
//! hashing — so tags of one repository stay together (their blobs mount within one pod), shares
//! are balanced in expectation, and adding repositories to the list never moves the others.

use sha2::{Digest as _, Sha256};

use crate::config::SyncItem;

/// A shard: `index` of `count`, 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Parses `INDEX/COUNT` (`0/3`).
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("shard {text:?} must be INDEX/COUNT, e.g. 0/3"))?;
        let index: usize = index
            .trim()
            .parse()
            .map_err(|_| format!("shard index {index:?} is not a number"))?;
        let count: usize = count
            .trim()
            .parse()
            .map_err(|_| format!("shard count {count:?} is not a number"))?;
        Shard::new(index, count)
    }

    pub fn new(index: usize, count: usize) -> Result<Shard, String> {
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: need 0 <= INDEX < COUNT"));
        }
        Ok(Shard { index, count })
    }

    /// From an Indexed Job: `MIRRORSYNC_SHARDS=N` and `JOB_COMPLETION_INDEX=I`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Option<Result<Shard, String>> {
        let count = get("MIRRORSYNC_SHARDS")?;
        let parsed = (|| {
            let count: usize = count
                .trim()
                .parse()
                .map_err(|_| format!("MIRRORSYNC_SHARDS={count:?} is not a number"))?;
            let index = get("JOB_COMPLETION_INDEX")
                .ok_or("MIRRORSYNC_SHARDS is set but JOB_COMPLETION_INDEX is not")?;
            let index: usize = index
                .trim()
                .parse()
                .map_err(|_| format!("JOB_COMPLETION_INDEX={index:?} is not a number"))?;
            Shard::new(index, count)
        })();
        Some(parsed)
    }

    /// The tag-filter entries of this shard (by repository, like the items).
    pub fn select_selections(
        &self,
        selections: &[crate::config::TagSelection],
    ) -> Vec<crate::config::TagSelection> {
        selections
            .iter()
            .filter(|s| owner(&s.source.name(), self.count) == self.index)
            .cloned()
            .collect()
    }

    /// The items of this shard, in their original order.
    pub fn select(&self, items: &[SyncItem]) -> Vec<SyncItem> {
        items
            .iter()
            .filter(|item| owner(&item.source.name(), self.count) == self.index)
            .cloned()
            .collect()
    }
}

/// The shard that owns a repository.
fn owner(repository: &str, count: usize) -> usize {
    (0..count)
        .max_by_key(|shard| {
            let hash = Sha256::digest(format!("{repository}\n{shard}"));
            u64::from_be_bytes(hash[..8].try_into().unwrap_or([0; 8]))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repos(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("docker.io/library/image{i}"))
            .collect()
    }

    #[test]
    fn shards_partition_the_list_and_stay_stable_as_it_grows() {
        let list = repos(1000);
        let before: Vec<usize> = list.iter().map(|r| owner(r, 4)).collect();
        let mut sizes = [0usize; 4];
        for s in &before {
            sizes[*s] += 1;
        }
        assert!(
            sizes.iter().all(|n| (200..=300).contains(n)),
            "balanced: {sizes:?}"
        );
        let grown = repos(1200);
        let after: Vec<usize> = grown.iter().map(|r| owner(r, 4)).collect();
        assert_eq!(
            &after[..1000],
            &before[..],
            "existing repositories never move"
        );
    }

    #[test]
    fn parses_and_validates() {
        assert_eq!(Shard::parse("1/3"), Ok(Shard { index: 1, count: 3 }));
        assert!(Shard::parse("3/3").is_err());
        assert!(Shard::parse("x").is_err());
        let env = |k: &str| match k {
            "MIRRORSYNC_SHARDS" => Some("4".to_string()),
            "JOB_COMPLETION_INDEX" => Some("2".to_string()),
            _ => None,
        };
        assert_eq!(Shard::from_env(env), Some(Ok(Shard { index: 2, count: 4 })));
        assert_eq!(Shard::from_env(|_| None), None);
    }
}
