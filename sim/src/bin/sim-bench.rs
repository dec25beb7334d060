//! `sim-bench`: measures that the simulators are never what limits a benchmark.
//!
//! 1. CPU time to render a 200-item Docebo page (course enrollments, 1,000,000 by default), in-process
//!    on one thread, for the first page, a deep page, a filtered page and a cursor page; plus the
//!    end-to-end latency of the same page over HTTP.
//! 2. Time to ingest a 1,000,000-row Bulk API 2.0 upsert (upload over HTTP, then processing), with
//!    relationship columns to users and courses; then to read it all back with a Bulk API 2.0 query
//!    job, and the API calls that cost.
//!
//! Run: `cargo run --release -p learnsync-sim --bin sim-bench [-- --rows 1000000 --enrollments 1000000]`.

use std::time::{Duration, Instant};

use clap::Parser;
use learnsync_sim::{
    DoceboConfig, DoceboSim, EntityKind, GenerateParams, SalesforceConfig, SalesforceSim,
};
use serde_json::{Value, json};

/// Benchmarks of the simulators.
#[derive(Debug, Parser)]
struct Args {
    /// Course enrollments in the Docebo data set.
    #[arg(long, env = "SIM_BENCH_ENROLLMENTS", default_value_t = 1_000_000)]
    enrollments: usize,
    /// Rows of the Bulk upload.
    #[arg(long, env = "SIM_BENCH_ROWS", default_value_t = 1_000_000)]
    rows: usize,
    /// Skips the Docebo measurements.
    #[arg(long)]
    skip_docebo: bool,
    /// Skips the Bulk measurement.
    #[arg(long)]
    skip_bulk: bool,
    /// Page renders per measurement.
    #[arg(long, env = "SIM_BENCH_ITERATIONS", default_value_t = 2000)]
    iterations: u32,
}

fn per_call(total: Duration, n: u32) -> String {
    format!("{:.1} µs", total.as_secs_f64() * 1e6 / f64::from(n))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !args.skip_docebo {
        docebo_pages(&args).await?;
    }
    if !args.skip_bulk {
        bulk_ingest(&args).await?;
    }
    Ok(())
}

async fn docebo_pages(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let docebo = DoceboSim::start(DoceboConfig {
        rate_limit_per_hour: None,
        ..DoceboConfig::default()
    })
    .await?;
    let started = Instant::now();
    let users = (args.enrollments / 50).max(100);
    let summary = docebo.generate(&GenerateParams {
        seed: 1,
        users: Some(users),
        courses: Some(500),
        learning_plans: Some(20),
        course_enrollments: Some(args.enrollments),
        learning_plan_enrollments: Some(1000),
        session_enrollments: Some(1000),
        ..GenerateParams::default()
    });
    println!(
        "docebo: generated {} course enrollments, {} users in {:.2} s",
        summary.counts["course_enrollments"],
        summary.counts["users"],
        started.elapsed().as_secs_f64()
    );
    let deep_page = (args.enrollments / 200 / 2).max(1);
    let cases = [
        ("page 1, page_size 200", "page=1&page_size=200".to_string()),
        (
            "deep page, page_size 200",
            format!("page={deep_page}&page_size=200"),
        ),
        (
            "course_id[] filter (3 courses), page 2",
            "page=2&page_size=200&course_id[]=100&course_id[]=150&course_id[]=200".to_string(),
        ),
        (
            "updated_from, page 3",
            "page=3&page_size=200&updated_from=2024-01-01%2000:00:00".to_string(),
        ),
        (
            "cursor mode, first page",
            "get_cursor=1&page_size=200".to_string(),
        ),
    ];
    for (name, query) in &cases {
        // Warm the index and caches once.
        let body = docebo
            .render_page(EntityKind::CourseEnrollments, None, query)
            .ok_or("bad query")?;
        let parsed: Value = serde_json::from_str(&body)?;
        let items = parsed["data"]["items"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        let started = Instant::now();
        let mut bytes = 0usize;
        for _ in 0..args.iterations {
            bytes += docebo
                .render_page(EntityKind::CourseEnrollments, None, query)
                .map(|b| b.len())
                .unwrap_or(0);
        }
        let elapsed = started.elapsed();
        println!(
            "docebo: render {name}: {} per page ({items} items, {} KiB) [single thread, {} iterations]",
            per_call(elapsed, args.iterations),
            bytes / args.iterations as usize / 1024,
            args.iterations
        );
    }
    // End to end over HTTP (includes the client's own work and the loopback).
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{}/oauth2/token", docebo.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", docebo.config().client_id.as_str()),
            ("client_secret", docebo.config().client_secret.as_str()),
        ])
        .send()
        .await?
        .json()
        .await?;
    let token = token["access_token"].as_str().unwrap_or("").to_string();
    let url = format!(
        "{}/course/v1/courses/enrollments?page=7&page_size=200",
        docebo.base_url()
    );
    let n = 500u32;
    let started = Instant::now();
    for _ in 0..n {
        let response = http.get(&url).bearer_auth(&token).send().await?;
        let _ = response.bytes().await?;
    }
    println!(
        "docebo: HTTP GET 200-item page, sequential, client included: {} per request",
        per_call(started.elapsed(), n)
    );
    docebo.shutdown().await;
    Ok(())
}

async fn bulk_ingest(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let sf = SalesforceSim::start(SalesforceConfig {
        daily_api_limit: u64::MAX / 2,
        ..SalesforceConfig::default()
    })
    .await?;
    let http = reqwest::Client::new();
    let token = sf.issue_token();
    let data = format!("{}/services/data/v62.0", sf.base_url());
    let users = 10_000;
    let courses = 100;

    async fn run_job(
        http: &reqwest::Client,
        data: &str,
        token: &str,
        job: Value,
        csv: String,
    ) -> Result<(Duration, Duration, Value), Box<dyn std::error::Error>> {
        let info: Value = http
            .post(format!("{data}/jobs/ingest"))
            .bearer_auth(token)
            .json(&job)
            .send()
            .await?
            .json()
            .await?;
        let id = info["id"].as_str().ok_or("no job id")?.to_string();
        let started = Instant::now();
        let status = http
            .put(format!("{data}/jobs/ingest/{id}/batches"))
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await?
            .status();
        if status != 201 {
            return Err(format!("upload answered {status}").into());
        }
        let uploaded = started.elapsed();
        http.patch(format!("{data}/jobs/ingest/{id}"))
            .bearer_auth(token)
            .json(&json!({"state": "UploadComplete"}))
            .send()
            .await?;
        loop {
            let info: Value = http
                .get(format!("{data}/jobs/ingest/{id}"))
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            if ["JobComplete", "Failed", "Aborted"].contains(&info["state"].as_str().unwrap_or(""))
            {
                return Ok((uploaded, started.elapsed(), info));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let mut csv = String::from("Docebo_User_Id__c,Name,Email__c,Active__c\n");
    for u in 0..users {
        csv.push_str(&format!("{u},User {u},user{u}@acme.example,true\n"));
    }
    run_job(&http, &data, &token, json!({"object": "Docebo_User__c", "operation": "upsert", "externalIdFieldName": "Docebo_User_Id__c"}), csv).await?;
    let mut csv = String::from("Docebo_Course_Id__c,Name,Type__c\n");
    for c in 0..courses {
        csv.push_str(&format!("{c},Course {c},Elearning\n"));
    }
    run_job(&http, &data, &token, json!({"object": "Docebo_Course__c", "operation": "upsert", "externalIdFieldName": "Docebo_Course_Id__c"}), csv).await?;

    let started = Instant::now();
    let mut csv = String::with_capacity(args.rows * 160);
    csv.push_str("Enrollment_Key__c,Name,Docebo_User__r.Docebo_User_Id__c,Docebo_Course__r.Docebo_Course_Id__c,Status__c,Level__c,Enrolled_At__c,Completed_At__c,Score__c,Time_Spent_Seconds__c\n");
    let mut written = 0usize;
    'outer: for c in 0..courses {
        for u in 0..users {
            if written == args.rows {
                break 'outer;
            }
            csv.push_str(&format!(
                "{u}-{c},{u}-{c},{u},{c},Completed,Student,2024-03-13T14:58:26.000Z,2024-03-20T09:01:02.000Z,87,3600\n"
            ));
            written += 1;
        }
    }
    let size = csv.len();
    println!(
        "bulk: built a {written}-row CSV ({:.1} MB) in {:.2} s",
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let (uploaded, total, info) = run_job(
        &http,
        &data,
        &token,
        json!({"object": "Docebo_Course_Enrollment__c", "operation": "upsert", "externalIdFieldName": "Enrollment_Key__c"}),
        csv,
    )
    .await?;
    println!(
        "bulk: {written}-row upsert: upload {:.2} s, processing {} ms (server), upload to JobComplete {:.2} s; processed {}, failed {}, state {}",
        uploaded.as_secs_f64(),
        info["totalProcessingTime"],
        total.as_secs_f64(),
        info["numberRecordsProcessed"],
        info["numberRecordsFailed"],
        info["state"]
    );
    println!(
        "bulk: org holds {} course enrollments",
        sf.record_count("Docebo_Course_Enrollment__c")
    );
    bulk_query(&sf, &http, &data, &token).await?;
    sf.shutdown().await;
    Ok(())
}

/// Reads every course enrollment back with a Bulk API 2.0 query job (relationship columns included),
/// following locators; reports the time and the API calls the object cost.
async fn bulk_query(
    sf: &SalesforceSim,
    http: &reqwest::Client,
    data: &str,
    token: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    sf.clear_counters();
    let started = Instant::now();
    let info: Value = http
        .post(format!("{data}/jobs/query"))
        .bearer_auth(token)
        .json(&json!({"operation": "query", "query": "SELECT Id, Enrollment_Key__c, Docebo_User__r.Docebo_User_Id__c, Docebo_Course__r.Docebo_Course_Id__c, Status__c, Completed_At__c, Score__c FROM Docebo_Course_Enrollment__c"}))
        .send()
        .await?
        .json()
        .await?;
    let id = info["id"].as_str().ok_or("no query job id")?.to_string();
    let mut polls = 0;
    loop {
        polls += 1;
        let info: Value = http
            .get(format!("{data}/jobs/query/{id}"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        match info["state"].as_str().unwrap_or("") {
            "JobComplete" => break,
            "Failed" | "Aborted" => return Err(format!("query job ended {info}").into()),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let completed = started.elapsed();
    let (mut rows, mut sets, mut bytes) = (0usize, 0usize, 0usize);
    let mut locator: Option<String> = None;
    loop {
        let mut url = format!("{data}/jobs/query/{id}/results");
        if let Some(locator) = &locator {
            url.push_str(&format!("?locator={locator}"));
        }
        let response = http.get(url).bearer_auth(token).send().await?;
        let next = response
            .headers()
            .get("sforce-locator")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("null")
            .to_string();
        let body = response.bytes().await?;
        bytes += body.len();
        rows += body
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            .saturating_sub(1);
        sets += 1;
        if next == "null" {
            break;
        }
        locator = Some(next);
    }
    http.delete(format!("{data}/jobs/query/{id}"))
        .bearer_auth(token)
        .send()
        .await?;
    let calls = sf
        .object_calls()
        .get("Docebo_Course_Enrollment__c")
        .copied()
        .unwrap_or(0);
    println!(
        "bulk query: {rows} rows in {sets} result sets ({:.1} MB): JobComplete after {:.2} s, all read after {:.2} s; {calls} API calls for the object: 1 create, {polls} polls every 20 ms, {sets} result sets, 1 delete",
        bytes as f64 / 1e6,
        completed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
