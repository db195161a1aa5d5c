//! Tenants, members and policies on a real state store, through the registry as the log applies
//! them: the role rules, setup adopting the root key, and a property over random command
//! sequences (refused commands change nothing; the invariants always hold).

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use cairn_engine::state::{Registry, Rejection, StateStore, TypedService};
use cairn_master::identity::{
    IdentityCommand, IdentityQuery, IdentityQueryResponse, IdentityResponse, IdentityService,
};
use cairn_master::keys::{KeyCommand, KeyQuery, KeyQueryResponse, KeyService};
use cairn_master::policy::{Effect, Role, Statement};
use cairn_master::tenancy::DEFAULT_TENANT;
use proptest::prelude::*;
use redb::{ReadableDatabase, ReadableTable, TableHandle};

struct State {
    store: StateStore,
    registry: Registry,
    index: u64,
    _dir: tempfile::TempDir,
}

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaA";

impl State {
    fn new() -> State {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().join("state.redb")).unwrap();
        let registry = cairn_master::registry().unwrap();
        registry.init(&store).unwrap();
        State {
            store,
            registry,
            index: 0,
            _dir: dir,
        }
    }

    fn apply<S: TypedService>(&mut self, c: &S::Command) -> Result<S::Response, Rejection> {
        self.index += 1;
        let seed = self.index.to_le_bytes();
        let mut id_seed = [0u8; 16];
        id_seed[..8].copy_from_slice(&seed);
        let bytes = S::command(c, 1_000_000 + self.index, id_seed)
            .unwrap()
            .encode();
        let out = self
            .registry
            .apply_batch(&self.store, [(self.index, bytes.as_slice())])
            .unwrap()
            .remove(0);
        out.map(|b| S::response(&b).unwrap())
    }

    fn id(&mut self, c: IdentityCommand) -> Result<IdentityResponse, Rejection> {
        self.apply::<IdentityService>(&c)
    }

    fn ask(&self, q: IdentityQuery) -> IdentityQueryResponse {
        let payload = IdentityService::encode_query(&q).unwrap();
        let b = self
            .registry
            .query(&self.store, IdentityService::ID, &payload)
            .unwrap()
            .unwrap();
        IdentityService::query_response(&b).unwrap()
    }

    fn setup(&mut self) -> u128 {
        match self
            .id(IdentityCommand::Setup {
                email: "admin@example.com".into(),
                name: "Admin".into(),
                password_hash: HASH.into(),
                sealed_jwt_key: vec![1; 40],
            })
            .unwrap()
        {
            IdentityResponse::User { id } => id,
            other => panic!("{other:?}"),
        }
    }

    fn register(&mut self, email: &str) -> u128 {
        self.id(IdentityCommand::SetRegistration { enabled: true })
            .unwrap();
        match self
            .id(IdentityCommand::Register {
                email: email.into(),
                name: email.into(),
                password_hash: HASH.into(),
            })
            .unwrap()
        {
            IdentityResponse::User { id } => id,
            other => panic!("{other:?}"),
        }
    }

    fn role(&self, user: u128, tenant: u128) -> Option<Role> {
        match self.ask(IdentityQuery::Access {
            user,
            tenant: Some(tenant),
        }) {
            IdentityQueryResponse::Access(a) => a.map(|a| a.role),
            other => panic!("{other:?}"),
        }
    }

    fn current(&self, user: u128) -> Option<u128> {
        match self.ask(IdentityQuery::Tenants { user }) {
            IdentityQueryResponse::Tenants { current, .. } => current,
            other => panic!("{other:?}"),
        }
    }

    /// Every table but the registry's own bookkeeping, for before/after comparisons.
    fn dump(&self) -> BTreeMap<(String, Vec<u8>), Vec<u8>> {
        let txn = self.store.db().begin_read().unwrap();
        let mut out = BTreeMap::new();
        for h in txn.list_tables().unwrap() {
            let name = h.name().to_owned();
            if name == "cairn.meta" {
                continue;
            }
            let def = redb::TableDefinition::<&[u8], &[u8]>::new(&name);
            let t = txn.open_table(def).unwrap();
            for item in t.iter().unwrap() {
                let (k, v) = item.unwrap();
                out.insert((name.clone(), k.value().to_vec()), v.value().to_vec());
            }
        }
        out
    }
}

fn code(r: Result<IdentityResponse, Rejection>) -> String {
    r.err().map(|e| e.code).unwrap_or_default()
}

#[test]
fn setup_makes_the_default_tenant_and_adopts_the_root_key() {
    let mut s = State::new();
    s.apply::<KeyService>(&KeyCommand::Create {
        access_key: "CAIRNROOTKEY00000001".into(),
        sealed_secret: vec![7; 40],
        owner: "root".into(),
    })
    .unwrap();
    let admin = s.setup();
    assert_eq!(s.role(admin, DEFAULT_TENANT), Some(Role::Owner));
    assert_eq!(s.current(admin), Some(DEFAULT_TENANT));
    let q = KeyService::encode_query(&KeyQuery::Get {
        access_key: "CAIRNROOTKEY00000001".into(),
    })
    .unwrap();
    let b = s
        .registry
        .query(&s.store, KeyService::ID, &q)
        .unwrap()
        .unwrap();
    let KeyQueryResponse::Key(Some(k)) = KeyService::query_response(&b).unwrap() else {
        panic!("root key gone");
    };
    assert_eq!(k.owner, format!("{admin:032x}"));
    assert_eq!(k.tenant, Some(DEFAULT_TENANT));
    // A registered user starts in a workspace of their own.
    let bob = s.register("bob@example.com");
    let bobs = s.current(bob).unwrap();
    assert_ne!(bobs, DEFAULT_TENANT);
    assert_eq!(s.role(bob, bobs), Some(Role::Owner));
    assert_eq!(s.role(bob, DEFAULT_TENANT), None);
}

#[test]
fn role_rules_hold_and_refusals_change_nothing() {
    let mut s = State::new();
    let owner = s.setup();
    let t = DEFAULT_TENANT;
    let a = s.register("a@example.com");
    let v = s.register("v@example.com");
    let x = s.register("x@example.com");
    let set = |actor, user, role| IdentityCommand::SetMember {
        tenant: t,
        actor,
        user,
        role,
    };
    s.id(set(owner, a, Role::Admin)).unwrap();
    s.id(set(owner, v, Role::Viewer)).unwrap();
    let before = s.dump();
    for (c, want) in [
        // Not a member: the tenant does not exist for them.
        (set(x, x, Role::Owner), "no_such_tenant"),
        // A viewer manages nobody.
        (set(v, x, Role::Viewer), "forbidden"),
        // An admin does not make owners, nor touch one.
        (set(a, x, Role::Owner), "forbidden"),
        (set(a, owner, Role::Member), "forbidden"),
        // The last owner stays one.
        (set(owner, owner, Role::Admin), "last_owner"),
        (
            IdentityCommand::RemoveMember {
                tenant: t,
                actor: owner,
                user: owner,
            },
            "last_owner",
        ),
        (
            IdentityCommand::RemoveMember {
                tenant: t,
                actor: a,
                user: owner,
            },
            "forbidden",
        ),
        (set(owner, 12345, Role::Viewer), "no_such_user"),
        (
            IdentityCommand::SwitchTenant { user: x, tenant: t },
            "no_such_tenant",
        ),
        (
            IdentityCommand::CreatePolicy {
                tenant: t,
                actor: v,
                name: "p".into(),
                statements: vec![],
            },
            "forbidden",
        ),
        (
            IdentityCommand::CreatePolicy {
                tenant: t,
                actor: a,
                name: "p".into(),
                statements: vec![],
            },
            "invalid_policy",
        ),
        (
            IdentityCommand::CreateTenant {
                name: " ".into(),
                owner: x,
            },
            "invalid_name",
        ),
    ] {
        assert_eq!(code(s.id(c.clone())), want, "{c:?}");
        assert_eq!(s.dump(), before, "{c:?} changed the state");
    }
    // What is allowed: an owner makes a second owner, who may then demote the first.
    s.id(set(owner, a, Role::Owner)).unwrap();
    s.id(set(a, owner, Role::Viewer)).unwrap();
    assert_eq!(s.role(owner, t), Some(Role::Viewer));
    // A member leaves; their policies go with them; they act elsewhere.
    let p = match s
        .id(IdentityCommand::CreatePolicy {
            tenant: t,
            actor: a,
            name: "read".into(),
            statements: vec![Statement {
                effect: Effect::Allow,
                actions: vec!["storage:read".into()],
                resources: vec!["*".into()],
            }],
        })
        .unwrap()
    {
        IdentityResponse::Created { id } => id,
        other => panic!("{other:?}"),
    };
    s.id(IdentityCommand::AttachPolicy {
        tenant: t,
        actor: a,
        policy: p,
        user: v,
        on: true,
    })
    .unwrap();
    s.id(IdentityCommand::SwitchTenant { user: v, tenant: t })
        .unwrap();
    assert_eq!(s.current(v), Some(t));
    s.id(IdentityCommand::RemoveMember {
        tenant: t,
        actor: v,
        user: v,
    })
    .unwrap();
    assert_eq!(s.role(v, t), None);
    assert_ne!(s.current(v), Some(t));
    let IdentityQueryResponse::Policies(list) = s.ask(IdentityQuery::Policies { tenant: t }) else {
        panic!()
    };
    assert!(list.iter().all(|(_, _, users)| !users.contains(&v)));
}

#[derive(Clone, Debug)]
enum Op {
    CreateTenant(usize),
    Switch(usize, usize),
    Set(usize, usize, usize, u8),
    Remove(usize, usize, usize),
    Policy(usize, usize),
    /// On the policy's own tenant (so that most attempts reach the role rules).
    DeletePolicy(usize, usize),
    Attach(usize, usize, usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    // Users 0..4; as an actor, 4 and 5 stand for an owner of the tenant acted on, so that
    // many commands get past the role check and change something.
    let a = 0..6usize;
    let u = 0..4usize;
    // Few tenants, so that members, policies and removals meet often.
    let t = 0..2usize;
    prop_oneof![
        u.clone().prop_map(Op::CreateTenant),
        (u.clone(), t.clone()).prop_map(|(a, b)| Op::Switch(a, b)),
        (t.clone(), a.clone(), u.clone(), 0..4u8).prop_map(|(a, b, c, d)| Op::Set(a, b, c, d)),
        (t.clone(), a.clone(), u.clone(), 0..4u8).prop_map(|(a, b, c, d)| Op::Set(a, b, c, d)),
        (t.clone(), a.clone(), u.clone()).prop_map(|(a, b, c)| Op::Remove(a, b, c)),
        (t.clone(), a.clone()).prop_map(|(a, b)| Op::Policy(a, b)),
        (0..4usize, a.clone()).prop_map(|(a, b)| Op::DeletePolicy(a, b)),
        (0..4usize, a.clone(), u.clone(), any::<bool>())
            .prop_map(|(a, b, c, d)| Op::Attach(a, b, c, d)),
        (0..4usize, a.clone(), a.clone(), Just(true))
            .prop_map(|(a, b, c, d)| Op::Attach(a, b, c, d)),
        (0..4usize, a.clone(), 4..6usize, Just(true))
            .prop_map(|(a, b, c, d)| Op::Attach(a, b, c, d)),
        (t, a, 4..6usize).prop_map(|(a, b, c)| Op::Remove(a, b, c)),
    ]
}

/// The invariants of the tenancy tables, read through the queries.
fn check_invariants(s: &State, users: &[u128], tenants: &[u128]) {
    for &t in tenants {
        let IdentityQueryResponse::Members(members) = s.ask(IdentityQuery::Members { tenant: t })
        else {
            panic!()
        };
        if s.ask(IdentityQuery::Tenant { id: t }) == IdentityQueryResponse::Tenant(None) {
            assert!(members.is_empty());
            continue;
        }
        assert!(
            members.iter().any(|(_, r, _)| *r == Role::Owner),
            "tenant {t:x} has no owner"
        );
        let member_ids: BTreeSet<u128> = members.iter().map(|(u, _, _)| *u).collect();
        for (u, r, _) in &members {
            assert_eq!(s.role(*u, t), Some(*r));
        }
        let IdentityQueryResponse::Policies(policies) =
            s.ask(IdentityQuery::Policies { tenant: t })
        else {
            panic!()
        };
        for (_, p, attached) in &policies {
            assert_eq!(p.tenant, t);
            for u in attached {
                assert!(
                    member_ids.contains(u),
                    "a policy is attached to a non-member"
                );
            }
        }
    }
    for &u in users {
        let IdentityQueryResponse::Tenants {
            tenants: mine,
            current,
        } = s.ask(IdentityQuery::Tenants { user: u })
        else {
            panic!()
        };
        for (t, _, r) in &mine {
            assert_eq!(s.role(u, *t), Some(*r), "memberships and members disagree");
        }
        if let Some(c) = current {
            assert!(
                mine.iter().any(|(t, _, _)| *t == c),
                "acting in a foreign tenant"
            );
        } else {
            assert!(mine.is_empty(), "a member of something acts in nothing");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_tenancy_commands_keep_the_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let mut s = State::new();
        let mut users = vec![s.setup()];
        for i in 1..4 {
            users.push(s.register(&format!("u{i}@example.com")));
        }
        let mut tenants: Vec<u128> = users.iter().map(|u| s.current(*u).unwrap()).collect();
        let mut policies: Vec<(u128, u128)> = Vec::new();
        for op in ops {
            let t = |i: usize| tenants[i % tenants.len()];
            // An index past the users stands for a member of `tenant`: an owner (as an actor)
            // or one who is not (as a target), so that most commands reach the rules.
            let pick = |a: usize, tenant: u128, owner: bool| -> u128 {
                if a < users.len() {
                    return users[a];
                }
                match s.ask(IdentityQuery::Members { tenant }) {
                    IdentityQueryResponse::Members(m) => m
                        .iter()
                        .find(|(_, r, _)| (*r == Role::Owner) == owner)
                        .map_or(users[0], |(u, _, _)| *u),
                    _ => users[0],
                }
            };
            let actor = |a: usize, tenant: u128| pick(a, tenant, true);
            let c = match op.clone() {
                Op::CreateTenant(u) => IdentityCommand::CreateTenant {
                    name: format!("t{}", tenants.len()),
                    owner: users[u],
                },
                Op::Switch(u, i) => IdentityCommand::SwitchTenant { user: users[u], tenant: t(i) },
                Op::Set(i, a, u, r) => IdentityCommand::SetMember {
                    tenant: t(i),
                    actor: actor(a, t(i)),
                    user: users[u],
                    role: Role::from_byte(r).unwrap(),
                },
                Op::Remove(i, a, u) => IdentityCommand::RemoveMember {
                    tenant: t(i),
                    actor: actor(a, t(i)),
                    user: pick(u, t(i), false),
                },
                Op::Policy(i, a) => IdentityCommand::CreatePolicy {
                    tenant: t(i),
                    actor: actor(a, t(i)),
                    name: format!("p{}", policies.len()),
                    statements: vec![Statement {
                        effect: Effect::Deny,
                        actions: vec!["s3:DeleteObject".into()],
                        resources: vec!["*".into()],
                    }],
                },
                Op::DeletePolicy(p, a) => {
                    let (tenant, policy) = policies.get(p).copied().unwrap_or((t(p), 7));
                    IdentityCommand::DeletePolicy { tenant, actor: actor(a, tenant), policy }
                }
                Op::Attach(p, a, u, on) => {
                    let (tenant, policy) = policies.get(p).copied().unwrap_or((t(p), 7));
                    IdentityCommand::AttachPolicy {
                        tenant,
                        actor: actor(a, tenant),
                        policy,
                        user: pick(u, tenant, false),
                        on,
                    }
                }
            };
            let before = s.dump();
            match s.id(c.clone()) {
                Ok(IdentityResponse::Created { id }) => match op {
                    Op::CreateTenant(_) => tenants.push(id),
                    Op::Policy(i, _) => policies.push((t(i), id)),
                    _ => panic!("{c:?} created something"),
                },
                Ok(_) => {}
                Err(_) => prop_assert_eq!(s.dump(), before, "a refused {:?} changed the state", c),
            }
            check_invariants(&s, &users, &tenants);
        }
    }
}
