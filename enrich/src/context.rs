//! The two bounded context caches (users by user id, teams by team id), how context records are
//! applied to them, and how an event is enriched from them.
//!
//! The caches mirror the *latest* record per key of the compacted context topics: an upsert
//! replaces, a tombstone (null value) removes, and an unparsable record also removes the key
//! (after compaction only that bad record would remain, so a freshly started instance would have
//! no entry either; keeping the stale value here would make instances disagree).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use moka::future::Cache;
use moka::notification::RemovalCause;
use schemas::context::{apply_context, parse_team_context, parse_user_context};
use schemas::context::{TeamContext, UserContext};
use schemas::AuditEvent;

/// Which context topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextKind {
    Users,
    Teams,
}

impl ContextKind {
    /// Metric label and log name.
    pub fn name(self) -> &'static str {
        match self {
            ContextKind::Users => "users",
            ContextKind::Teams => "teams",
        }
    }
}

/// What applying one context record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Upserted,
    /// Tombstone: the key was removed.
    Deleted,
    /// Unparsable record (or no usable key): logged, counted, key removed if there was one.
    Invalid,
}

/// Both caches. Cheap to clone (shared).
#[derive(Clone)]
pub struct ContextCaches {
    users: Cache<String, Arc<UserContext>>,
    teams: Cache<String, Arc<TeamContext>>,
    lookups: Lookups,
}

/// `audit_enrich_cache_lookups_total` by cache and result, registered once: two lookups per
/// event, and a `counter!` call builds its labels and searches the registry every time.
#[derive(Clone)]
struct Lookups {
    user_hit: metrics::Counter,
    user_miss: metrics::Counter,
    team_hit: metrics::Counter,
    team_miss: metrics::Counter,
}

impl Lookups {
    fn new() -> Self {
        let c = |kind: ContextKind, result: &'static str| metrics::counter!("audit_enrich_cache_lookups_total", "cache" => kind.name(), "result" => result);
        Lookups {
            user_hit: c(ContextKind::Users, "hit"),
            user_miss: c(ContextKind::Users, "miss"),
            team_hit: c(ContextKind::Teams, "hit"),
            team_miss: c(ContextKind::Teams, "miss"),
        }
    }

    fn count(&self, kind: ContextKind, hit: bool) {
        match (kind, hit) {
            (ContextKind::Users, true) => &self.user_hit,
            (ContextKind::Users, false) => &self.user_miss,
            (ContextKind::Teams, true) => &self.team_hit,
            (ContextKind::Teams, false) => &self.team_miss,
        }
        .increment(1);
    }
}

impl std::fmt::Debug for ContextCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextCaches")
            .field("users", &self.users.entry_count())
            .field("teams", &self.teams.entry_count())
            .finish()
    }
}

/// Fixed per-entry overhead added to the byte weights (hash table slot, Arc, String headers).
const ENTRY_OVERHEAD: usize = 128;

fn user_weight(key: &str, u: &Arc<UserContext>) -> u32 {
    let strings = [Some(&u.user_id), Some(&u.name), Some(&u.email)]
        .into_iter()
        .chain([u.team_id.as_ref(), u.department.as_ref()])
        .flatten()
        .map(|s| s.len())
        .sum::<usize>();
    let roles: usize = u.roles.iter().map(|r| r.len() + 24).sum();
    weight(key.len() + strings + roles)
}

fn team_weight(key: &str, t: &Arc<TeamContext>) -> u32 {
    let strings = [Some(&t.team_id), Some(&t.name)]
        .into_iter()
        .chain([
            t.tenant_id.as_ref(),
            t.project_id.as_ref(),
            t.business_unit.as_ref(),
            t.cost_center.as_ref(),
        ])
        .flatten()
        .map(|s| s.len())
        .sum::<usize>();
    weight(key.len() + strings)
}

fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

/// Counts size evictions and warns once per cache: an eviction means the cache is too small and
/// enrichment may miss records that exist.
fn eviction_listener<V>(kind: ContextKind) -> impl Fn(Arc<String>, V, RemovalCause) + Send + Sync {
    let warned = AtomicBool::new(false);
    move |_key, _value, cause| {
        if cause == RemovalCause::Size {
            metrics::counter!("audit_enrich_context_evicted_total", "cache" => kind.name())
                .increment(1);
            if !warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    cache = kind.name(),
                    "context cache full: evicting entries, enrichment may miss existing records; \
                     raise --{}-cache-max-bytes",
                    kind.name()
                );
            }
        }
    }
}

impl ContextCaches {
    /// Caches bounded by approximate bytes (keys + record strings + overhead).
    pub fn new(users_max_bytes: u64, teams_max_bytes: u64) -> Self {
        ContextCaches {
            users: Cache::builder()
                .name("context.users")
                .max_capacity(users_max_bytes)
                .weigher(|k: &String, v| user_weight(k, v))
                .eviction_listener(eviction_listener(ContextKind::Users))
                .build(),
            teams: Cache::builder()
                .name("context.teams")
                .max_capacity(teams_max_bytes)
                .weigher(|k: &String, v| team_weight(k, v))
                .eviction_listener(eviction_listener(ContextKind::Teams))
                .build(),
            lookups: Lookups::new(),
        }
    }

    /// Applies one record of a context topic (`value == None` is a tombstone).
    pub async fn apply(
        &self,
        kind: ContextKind,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Applied {
        let applied = self.apply_inner(kind, key, value).await;
        let op = match applied {
            Applied::Upserted => "upsert",
            Applied::Deleted => "delete",
            Applied::Invalid => "invalid",
        };
        metrics::counter!("audit_enrich_context_records_total", "cache" => kind.name(), "op" => op)
            .increment(1);
        applied
    }

    async fn apply_inner(
        &self,
        kind: ContextKind,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Applied {
        let Some(key) = key
            .and_then(|k| std::str::from_utf8(k).ok())
            .filter(|k| !k.is_empty())
        else {
            tracing::warn!(cache = kind.name(), key = ?key.map(String::from_utf8_lossy),
                "context record without a usable (non-empty UTF-8) key; skipped");
            return Applied::Invalid;
        };
        let Some(value) = value else {
            self.invalidate(kind, key).await;
            return Applied::Deleted;
        };
        let result = match kind {
            ContextKind::Users => match parse_user_context(key, value) {
                Ok(u) => {
                    self.users.insert(key.to_owned(), Arc::new(u)).await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            ContextKind::Teams => match parse_team_context(key, value) {
                Ok(t) => {
                    self.teams.insert(key.to_owned(), Arc::new(t)).await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => Applied::Upserted,
            Err(e) => {
                tracing::warn!(cache = kind.name(), key, error = %e,
                    "unparsable context record; skipped (and the key's previous entry removed)");
                self.invalidate(kind, key).await;
                Applied::Invalid
            }
        }
    }

    async fn invalidate(&self, kind: ContextKind, key: &str) {
        match kind {
            ContextKind::Users => self.users.invalidate(key).await,
            ContextKind::Teams => self.teams.invalidate(key).await,
        }
    }

    /// The user with this id, if known (counts a hit or a miss).
    pub async fn user(&self, id: &str) -> Option<Arc<UserContext>> {
        let found = self.users.get(id).await;
        self.lookups.count(ContextKind::Users, found.is_some());
        found
    }

    /// The team with this id, if known (counts a hit or a miss).
    pub async fn team(&self, id: &str) -> Option<Arc<TeamContext>> {
        let found = self.teams.get(id).await;
        self.lookups.count(ContextKind::Teams, found.is_some());
        found
    }

    /// Looks up the actor's user and the event's team (the event's team id, else the user's) and
    /// fills their context into `event` (`schemas::context::apply_context`).
    pub async fn enrich(&self, event: &mut AuditEvent) {
        let (user, team) = self
            .lookup(&event.actor.id, event.tenant.team_id.as_deref())
            .await;
        apply_context(event, user.as_deref(), team.as_deref());
    }

    /// The context of an event whose actor is `actor_id` and which names `team_id`: the user,
    /// and the event's team, else the user's.
    pub async fn lookup(
        &self,
        actor_id: &str,
        team_id: Option<&str>,
    ) -> (Option<Arc<UserContext>>, Option<Arc<TeamContext>>) {
        let user = match actor_id {
            "" => None,
            id => self.user(id).await,
        };
        let team_id = non_empty(team_id)
            .or_else(|| user.as_ref().and_then(|u| non_empty(u.team_id.as_deref())));
        let team = match team_id {
            Some(id) => self.team(id).await,
            None => None,
        };
        (user, team)
    }

    /// Approximate number of entries (users, teams).
    pub fn entry_counts(&self) -> (u64, u64) {
        (self.users.entry_count(), self.teams.entry_count())
    }

    /// Publishes the entry counts as gauges.
    pub fn publish_gauges(&self) {
        let (users, teams) = self.entry_counts();
        metrics::gauge!("audit_enrich_cache_entries", "cache" => "users").set(users as f64);
        metrics::gauge!("audit_enrich_cache_entries", "cache" => "teams").set(teams as f64);
    }

    /// Runs the caches' pending maintenance (so counts are exact; tests).
    pub async fn sync(&self) {
        self.users.run_pending_tasks().await;
        self.teams.run_pending_tasks().await;
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}
