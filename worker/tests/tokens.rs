//! Proves that the jobs of one connection share its Docebo token, within a worker and across
//! workers (through Postgres): a full sync of every area asks Docebo for one token (Docebo counts
//! token requests against the platform's calls), a token Docebo stops accepting is renewed once
//! for all of them, and new credentials get a new token.
#![allow(clippy::unwrap_used)]

use learnsync_e2e::env as common;

use std::time::Duration;

use common::{Env, sync_area, test_settings};
use learnsync_sim::GenerateParams;
use learnsync_store::connections::{self, ConnectionUpdate, SealedCredentials};
use learnsync_store::model::{Area, RunState};
use learnsync_store::secrets::DoceboGrant;
use learnsync_worker::Settings;

const TOKEN: &str = "POST /oauth2/token";

fn token_requests(env: &Env) -> u64 {
    env.docebo.counters().get(TOKEN).copied().unwrap_or(0)
}

#[tokio::test]
async fn a_workers_jobs_share_one_token_and_renew_it_once_when_it_expires() {
    let env = Env::new(GenerateParams {
        seed: 61,
        scale: Some(0.2),
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    // Four jobs at once: the courses and enrollments runs' jobs ask for a token together.
    let worker = env.spawn_worker(Settings {
        concurrency: 4,
        ..test_settings("tokens")
    });
    env.docebo.clear_counters();
    for area in [Area::Users, Area::Courses, Area::Enrollments] {
        let run = sync_area(&env, area).await;
        assert_eq!(run.state, RunState::Succeeded, "{area:?}: {run:#?}");
    }
    // Eight jobs in three runs: one token (each job asked for its own before).
    assert_eq!(token_requests(&env), 1, "{:?}", env.docebo.counters());

    // Docebo stops accepting it: the next run's jobs renew it once between them.
    env.docebo.expire_tokens();
    env.docebo.clear_counters();
    let run = env.resynchronize(Area::Enrollments, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    let renewals = token_requests(&env);
    assert!(
        renewals >= 1,
        "the expired token was renewed: {:?}",
        env.docebo.counters()
    );
    // Jobs that were refused the old token together take the one a first job renewed; only a
    // job that renewed while another's request was in flight asks again.
    assert!(
        renewals < 4,
        "{renewals} renewals for the run's 4 jobs: {:?}",
        env.docebo.counters()
    );
    worker.stop().await;
}

#[tokio::test]
async fn workers_share_one_token_through_postgres_and_renew_it_once_between_them() {
    let env = Env::new(GenerateParams {
        seed: 62,
        scale: Some(0.2),
        bad_records: Some(false),
        ..GenerateParams::default()
    })
    .await;
    env.docebo.clear_counters();
    // A first worker asks for the token (the users run); a second, its own cache empty, runs
    // the courses and enrollments with the token the first stored in Postgres.
    let first = env.spawn_worker(test_settings("tokens-a"));
    let run = sync_area(&env, Area::Users).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    first.stop().await;
    let second = env.spawn_worker(test_settings("tokens-b"));
    for area in [Area::Courses, Area::Enrollments] {
        let run = sync_area(&env, area).await;
        assert_eq!(run.state, RunState::Succeeded, "{area:?}: {run:#?}");
    }
    assert_eq!(token_requests(&env), 1, "{:?}", env.docebo.counters());

    // Two workers, two jobs each, hold the token when Docebo stops accepting it: the jobs a 401
    // answers, on either worker, renew it once between them.
    let first = env.spawn_worker(Settings {
        concurrency: 2,
        ..test_settings("tokens-c")
    });
    env.docebo.expire_tokens();
    env.docebo.clear_counters();
    let run = env.resynchronize(Area::Enrollments, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(token_requests(&env), 1, "{:?}", env.docebo.counters());
    first.stop().await;
    second.stop().await;

    // UpdateConnection changes the Docebo credentials (to the password grant): a new worker,
    // its cache empty, finds the stored token asked for with others and asks again, once.
    use_password_grant(&env).await;
    env.docebo.clear_counters();
    let third = env.spawn_worker(test_settings("tokens-d"));
    let run = env.resynchronize(Area::Users, false).await;
    let run = env.wait_final(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.state, RunState::Succeeded, "{run:#?}");
    assert_eq!(token_requests(&env), 1, "{:?}", env.docebo.counters());
    third.stop().await;
}

/// Changes the connection's Docebo grant to the password grant, as UpdateConnection does.
async fn use_password_grant(env: &Env) {
    let conn = env.store.conn().await.unwrap();
    let (sealed, key_id) = connections::sealed_credentials(&conn, env.connection_id)
        .await
        .unwrap();
    let mut credentials = env.cipher.open(env.connection_id, &sealed).unwrap();
    credentials.docebo.grant = DoceboGrant::Password {
        username: env.docebo.config().username.clone(),
        password: env.docebo.config().password.clone(),
    };
    let update = ConnectionUpdate {
        credentials: Some(SealedCredentials {
            sealed: env.cipher.seal(env.connection_id, &credentials).unwrap(),
            key_id,
            docebo_grant: credentials.docebo.grant.name().into(),
            salesforce_grant: credentials.salesforce.grant.name().into(),
            docebo_platform: credentials.docebo_platform(),
        }),
        ..ConnectionUpdate::default()
    };
    connections::update(&conn, env.connection_id, &update)
        .await
        .unwrap();
}
