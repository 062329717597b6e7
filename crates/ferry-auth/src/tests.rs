use std::time::Duration;

use ferry_model::clock::ManualClock;

use ferry_model::{ErrorCode, WaId};

use super::*;

fn config(admin_password: Option<&str>) -> AuthConfig {
    AuthConfig { admin_password: admin_password.map(Into::into), token_ttl_secs: 60, ..AuthConfig::default() }
}

fn rules() -> SenderRules {
    SenderRules { country_code: "1".into(), default_sender: WaId::from_normalized("15550100000".into()) }
}

fn bearer(t: &IssuedToken) -> String {
    format!("Bearer {}", t.token)
}

#[test]
fn login_roles_expiry_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let (auth, boot) = Auth::open(dir.path(), &config(Some("s3cret-pass")), clock.clone(), rules()).unwrap();
    assert_eq!(boot, Bootstrap::AdminFromConfig);
    assert!(matches!(auth.login("admin", "wrong-pass"), Err(AuthError::Unauthenticated(_))));
    assert!(matches!(auth.login("nobody", "s3cret-pass"), Err(AuthError::Unauthenticated(_))));
    let admin = auth.login("admin", "s3cret-pass").unwrap();
    assert_eq!(auth.authorize(Some(&bearer(&admin)), Role::Admin).unwrap().username, "admin");

    auth.create_user("bob", "bob-password", Role::User, None).unwrap();
    assert!(matches!(auth.create_user("bob", "bob-password", Role::User, None), Err(AuthError::UserExists(_))));
    // Unique regardless of case (#14): `Bob` beside `bob` is refused, naming the existing user.
    match auth.create_user("Bob", "bob-password", Role::Admin, None) {
        Err(AuthError::UserExists(existing)) => assert_eq!(existing, "bob"),
        other => panic!("`Bob` beside `bob` was not refused: {other:?}"),
    }
    assert!(matches!(auth.login("Bob", "bob-password"), Err(AuthError::Unauthenticated(_))));
    let bob = auth.login("bob", "bob-password").unwrap();
    assert_eq!(auth.authorize(Some(&bearer(&bob)), Role::User).unwrap().role, Role::User);
    assert!(matches!(auth.authorize(Some(&bearer(&bob)), Role::Admin), Err(AuthError::Forbidden(_))));
    assert!(matches!(auth.authorize(None, Role::User), Err(AuthError::Unauthenticated(_))));
    assert!(matches!(auth.authorize(Some("Basic abc"), Role::User), Err(AuthError::Unauthenticated(_))));

    // Logout revokes that token only.
    let bob2 = auth.login("bob", "bob-password").unwrap();
    auth.logout(Some(&bearer(&bob))).unwrap();
    assert!(matches!(auth.authorize(Some(&bearer(&bob)), Role::User), Err(AuthError::Unauthenticated(_))));
    auth.authorize(Some(&bearer(&bob2)), Role::User).unwrap();

    // Expiry on the node's clock.
    clock.advance(Duration::from_secs(61));
    let err = auth.authorize(Some(&bearer(&bob2)), Role::User).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn tokens_and_revocations_hold_across_reopen_and_deleting_a_user_revokes_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let (kept, revoked, carol) = {
        let (auth, boot) = Auth::open(dir.path(), &config(None), clock.clone(), rules()).unwrap();
        let Bootstrap::AdminGenerated(password) = boot else { panic!("expected a generated password") };
        assert!(password.len() >= 20);
        let kept = auth.login("admin", &password).unwrap();
        let revoked = auth.login("admin", &password).unwrap();
        auth.logout(Some(&bearer(&revoked))).unwrap();
        auth.create_user("carol", "carol-password", Role::Admin, None).unwrap();
        let carol = auth.login("carol", "carol-password").unwrap();
        (kept, revoked, carol)
    };
    let (auth, boot) = Auth::open(dir.path(), &config(Some("ignored-now")), clock, rules()).unwrap();
    assert_eq!(boot, Bootstrap::Existing, "admin is created only when there is no user");
    auth.authorize(Some(&bearer(&kept)), Role::Admin).unwrap();
    assert!(auth.authorize(Some(&bearer(&revoked)), Role::User).is_err());
    auth.delete_user("carol").unwrap();
    assert!(auth.authorize(Some(&bearer(&carol)), Role::User).is_err());
    assert!(matches!(auth.delete_user("carol"), Err(AuthError::NoSuchUser(_))));
    let err = auth.delete_user("admin").unwrap_err();
    assert!(err.to_string().contains("last admin"), "{err}");
}

#[test]
fn bad_input_is_refused_with_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let (auth, _) = Auth::open(dir.path(), &config(Some("s3cret-pass")), ManualClock::new(), rules()).unwrap();
    let e = auth.create_user("a b", "long-enough", Role::User, None).unwrap_err();
    assert!(e.to_string().contains("username"), "{e}");
    let e = auth.create_user("ab", "short", Role::User, None).unwrap_err();
    assert!(e.to_string().contains("8 to 1024 characters, got 5"), "{e}");
    assert!("root".parse::<Role>().unwrap_err().contains("expected `admin` or `user`"));
    let short = AuthConfig { admin_password: Some("x".into()), ..AuthConfig::default() };
    assert!(short.validate().unwrap_err().contains("FERRY_ADMIN_PASSWORD"));
    let zero = AuthConfig { token_ttl_secs: 0, ..AuthConfig::default() };
    assert!(zero.validate().unwrap_err().contains("token_ttl_secs"));
}

#[test]
fn senders_restrict_users_not_admins_and_hold_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let token = {
        let (auth, _) = Auth::open(dir.path(), &config(Some("s3cret-pass")), clock.clone(), rules()).unwrap();
        let raw = ["+1 (555) 010-0001".to_owned(), "5550100002".to_owned(), "+15550100001".to_owned()];
        let info = auth.create_user("shop", "shop-password", Role::User, Some(&raw)).unwrap();
        let listed: Vec<&str> = info.senders.as_ref().unwrap().iter().map(WaId::as_str).collect();
        assert_eq!(listed, ["15550100001", "15550100002"], "normalized with the country code, deduplicated");
        let t = auth.login("shop", "shop-password").unwrap();
        let shop = auth.authenticate(Some(&bearer(&t))).unwrap();
        auth.check_sender(&shop, Some("+1 555 010 0002")).unwrap();
        let e = auth.check_sender(&shop, None).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::AccessDenied, "sender"));
        assert!(e.details.contains("+15550100000") && e.details.contains("default_sender"), "{e}");
        let e = auth.check_sender(&shop, Some("+1555abc")).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::InvalidParameter, "sender"), "{e}");
        assert!(shop.may_read("15550100001") && !shop.may_read("15550100000"));
        // Lifting the list applies to the open token at once.
        auth.set_senders("shop", None).unwrap();
        assert!(auth.authenticate(Some(&bearer(&t))).unwrap().senders.is_none());
        auth.set_senders("shop", Some(&["+15550100009".to_owned()])).unwrap();
        // Bad lists are refused naming the field, and change nothing.
        let e = auth.set_senders("shop", Some(&["+15550100003".to_owned(), "call me".to_owned()])).unwrap_err();
        assert_eq!(e.api_error().field, "senders[1]", "{e}");
        let e = auth.set_senders("shop", Some(&[])).unwrap_err();
        assert_eq!(e.api_error().field, "senders");
        // An admin with a list stays unrestricted.
        let admin = auth.create_user("boss", "boss-password", Role::Admin, Some(&raw)).unwrap();
        assert!(admin.senders.is_some());
        let boss = auth.login("boss", "boss-password").unwrap();
        let boss = auth.authenticate(Some(&bearer(&boss))).unwrap();
        auth.check_sender(&boss, Some("+15559999999")).unwrap();
        t
    };
    let (auth, _) = Auth::open(dir.path(), &config(None), clock, rules()).unwrap();
    let shop = auth.authenticate(Some(&bearer(&token))).unwrap();
    let list: Vec<&str> = shop.senders.as_ref().unwrap().iter().map(WaId::as_str).collect();
    assert_eq!(list, ["15550100009"]);
    assert_eq!(auth.user("shop").unwrap().senders.unwrap().len(), 1);
}

#[test]
fn watch_streams_are_capped_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuthConfig { max_watch_streams_per_user: 2, ..config(Some("s3cret-pass")) };
    let (auth, _) = Auth::open(dir.path(), &cfg, ManualClock::new(), rules()).unwrap();
    let p = |name: &str| Principal { username: name.into(), role: Role::User, senders: None };
    let a = auth.open_watch_stream(&p("a")).unwrap();
    let _b = auth.open_watch_stream(&p("a")).unwrap();
    let e = auth.open_watch_stream(&p("a")).err().unwrap();
    assert_eq!(e.code, ErrorCode::TooManyRequests);
    assert!(e.details.contains("max_watch_streams_per_user = 2"), "{e}");
    let _other = auth.open_watch_stream(&p("z")).unwrap();
    drop(a);
    auth.open_watch_stream(&p("a")).unwrap();
}

#[test]
fn disabled_lets_everyone_in() {
    let auth = Auth::disabled();
    assert_eq!(auth.authorize(None, Role::Admin).unwrap().role, Role::Admin);
    assert!(auth.login("admin", "x").is_err());
}
