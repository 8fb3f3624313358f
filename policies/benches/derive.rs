//! Cost of deriving a row filter: cold (partial evaluation + translation) and from the cache;
//! and of a table's column rules (one partial evaluation per column).
//! `cargo bench -p policies --bench derive`

use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Context, EntityUid, RestrictedExpression};
use criterion::{criterion_group, criterion_main, Criterion};
use policies::{derive, derive_columns, load_dir, DerivationCache};

fn bench(c: &mut Criterion) {
    let bundle = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/finance")).unwrap();
    let agent = EntityUid::from_str("Agent::\"support-bot\"").unwrap();
    let alice = EntityUid::from_str("User::\"alice\"").unwrap();
    let context = || {
        Context::from_pairs([(
            "on_behalf_of".to_string(),
            RestrictedExpression::new_entity_uid(alice.clone()),
        )])
        .unwrap()
    };
    c.bench_function(
        "derive cold (support-bot for alice, select transfers)",
        |b| b.iter(|| derive(&bundle, &agent, "select", "public::transfers", context()).unwrap()),
    );
    let columns = [
        "id",
        "tenant_id",
        "customer_id",
        "amount",
        "currency",
        "iban",
        "approved",
        "created_at",
        "metadata",
    ];
    let ctx = context();
    c.bench_function("column rules cold (9 columns of transfers)", |b| {
        b.iter(|| derive_columns(&bundle, &agent, "public::transfers", &columns, &ctx).unwrap())
    });
    let cache = DerivationCache::new(1024);
    cache
        .get_or_derive(
            &bundle,
            &agent,
            "select",
            "public::transfers",
            "alice",
            context,
        )
        .unwrap();
    c.bench_function("derive cached lookup", |b| {
        b.iter(|| {
            cache
                .get_or_derive(
                    &bundle,
                    &agent,
                    "select",
                    "public::transfers",
                    "alice",
                    context,
                )
                .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
