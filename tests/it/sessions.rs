//! Pinned sticky cookies (`sticky_cookie.pin = true`): a session stays on
//! the backend that served it, moves only when that backend is not
//! routable, and then stays where it moved.

use crate::common::*;

const PINNED: &str = "[admin]\naddress = \"127.0.0.1:0\"\n\
                      [balancer]\nsticky_cookie = { name = \"sid\", pin = true }\n\
                      [health_check]\ninterval = \"50ms\"\ntimeout = \"40ms\"\n\
                      healthy_threshold = 1\nunhealthy_threshold = 1\n";

/// The cookie value a `Set-Cookie` header gives, if any.
fn cookie_of(reply: &Reply) -> Option<String> {
    let header = reply.header("set-cookie")?;
    let pair = header.split(';').next()?;
    pair.strip_prefix("sid=").map(str::to_owned)
}

#[tokio::test]
async fn a_pinned_session_stays_where_it_moved_when_its_first_backend_returns() {
    let backends = TestBackend::start_many(4).await;
    let proxy = start_proxy(&config_text(PINNED, &pool(&backends))).await;
    let mut client = Client::connect(proxy.local_addr()).await;

    // A new client gets a session pinned where it landed.
    let first = client.get("/login", &[]).await;
    assert_eq!(first.status, 200);
    let home = first.backend().to_owned();
    let cookie = cookie_of(&first).expect("a new session");
    let (id, pin) = cookie.split_once(".v1.").expect("ID.v1.PIN");
    assert_eq!(id.len(), 32, "{cookie}");
    assert_eq!(pin.len(), 16, "{cookie}");
    assert!(
        !cookie.contains(&home),
        "the pin names no backend: {cookie}"
    );
    let with = |value: &str| format!("sid={value}");
    for _ in 0..5 {
        let reply = client.get("/page", &[("cookie", &with(&cookie))]).await;
        assert_eq!(reply.backend(), home);
        assert!(cookie_of(&reply).is_none(), "no new cookie while it stays");
    }

    // Its backend goes down: the session moves along its key's fallback
    // order, and is pinned where it lands.
    let holder = backends.iter().find(|b| b.name == home).unwrap();
    holder.set_health(false);
    until_healthy_count(&proxy.pool(), 3).await;
    let moved = client.get("/page", &[("cookie", &with(&cookie))]).await;
    assert_eq!(moved.status, 200);
    let refuge = moved.backend().to_owned();
    assert_ne!(refuge, home);
    let repinned = cookie_of(&moved).expect("pinned again where it landed");
    assert!(
        repinned.starts_with(&format!("{id}.v1.")),
        "same session: {repinned}"
    );
    assert_ne!(repinned, cookie);

    // It comes back: the moved session stays where it moved...
    holder.set_health(true);
    until_healthy_count(&proxy.pool(), 4).await;
    for _ in 0..5 {
        let reply = client.get("/page", &[("cookie", &with(&repinned))]).await;
        assert_eq!(reply.backend(), refuge);
        assert!(cookie_of(&reply).is_none());
    }
    // /lookup of the cookie's value answers the same, and says the pin
    // decided.
    let mut admin = Client::connect(proxy.admin_addr().unwrap()).await;
    let lookup = admin.get(&format!("/lookup?key={repinned}"), &[]).await;
    let lookup: serde_json::Value = serde_json::from_str(lookup.text()).unwrap();
    assert_eq!(lookup["backend"], refuge.as_str(), "{lookup}");
    assert_eq!(lookup["pinned"], true, "{lookup}");
    assert_eq!(lookup["key"], id, "{lookup}");
    let lookup = admin.get(&format!("/lookup?key={id}"), &[]).await;
    let lookup: serde_json::Value = serde_json::from_str(lookup.text()).unwrap();
    assert_eq!(lookup["backend"], home.as_str(), "{lookup}");
    assert_eq!(lookup["pinned"], false, "{lookup}");
    // ... while the old pin, and a cookie without one, go home (exact
    // restore for keys that never moved).
    let reply = client.get("/page", &[("cookie", &with(&cookie))]).await;
    assert_eq!(reply.backend(), home);
    let reply = client.get("/page", &[("cookie", &with(id))]).await;
    assert_eq!(reply.backend(), home);
    assert_eq!(
        cookie_of(&reply).as_deref(),
        Some(cookie.as_str()),
        "pinned"
    );

    // A pin that names no backend, or is not a pin at all, is ignored: the
    // key decides, and the answer pins it properly.
    for tampered in [format!("{id}.v1.0000000000000000"), format!("{id}.v1.zz")] {
        let reply = client.get("/page", &[("cookie", &with(&tampered))]).await;
        assert_eq!(reply.status, 200, "{tampered}");
        if tampered.ends_with("zz") {
            // Not a pin: the whole value is the key.
            continue;
        }
        assert_eq!(reply.backend(), home, "{tampered}");
        assert_eq!(cookie_of(&reply).as_deref(), Some(cookie.as_str()));
    }
}

/// A pin is a keyed hash of the backend's name: any instance with the same
/// config (and `hash_key`) reads it the same way, whatever its own hashing
/// would choose.
#[tokio::test]
async fn two_instances_honour_each_others_pins() {
    use affinity::balance::hash::KeyHasher;
    use affinity::pool::snapshot::pin_of;

    let backends = TestBackend::start_many(4).await;
    let text = config_text(PINNED, &pool(&backends));
    let one = start_proxy(&text).await;
    let two = start_proxy(&text).await;
    let mut first = Client::connect(one.local_addr()).await;
    let mut second = Client::connect(two.local_addr()).await;
    for i in 0..8 {
        let reply = first.get(&format!("/new/{i}"), &[]).await;
        let cookie = cookie_of(&reply).unwrap();
        let (id, _) = cookie.split_once(".v1.").unwrap();
        // Pinned by "another instance" to a backend the key would not choose.
        let other = &backends[(i + 1) % 4];
        let other = if other.name == reply.backend() {
            &backends[(i + 2) % 4]
        } else {
            other
        };
        let pin = pin_of(&KeyHasher::default(), &other.name);
        let pinned = format!("sid={id}.v1.{pin:016x}");
        for client in [&mut first, &mut second] {
            let again = client.get("/page", &[("cookie", &pinned)]).await;
            assert_eq!(again.backend(), other.name, "{pinned}");
            assert!(cookie_of(&again).is_none());
        }
    }
}

/// A backend set to `state = "drain"` by a reload: its pinned sessions
/// still reach it, new sessions never do, and of the keys without a pin
/// only its own move.
#[tokio::test]
async fn a_draining_backend_keeps_its_pinned_sessions_and_takes_no_new_ones() {
    let backends = TestBackend::start_many(4).await;
    let members = pool(&backends);
    let proxy = start_proxy(&config_text(PINNED, &members)).await;
    let mut client = Client::connect(proxy.local_addr()).await;
    // 40 users, each with a pinned session.
    let mut users = Vec::new();
    for i in 0..40 {
        let reply = client.get(&format!("/login/{i}"), &[]).await;
        users.push((cookie_of(&reply).unwrap(), reply.backend().to_owned()));
    }
    let count = |name: &str| users.iter().filter(|(_, b)| b == name).count();
    let drained = backends
        .iter()
        .map(|b| b.name.clone())
        .max_by_key(|name| count(name))
        .unwrap();
    assert!(count(&drained) > 0);

    let mut text = config_text(PINNED, &members);
    text = text.replace(
        &format!("name = \"{drained}\"\n"),
        &format!("name = \"{drained}\"\nstate = \"drain\"\n"),
    );
    proxy.reload(parse(&text)).await.unwrap();

    let with = |value: &str| format!("sid={value}");
    for (cookie, home) in &users {
        // Every session stays where it lives, the drained backend's too.
        let reply = client.get("/page", &[("cookie", &with(cookie))]).await;
        assert_eq!(&reply.backend(), home, "{cookie}");
        assert!(cookie_of(&reply).is_none());
        // Without its pin, a key moves only if it was the drained one's.
        let (id, _) = cookie.split_once(".v1.").unwrap();
        let bare = client.get("/page", &[("cookie", &with(id))]).await;
        if *home == drained {
            assert_ne!(bare.backend(), drained, "{id}");
        } else {
            assert_eq!(&bare.backend(), home, "{id}");
        }
    }
    // New sessions never land on it.
    for i in 0..40 {
        let reply = client.get(&format!("/new/{i}"), &[]).await;
        assert_ne!(reply.backend(), drained);
    }
    let mut admin = Client::connect(proxy.admin_addr().unwrap()).await;
    let status: serde_json::Value =
        serde_json::from_str(admin.get("/status", &[]).await.text()).unwrap();
    let row = status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == drained.as_str())
        .unwrap();
    assert_eq!(row["draining"], true, "{row}");
    assert_eq!(row["healthy"], true, "{row}");
    assert_eq!(row["share"], 0.0, "{row}");
}

#[tokio::test]
async fn the_status_page_shows_a_draining_backend() {
    let backends = TestBackend::start_many(2).await;
    let text = config_text(PINNED, &pool(&backends)).replace(
        "name = \"server-2\"\n",
        "name = \"server-2\"\nstate = \"drain\"\n",
    );
    let proxy = start_proxy(&text).await;
    let Some(dom) = crate::admin::rendered_page(
        proxy.admin_addr().unwrap(),
        "the_status_page_shows_a_draining_backend",
    )
    .await
    else {
        return;
    };
    assert!(
        dom.contains("<span class=\"state\">draining</span>"),
        "{dom}"
    );
    assert!(
        dom.contains("draining: no new sessions; 0 in flight"),
        "{dom}"
    );
    assert_eq!(
        dom.matches("<span class=\"state\">healthy</span>").count(),
        1,
        "{dom}"
    );
}
