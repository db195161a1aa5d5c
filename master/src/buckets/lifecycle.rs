//! Lifecycle rules carried out: one `Expire` command removes what a bucket's rules say is due
//! at the command's time (expired current versions, noncurrent versions, lone delete markers,
//! stale incomplete uploads), at most [`EXPIRE_BATCH`] of them; the leader's planner repeats
//! the command while it reports more.

use cairn_engine::state::{ApplyContext, ApplyError};
use redb::WriteTransaction;

use super::keys::{object_key, split_upload_key};
use super::locks;
use super::multipart::{UPLOADS, drop_upload};
use super::settings::{self, LifecycleRule, Versioning};
use super::versions::{self, OBJECTS, Version, VersionKind, set_history};

/// Versions, markers and uploads one lifecycle command expires at most.
pub const EXPIRE_BATCH: usize = 1000;
/// Keys one lifecycle command examines at most.
const SCAN_MAX: usize = 20_000;
pub(super) const DAY_MS: u64 = 86_400_000;

/// When a current version of `key` (`size` bytes, `tags`) written at `modified_ms` expires
/// under `rules` (ms since the epoch, the same instant the lifecycle pass uses), and the id of
/// the rule that expires it first: what `x-amz-expiration` reports.
pub fn expiration(
    rules: &[LifecycleRule],
    (key, size, tags): (&str, u64, &[(String, String)]),
    modified_ms: u64,
) -> Option<(u64, Option<String>)> {
    rules
        .iter()
        .filter(|r| r.enabled && r.filter.matches(key, size, tags))
        .filter_map(|r| {
            let by_days = r
                .expiration_days
                .map(|d| modified_ms.saturating_add(u64::from(d) * DAY_MS));
            let by_date = r
                .expiration_date_ms
                .map(|at| u64::try_from(at).unwrap_or(0));
            let at = match (by_days, by_date) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b)?,
            };
            Some((at, r.id.clone()))
        })
        .min_by_key(|(at, _)| *at)
}

/// What happens to one key's versions: the ones kept, the ones removed, and whether the
/// current version expired into a new delete marker (versioned buckets).
struct Outcome {
    keep: Vec<Version>,
    gone: Vec<Version>,
    add_marker: bool,
}

/// Whether a rule applies to a version of `key`: by its tags and size for an object, by key
/// alone for a delete marker.
fn applies(r: &LifecycleRule, key: &str, v: &Version) -> bool {
    match &v.kind {
        VersionKind::Object(d) => r.filter.matches(key, d.size, &d.tags),
        VersionKind::DeleteMarker => r.filter.by_key_only() && key.starts_with(&r.filter.prefix),
    }
}

/// Judge one key's versions (newest first) against the rules whose prefix it has.
fn judge(
    key: &str,
    versions: Vec<Version>,
    rules: &[&LifecycleRule],
    versioning: Versioning,
    now: u64,
) -> Outcome {
    let mut keep = Vec::with_capacity(versions.len());
    let mut gone = Vec::new();
    let mut add_marker = false;
    let mut newer_ms: Option<u64> = None;
    for (i, ver) in versions.into_iter().enumerate() {
        let mut rules = rules.iter().filter(|r| applies(r, key, &ver));
        let expire = match newer_ms {
            None => {
                !ver.is_marker()
                    && rules.any(|r| {
                        r.expiration_days.is_some_and(|d| {
                            ver.modified_ms.saturating_add(u64::from(d) * DAY_MS) <= now
                        }) || r
                            .expiration_date_ms
                            .is_some_and(|at| i64::try_from(now).is_ok_and(|n| n >= at))
                    })
            }
            // Noncurrent since the newer version was written; the newest
            // `newer_noncurrent_versions` noncurrent ones stay (`i - 1` are newer than this).
            Some(since) => rules.any(|r| {
                r.noncurrent_days
                    .is_some_and(|d| since.saturating_add(u64::from(d) * DAY_MS) <= now)
                    && r.newer_noncurrent_versions.is_none_or(|n| i > n as usize)
            }),
        };
        newer_ms = Some(ver.modified_ms);
        if expire && i == 0 && versioning == Versioning::Enabled {
            // Expiring a current version in a versioned bucket stacks a marker.
            add_marker = true;
            keep.push(ver);
        } else if expire {
            gone.push(ver);
        } else {
            keep.push(ver);
        }
    }
    // A lone delete marker with nothing beneath it.
    if keep.len() == 1
        && keep[0].is_marker()
        && rules
            .iter()
            .any(|r| r.expired_object_delete_marker && applies(r, key, &keep[0]))
    {
        gone.push(keep.remove(0));
    }
    Outcome {
        keep,
        gone,
        add_marker,
    }
}

/// What one expiry pass did: versions, markers and uploads removed, and whether more is due.
#[derive(Debug)]
pub(super) struct Expired {
    pub removed: u32,
    pub more: bool,
}

pub(super) fn expire(
    txn: &WriteTransaction,
    ctx: &ApplyContext,
    name: &str,
) -> Result<Expired, ApplyError> {
    let bucket = settings::get(txn, name)?;
    let rules: Vec<LifecycleRule> = bucket
        .lifecycle
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.enabled)
        .collect();
    let now = ctx.time_ms;
    let mut removed = 0u32;
    let mut more = false;
    if rules.is_empty() {
        return Ok(Expired { removed, more });
    }
    let start = object_key(name, "");
    // Objects: collect the changes first (the scan holds the table), then write them.
    let mut changes: Vec<(Vec<u8>, Vec<Version>, Vec<Version>)> = Vec::new();
    {
        let t = OBJECTS.open(txn)?;
        for (examined, item) in t.range_from(&start)?.enumerate() {
            let (k, history) = item?;
            if !k.starts_with(&start) {
                break;
            }
            if examined >= SCAN_MAX || removed as usize >= EXPIRE_BATCH {
                more = true;
                break;
            }
            let key = std::str::from_utf8(&k[start.len()..]).unwrap_or("");
            let applicable: Vec<&LifecycleRule> = rules
                .iter()
                .filter(|r| key.starts_with(&r.filter.prefix))
                .collect();
            if applicable.is_empty() {
                continue;
            }
            let before = bucket.object_lock.is_some().then(|| history.0.clone());
            let Outcome {
                mut keep,
                mut gone,
                add_marker,
            } = judge(key, history.0, &applicable, bucket.versioning, now);
            // Object lock: a held version stays where it was, whatever the rules say.
            if let Some(before) = before {
                let mut held = Vec::new();
                for g in &gone {
                    if locks::held(txn, &k, g.id, now)? {
                        held.push(g.id);
                    }
                }
                if !held.is_empty() {
                    gone.retain(|g| !held.contains(&g.id));
                    let kept: Vec<Option<u128>> = keep.iter().map(|v| v.id).collect();
                    keep = before
                        .into_iter()
                        .filter(|v| kept.contains(&v.id) || held.contains(&v.id))
                        .collect();
                }
            }
            if add_marker {
                keep.insert(
                    0,
                    Version {
                        id: Some(ctx.fresh_id()),
                        modified_ms: now,
                        kind: VersionKind::DeleteMarker,
                    },
                );
            }
            if !gone.is_empty() || add_marker {
                removed = removed.saturating_add(gone.len() as u32 + u32::from(add_marker));
                changes.push((k, keep, gone));
            }
        }
    }
    for (k, keep, gone) in changes {
        for g in &gone {
            versions::release(txn, g, now)?;
            versions::forget_extras(txn, &k, g.id)?;
        }
        set_history(txn, &k, keep)?;
    }
    // Incomplete uploads.
    let mut abort: Vec<Vec<u8>> = Vec::new();
    {
        let t = UPLOADS.open(txn)?;
        for item in t.range_from(&start)? {
            let (k, u) = item?;
            if !k.starts_with(&start) {
                break;
            }
            if removed as usize + abort.len() >= EXPIRE_BATCH {
                more = true;
                break;
            }
            let key = split_upload_key(&k)
                .and_then(|(object, _)| object.get(start.len()..))
                .and_then(|key| std::str::from_utf8(key).ok())
                .unwrap_or("");
            let due = rules.iter().any(|r| {
                r.filter.by_key_only()
                    && key.starts_with(&r.filter.prefix)
                    && r.abort_incomplete_days.is_some_and(|d| {
                        u.initiated_ms.saturating_add(u64::from(d) * DAY_MS) <= now
                    })
            });
            if due {
                abort.push(k);
            }
        }
    }
    for k in &abort {
        drop_upload(txn, k, now)?;
    }
    removed = removed.saturating_add(abort.len() as u32);
    Ok(Expired { removed, more })
}

#[cfg(test)]
mod expiration_tests {
    use super::*;

    #[test]
    fn the_earliest_enabled_matching_rule_names_the_expiry() {
        let rule =
            |id: &str, prefix: &str, days: Option<u32>, date: Option<i64>, enabled| LifecycleRule {
                id: Some(id.into()),
                enabled,
                filter: crate::buckets::LifecycleFilter {
                    prefix: prefix.into(),
                    ..Default::default()
                },
                expiration_days: days,
                expiration_date_ms: date,
                ..LifecycleRule::default()
            };
        let rules = [
            rule("logs", "logs/", Some(7), None, true),
            rule("all", "", Some(30), None, true),
            rule("off", "", Some(1), None, false),
            rule("date", "tmp/", None, Some(5 * DAY_MS as i64), true),
        ];
        assert_eq!(
            expiration(&rules, ("logs/a", 1, &[]), 0),
            Some((7 * DAY_MS, Some("logs".into())))
        );
        assert_eq!(
            expiration(&rules, ("photos/a", 1, &[]), DAY_MS),
            Some((31 * DAY_MS, Some("all".into())))
        );
        assert_eq!(
            expiration(&rules, ("tmp/x", 1, &[]), 0),
            Some((5 * DAY_MS, Some("date".into())))
        );
        assert_eq!(expiration(&rules[2..3], ("x", 1, &[]), 0), None);
        assert_eq!(expiration(&[], ("x", 1, &[]), 0), None);
    }
}
