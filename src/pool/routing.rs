//! Many pools behind one proxy: the [`Routing`] a request reads (which pool
//! its listener, host and path lead to), and [`Pools`], which owns every
//! pool and its health checks and publishes a new routing on reload.
//!
//! A request loads the routing once (one [`ArcSwap`] load), picks its route
//! from the listener's compiled [`RouteTable`] (nothing allocated), then
//! loads that pool's snapshot: a second load, of the pool's own
//! [`ArcSwap`]. Pools change on their own (health) without touching the
//! routing, and a reload publishes the new routing whole, after every pool
//! it names is ready.
//!
//! On reload, pools are matched by name:
//! * an unchanged pool (its `[[pools]]` entry equal) is kept as it is: the
//!   same table, health, counters and idle backend connections;
//! * a changed pool goes through its health controller, as a single-pool
//!   reload always did (backends keep their health by name);
//! * a new pool starts with every backend healthy and its own probes;
//! * a removed pool leaves the routing, so no new request reaches it; the
//!   requests in flight hold the routing they started with, and so the pool,
//!   and finish. Its probes stop once the new routing is published.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use http::HeaderValue;

use crate::balance::route::RouteTable;
use crate::config::{Config, ListenerConfig, PoolConfig, RouteConfig};
use crate::pool::checks::{self, HealthChecks, HealthReporter, ReloadError};
use crate::pool::stats::Stats;
use crate::pool::{Pool, PoolError, Snapshot};

/// A pool as the routing holds it: the pool, and where the request path
/// reports the connect failures it sees.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The pool.
    pub pool: Arc<Pool>,
    /// Its health controller; `None` for a pool without health checks.
    pub health: Option<HealthReporter>,
}

/// One listener's routes, compiled.
#[derive(Debug)]
struct ListenerRoutes {
    name: Arc<str>,
    /// Route targets are places in [`Config::routes`].
    table: RouteTable<usize>,
    /// The pool (place in `pools`) of requests that match no route.
    default: Option<usize>,
}

/// Where a request goes: its pool, and the route that took it there.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'r> {
    /// The pool.
    pub pool: &'r Routed,
    /// The route; `None` when no route matched and the listener's default
    /// pool took the request.
    pub route: Option<&'r RouteConfig>,
    /// The route's pattern (`shop.example.com/api`, `*/`), for logs;
    /// `None` as above.
    pub route_name: Option<&'r Arc<str>>,
}

/// Which pool each request goes to: immutable once built, published whole.
#[derive(Debug)]
pub struct Routing {
    config: Arc<Config>,
    /// In config order.
    pools: Vec<Routed>,
    /// In the order the listeners run.
    listeners: Vec<ListenerRoutes>,
    /// The pool (place in `pools`) of each route (place in the config's
    /// routes).
    route_pool: Vec<usize>,
    /// Each route's pattern, for logs.
    route_names: Vec<Arc<str>>,
}

impl Routing {
    /// The routing of `config` over `pools` (one per `config.pools`, same
    /// order) for the listeners that run, named by `running` (in their
    /// order). A running listener the config no longer names keeps the
    /// routes that are for every listener.
    pub fn build(
        config: Arc<Config>,
        running: &[ListenerConfig],
        pools: Vec<Routed>,
    ) -> Result<Routing, PoolError> {
        let place = |name: &str| pools.iter().position(|p| &**p.pool.name() == name);
        let mut route_pool = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            route_pool.push(place(&route.pool).ok_or_else(|| PoolError::UnknownPool {
                name: route.pool.clone(),
            })?);
        }
        let mut listeners = Vec::with_capacity(running.len());
        for listener in running {
            let table = RouteTable::new(config.route_specs(&listener.name))?;
            let default = config
                .listener(&listener.name)
                .and_then(|l| l.pool.as_deref())
                .and_then(place);
            listeners.push(ListenerRoutes {
                name: Arc::from(listener.name.as_str()),
                table,
                default,
            });
        }
        let route_names = config
            .routes
            .iter()
            .map(|r| Arc::from(r.pattern()))
            .collect();
        Ok(Routing {
            config,
            pools,
            listeners,
            route_pool,
            route_names,
        })
    }

    /// Where a request on listener `listener` (its place among the running
    /// listeners) for `host` (the `Host` header, port and all) and `path`
    /// goes; `None`: nowhere, the client gets `404`. The host is read only
    /// when a route of the listener names one.
    pub fn select(
        &self,
        listener: usize,
        host: Option<&HeaderValue>,
        path: &str,
    ) -> Option<Destination<'_>> {
        let routes = self.listeners.get(listener)?;
        let host = match routes.table.by_host() {
            true => host.and_then(|h| h.to_str().ok()),
            false => None,
        };
        match routes.table.select(host, path) {
            Some(at) => {
                let index = *routes.table.target(at)?;
                Some(Destination {
                    pool: self.pools.get(*self.route_pool.get(index)?)?,
                    route: self.config.routes.get(index),
                    route_name: self.route_names.get(index),
                })
            }
            None => Some(Destination {
                pool: self.pools.get(routes.default?)?,
                route: None,
                route_name: None,
            }),
        }
    }

    /// The config this routing was built from.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The pools, in config order.
    pub fn pools(&self) -> &[Routed] {
        &self.pools
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&Routed> {
        self.pools.iter().find(|p| &**p.pool.name() == name)
    }

    /// The name of the running listener at `listener`.
    pub fn listener_name(&self, listener: usize) -> Option<&Arc<str>> {
        self.listeners.get(listener).map(|l| &l.name)
    }
}

/// Every pool of the proxy, their health checks and the routing over them.
#[derive(Debug)]
pub struct Pools {
    current: ArcSwap<Routing>,
    stats: Arc<Stats>,
    /// The listeners that run: a reload cannot change them.
    running: Vec<ListenerConfig>,
    /// Each pool's health controller and probes, by pool name; dropping
    /// one stops it.
    checks: Mutex<HashMap<Arc<str>, HealthChecks>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Pools {
    /// Every pool of `config`, each backend healthy, with its health checks
    /// running on the current tokio runtime.
    pub fn start(config: Arc<Config>) -> Result<Pools, PoolError> {
        Pools::build(config, true)
    }

    /// Every pool of `config`, each backend healthy, without health checks
    /// (for tools and tests that publish health themselves).
    pub fn unchecked(config: Arc<Config>) -> Result<Pools, PoolError> {
        Pools::build(config, false)
    }

    fn build(config: Arc<Config>, checked: bool) -> Result<Pools, PoolError> {
        let stats = Arc::new(Stats::new());
        let mut checks = HashMap::new();
        let mut pools = Vec::with_capacity(config.pools.len());
        for pool_config in &config.pools {
            let (routed, health) = new_pool(pool_config, &stats, checked)?;
            if let Some(health) = health {
                checks.insert(routed.pool.name().clone(), health);
            }
            pools.push(routed);
        }
        let running = config.listeners.clone();
        let routing = Routing::build(config, &running, pools)?;
        Ok(Pools {
            current: ArcSwap::from_pointee(routing),
            stats,
            running,
            checks: Mutex::new(checks),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The current routing. A request loads it once and keeps it.
    pub fn routing(&self) -> Guard<Arc<Routing>> {
        self.current.load()
    }

    /// The current routing, owned.
    pub fn routing_full(&self) -> Arc<Routing> {
        self.current.load_full()
    }

    /// The counters of every pool, and the proxy's own.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The listeners that run.
    pub fn running(&self) -> &[ListenerConfig] {
        &self.running
    }

    /// Adopts `config`'s pools and routes (see the [module](self) for what
    /// each pool keeps) and publishes the new routing; the listeners stay as
    /// they run. On error the routing stays as it was; pools changed before
    /// the error keep their new settings.
    pub async fn reload(&self, config: Arc<Config>) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.routing_full();
        let mut pools = Vec::with_capacity(config.pools.len());
        let mut started = Vec::new();
        let checked = current.pools.iter().any(|p| p.health.is_some());
        for pool_config in &config.pools {
            let Some(old) = current.pool(&pool_config.name) else {
                let (routed, health) = new_pool(pool_config, &self.stats, checked)?;
                started.extend(health.map(|h| (routed.pool.name().clone(), h)));
                pools.push(routed);
                continue;
            };
            if old.pool.snapshot().file_config() != pool_config {
                match &old.health {
                    Some(health) => health.reload(pool_config.clone()).await?,
                    None => {
                        let previous = old.pool.snapshot();
                        let healthy: Vec<bool> = pool_config
                            .backends
                            .iter()
                            .map(|b| previous.backend(&b.name).is_none_or(|b| b.is_healthy()))
                            .collect();
                        let next = Snapshot::build(pool_config.clone(), &healthy, Some(&previous))?;
                        old.pool.publish(next);
                    }
                }
            }
            pools.push(old.clone());
        }
        let routing = Routing::build(config.clone(), &self.running, pools)?;
        self.current.store(Arc::new(routing));
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        checks.extend(started);
        checks.retain(|name, _| config.pool(name).is_some());
        Ok(())
    }

    /// Stops every health check now.
    pub fn stop(&self) {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        checks.clear();
    }
}

/// A new pool of `config`, every backend healthy, recording into `stats`;
/// with `checked`, its health checks started on the current runtime.
fn new_pool(
    config: &Arc<PoolConfig>,
    stats: &Arc<Stats>,
    checked: bool,
) -> Result<(Routed, Option<HealthChecks>), PoolError> {
    let snapshot = Snapshot::all_healthy(config.clone())?;
    let pool = Arc::new(Pool::with_stats(snapshot, stats.clone()));
    let health = checked.then(|| checks::spawn(pool.clone()));
    let routed = Routed {
        pool,
        health: health.as_ref().map(HealthChecks::reporter),
    };
    Ok((routed, health))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Arc<Config> {
        Arc::new(Config::from_toml(text, Path::new("t.toml")).unwrap())
    }

    const THREE_POOLS: &str = r#"
[[listeners]]
name = "web"
address = "127.0.0.1:0"
[[listeners]]
name = "internal"
address = "127.0.0.1:0"
pool = "static"

[[routes]]
host = "shop.example.com"
path_prefix = "/api"
pool = "api"
[[routes]]
listener = "web"
path_prefix = "/"
pool = "static"
[[routes]]
host = "*.example.com"
pool = "other"

[[pools]]
name = "api"
backends = [{ name = "a", url = "http://127.0.0.1:9001" }]
[[pools]]
name = "static"
algorithm = "round_robin"
backends = [{ name = "s", url = "http://127.0.0.1:9002" }]
[[pools]]
name = "other"
backends = [{ name = "o", url = "http://127.0.0.1:9003" }]
"#;

    fn pool_of(
        routing: &Routing,
        listener: usize,
        host: Option<&str>,
        path: &str,
    ) -> Option<String> {
        let host = host.map(|h| HeaderValue::from_str(h).unwrap());
        routing
            .select(listener, host.as_ref(), path)
            .map(|d| d.pool.pool.name().to_string())
    }

    #[test]
    fn requests_go_to_the_most_specific_route_of_their_listener_or_its_default() {
        let pools = Pools::unchecked(config(THREE_POOLS)).unwrap();
        let routing = pools.routing();
        let web = |host, path| pool_of(&routing, 0, host, path);
        let internal = |host, path| pool_of(&routing, 1, host, path);
        assert_eq!(
            web(Some("shop.example.com"), "/api/x").as_deref(),
            Some("api")
        );
        // No fall-through from the exact host to the catch-all.
        assert_eq!(web(Some("shop.example.com"), "/"), None);
        assert_eq!(web(Some("a.example.com"), "/x").as_deref(), Some("other"));
        assert_eq!(web(Some("elsewhere"), "/x").as_deref(), Some("static"));
        assert_eq!(web(None, "/").as_deref(), Some("static"));
        // The catch-all is for "web" only; "internal" falls to its default.
        assert_eq!(internal(Some("elsewhere"), "/x").as_deref(), Some("static"));
        let shop = HeaderValue::from_static("shop.example.com");
        let unrouted = routing.select(1, Some(&shop), "/").unwrap();
        assert!(unrouted.route.is_none());
        assert_eq!(&**unrouted.pool.pool.name(), "static");
        assert!(routing.select(7, None, "/").is_none());
    }

    #[tokio::test]
    async fn a_reload_keeps_unchanged_pools_as_they_are_and_drops_removed_ones() {
        let pools = Pools::unchecked(config(THREE_POOLS)).unwrap();
        let before = pools.routing_full();
        let api = before.pool("api").unwrap().pool.snapshot();
        let static_pool = before.pool("static").unwrap().pool.clone();
        let changed = THREE_POOLS
            .replace("name = \"s\", url = \"http://127.0.0.1:9002\"", "name = \"s2\", url = \"http://127.0.0.1:9004\"")
            .replace("host = \"*.example.com\"\npool = \"other\"", "host = \"*.example.com\"\npool = \"new\"")
            .replace(
                "[[pools]]\nname = \"other\"\nbackends = [{ name = \"o\", url = \"http://127.0.0.1:9003\" }]",
                "[[pools]]\nname = \"new\"\nbackends = [{ name = \"n\", url = \"http://127.0.0.1:9005\" }]",
            );
        pools.reload(config(&changed)).await.unwrap();
        let after = pools.routing();
        // Unchanged: the very same snapshot.
        assert!(Arc::ptr_eq(
            &api,
            &after.pool("api").unwrap().pool.snapshot()
        ));
        // Changed: the same pool, a new snapshot.
        let kept = after.pool("static").unwrap();
        assert!(Arc::ptr_eq(&static_pool, &kept.pool));
        assert_eq!(&**kept.pool.snapshot().backends()[0].name(), "s2");
        assert!(after.pool("other").is_none());
        assert_eq!(
            pool_of(&after, 0, Some("b.example.com"), "/").as_deref(),
            Some("new")
        );
        // The old routing still reaches the removed pool.
        assert_eq!(
            pool_of(&before, 0, Some("b.example.com"), "/").as_deref(),
            Some("other")
        );
    }
}
