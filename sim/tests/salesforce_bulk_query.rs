// Proves Bulk API 2.0 query jobs: creation, the UploadComplete -> InProgress -> JobComplete states,
// CSV results (header as in the SELECT, relationship columns, empty cells for nulls, `...000Z`
// datetimes), result sets cut by `Sforce-Locator`, the API-version check, deletion, the daily limit
// in `/limits`, call counting (per endpoint and per object), the snapshot taken at completion, and `queryAll` with the recycle bin.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{DATA, client, sf_call, sf_token};
use learnsync_sim::{SalesforceConfig, SalesforceSim};
use reqwest::Method;
use serde_json::{Value, json};

struct Org {
    sim: SalesforceSim,
    http: reqwest::Client,
    token: String,
}

/// One result set: status, `Sforce-Locator`, `Sforce-NumberOfRecords`, header and rows.
struct Set {
    status: u16,
    locator: Option<String>,
    number: Option<usize>,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Org {
    async fn new(delay: Duration) -> Org {
        let sim = SalesforceSim::start(SalesforceConfig {
            bulk_query_delay: delay,
            ..SalesforceConfig::default()
        })
        .await
        .unwrap();
        let http = client();
        let token = sf_token(&http, &sim).await;
        Org { sim, http, token }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, body) =
            sf_call(&self.http, &self.sim, &self.token, method, path, body).await;
        (status, body)
    }

    /// Loads rows with a Bulk API 2.0 ingest upsert and waits for it.
    async fn ingest(&self, object: &str, external_id: &str, csv: String) {
        let (status, job) = self
            .call(
                Method::POST,
                &format!("{DATA}/jobs/ingest"),
                Some(json!({"object": object, "operation": "upsert", "externalIdFieldName": external_id})),
            )
            .await;
        assert_eq!(status, 200, "{job}");
        let id = job["id"].as_str().unwrap().to_string();
        let status = self
            .http
            .put(format!(
                "{}{DATA}/jobs/ingest/{id}/batches",
                self.sim.base_url()
            ))
            .bearer_auth(&self.token)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 201);
        let (status, _) = self
            .call(
                Method::PATCH,
                &format!("{DATA}/jobs/ingest/{id}"),
                Some(json!({"state": "UploadComplete"})),
            )
            .await;
        assert_eq!(status, 200);
        for _ in 0..3000 {
            let (_, info) = self
                .call(Method::GET, &format!("{DATA}/jobs/ingest/{id}"), None)
                .await;
            match info["state"].as_str().unwrap() {
                "JobComplete" => {
                    assert_eq!(info["numberRecordsFailed"], 0, "{info}");
                    return;
                }
                "Failed" | "Aborted" => panic!("ingest failed: {info}"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        panic!("ingest job {id} did not finish");
    }

    async fn create_query(&self, operation: &str, soql: &str) -> (u16, Value) {
        self.call(
            Method::POST,
            &format!("{DATA}/jobs/query"),
            Some(json!({"operation": operation, "query": soql})),
        )
        .await
    }

    /// Polls a query job until it ends and returns the states seen, in order, and its final info.
    async fn wait(&self, id: &str) -> (Vec<String>, Value) {
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..3000 {
            let (status, info) = self
                .call(Method::GET, &format!("{DATA}/jobs/query/{id}"), None)
                .await;
            assert_eq!(status, 200, "{info}");
            let state = info["state"].as_str().unwrap().to_string();
            if seen.last() != Some(&state) {
                seen.push(state.clone());
            }
            if ["JobComplete", "Failed", "Aborted"].contains(&state.as_str()) {
                return (seen, info);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("query job {id} did not finish");
    }

    async fn results(&self, version: &str, id: &str, query: &str) -> Set {
        let response = self
            .http
            .get(format!(
                "{}/services/data/{version}/jobs/query/{id}/results{query}",
                self.sim.base_url()
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let locator = header("sforce-locator");
        let number = header("sforce-numberofrecords").map(|n| n.parse().unwrap());
        let text = response.text().await.unwrap();
        if status != 200 {
            return Set {
                status,
                locator,
                number,
                header: vec![text],
                rows: Vec::new(),
            };
        }
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let header = reader.headers().unwrap().iter().map(String::from).collect();
        let rows = reader
            .records()
            .map(|r| r.unwrap().iter().map(String::from).collect())
            .collect();
        Set {
            status,
            locator,
            number,
            header,
            rows,
        }
    }

    /// Reads every result set of a job, following locators; returns the sets' sizes and all rows.
    async fn all_results(&self, id: &str, max: Option<usize>) -> (Vec<usize>, Vec<Vec<String>>) {
        let mut sizes = Vec::new();
        let mut rows = Vec::new();
        let mut locator: Option<String> = None;
        loop {
            let mut query = Vec::new();
            if let Some(locator) = &locator {
                query.push(format!("locator={locator}"));
            }
            if let Some(max) = max {
                query.push(format!("maxRecords={max}"));
            }
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            let set = self.results("v62.0", id, &query).await;
            assert_eq!(set.status, 200, "{:?}", set.header);
            assert_eq!(set.number, Some(set.rows.len()));
            sizes.push(set.rows.len());
            rows.extend(set.rows);
            match set.locator.as_deref() {
                Some("null") => return (sizes, rows),
                Some(next) => locator = Some(next.to_string()),
                None => panic!("a result set without Sforce-Locator"),
            }
        }
    }
}

fn users_csv(range: std::ops::Range<u32>) -> String {
    let mut csv = String::from("Docebo_User_Id__c,Name,Email__c,Active__c,Docebo_Updated_At__c\n");
    for id in range {
        csv.push_str(&format!(
            "{id},User {id},u{id}@acme.example,{},2024-03-20T09:01:02Z\n",
            id % 2 == 0
        ));
    }
    csv
}

#[tokio::test]
async fn query_job_lifecycle_csv_versions_limits_and_deletion() {
    let org = Org::new(Duration::from_millis(150)).await;
    org.ingest("Docebo_User__c", "Docebo_User_Id__c", users_csv(1..4))
        .await;
    org.ingest(
        "Docebo_Course__c",
        "Docebo_Course_Id__c",
        "Docebo_Course_Id__c,Name\n55,Sales\n".into(),
    )
    .await;
    org.ingest(
        "Docebo_Course_Enrollment__c",
        "Enrollment_Key__c",
        "Enrollment_Key__c,Name,Docebo_User__r.Docebo_User_Id__c,Docebo_Course__r.Docebo_Course_Id__c,Status__c,Score__c,Completed_At__c\n\
1-55,\"E1, first\",1,55,Completed,87.5,2024-03-20T09:01:02.000Z\n\
2-55,E2,2,55,In_Progress,,\n\
3-55,E3,3,55,Completed,,2024-03-21T10:00:00Z\n"
            .into(),
    )
    .await;
    org.sim.clear_counters();
    let (used_before, _) = org.sim.api_usage();

    let soql = "SELECT Id, Enrollment_Key__c, Name, Docebo_User__r.Docebo_User_Id__c, Score__c, Completed_At__c FROM Docebo_Course_Enrollment__c WHERE Status__c = 'Completed'";
    let (status, job) = org.create_query("query", soql).await;
    assert_eq!(status, 200, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("750") && id.len() == 18, "{id}");
    assert_eq!(job["state"], "UploadComplete");
    assert_eq!(job["operation"], "query");
    assert_eq!(job["object"], "Docebo_Course_Enrollment__c");
    assert_eq!(job["contentType"], "CSV");
    assert_eq!(job["apiVersion"], 62.0);
    assert_eq!(job["lineEnding"], "LF");
    assert_eq!(job["columnDelimiter"], "COMMA");

    // Results are refused until the job is complete.
    let early = org.results("v62.0", &id, "").await;
    assert_eq!(early.status, 400);
    assert!(
        early.header[0].contains("INVALIDJOBSTATE"),
        "{:?}",
        early.header
    );

    let (states, info) = org.wait(&id).await;
    assert_eq!(states, ["UploadComplete", "InProgress", "JobComplete"]);
    assert_eq!(info["numberRecordsProcessed"], 2);

    let set = org.results("v62.0", &id, "").await;
    assert_eq!(set.status, 200);
    assert_eq!(
        set.header,
        [
            "Id",
            "Enrollment_Key__c",
            "Name",
            "Docebo_User__r.Docebo_User_Id__c",
            "Score__c",
            "Completed_At__c"
        ]
    );
    assert_eq!(set.locator.as_deref(), Some("null"));
    assert_eq!(set.number, Some(2));
    let stored = org.sim.records("Docebo_Course_Enrollment__c").unwrap();
    assert_eq!(
        set.rows,
        [
            vec![
                stored[0]["Id"].as_str().unwrap(),
                "1-55",
                "E1, first",
                "1",
                "87.5",
                "2024-03-20T09:01:02.000Z"
            ],
            vec![
                stored[2]["Id"].as_str().unwrap(),
                "3-55",
                "E3",
                "3",
                "",
                "2024-03-21T10:00:00.000Z"
            ],
        ]
    );

    // Another API version may not read the job.
    let other = org.results("v61.0", &id, "").await;
    assert_eq!(other.status, 409, "{:?}", other.header);
    let (status, _) = org
        .call(
            Method::GET,
            &format!("/services/data/v61.0/jobs/query/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 409);

    // The daily allowance of query jobs shows in /limits.
    let (_, limits) = org.call(Method::GET, &format!("{DATA}/limits"), None).await;
    assert_eq!(limits["DailyBulkV2QueryJobs"]["Max"], 10000);
    assert_eq!(limits["DailyBulkV2QueryJobs"]["Remaining"], 9999);

    let (status, _) = org
        .call(Method::DELETE, &format!("{DATA}/jobs/query/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = org
        .call(Method::GET, &format!("{DATA}/jobs/query/{id}"), None)
        .await;
    assert_eq!(status, 404);

    // Every request was an API call, counted per endpoint.
    let counters = org.sim.counters();
    let calls: u64 = counters
        .iter()
        .filter(|(key, _)| key.contains("/jobs/query") || key.ends_with("/limits"))
        .map(|(_, n)| n)
        .sum();
    let (used_after, _) = org.sim.api_usage();
    assert_eq!(used_after - used_before, calls);
    assert_eq!(counters["POST /services/data/v62.0/jobs/query"], 1);
    assert_eq!(
        counters["GET /services/data/{version}/jobs/query/{id}/results"],
        3
    );
    assert_eq!(
        counters["DELETE /services/data/{version}/jobs/query/{id}"],
        1
    );

    // Calls per object: every call about the job but /limits and the read after its deletion.
    let (_, body) = org
        .call(
            Method::GET,
            &format!("{DATA}/query?q=SELECT+Id+FROM+docebo_user__c"),
            None,
        )
        .await;
    assert_eq!(body["totalSize"], 3);
    let per_object = org.sim.object_calls();
    assert_eq!(per_object["Docebo_Course_Enrollment__c"], calls - 2);
    assert_eq!(per_object["Docebo_User__c"], 1);
    assert_eq!(per_object.len(), 2, "{per_object:?}");
    let over_http: Value = org
        .http
        .get(format!("{}/__sim/object_calls", org.sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http["Docebo_User__c"], 1);
    org.sim.clear_counters();
    assert!(org.sim.object_calls().is_empty());
}

#[tokio::test]
async fn a_large_object_comes_in_locator_sets() {
    let org = Org::new(Duration::from_millis(1)).await;
    let total = 100_000u32;
    org.ingest("Docebo_User__c", "Docebo_User_Id__c", users_csv(0..total))
        .await;
    let (status, job) = org
        .create_query(
            "query",
            "SELECT Id, Docebo_User_Id__c, Active__c, Docebo_Updated_At__c FROM Docebo_User__c",
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let (_, info) = org.wait(&id).await;
    assert_eq!(info["state"], "JobComplete");
    assert_eq!(info["numberRecordsProcessed"], total);

    let (sizes, rows) = org.all_results(&id, Some(30_000)).await;
    assert_eq!(sizes, [30_000, 30_000, 30_000, 10_000]);
    assert_eq!(rows.len(), total as usize);
    let mut keys: Vec<u32> = rows.iter().map(|r| r[1].parse().unwrap()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), total as usize, "every record once");
    assert!(rows.iter().all(|r| r[3] == "2024-03-20T09:01:02.000Z"));
    assert_eq!(rows[7][2], "false");
    assert_eq!(rows[8][2], "true");

    // Without maxRecords the simulator cuts sets of 50,000 rows.
    let (sizes, rows) = org.all_results(&id, None).await;
    assert_eq!(sizes, [50_000, 50_000]);
    assert_eq!(rows.len(), total as usize);

    // A locator that was not issued is refused.
    assert_eq!(
        org.results("v62.0", &id, "?locator=%21%21").await.status,
        400
    );
    assert_eq!(org.results("v62.0", &id, "?maxRecords=0").await.status, 400);
}

#[tokio::test]
async fn results_are_the_org_when_the_job_completes_and_query_all_reads_the_recycle_bin() {
    let org = Org::new(Duration::from_millis(300)).await;
    org.ingest("Docebo_User__c", "Docebo_User_Id__c", users_csv(1..6))
        .await;
    let users = org.sim.records("Docebo_User__c").unwrap();
    let soql = "SELECT Id, Docebo_User_Id__c, Name FROM Docebo_User__c";
    let (_, job) = org.create_query("query", soql).await;
    let id = job["id"].as_str().unwrap().to_string();
    let (_, all_job) = org
        .create_query(
            "queryAll",
            "SELECT Id, Docebo_User_Id__c, Name, IsDeleted FROM Docebo_User__c",
        )
        .await;
    let all_id = all_job["id"].as_str().unwrap().to_string();
    assert_eq!(all_job["operation"], "queryAll");

    // While the jobs wait, someone deletes user 2 and renames user 3.
    let user2 = users[1]["Id"].as_str().unwrap();
    let user3 = users[2]["Id"].as_str().unwrap();
    let (status, _) = org
        .call(
            Method::DELETE,
            &format!("{DATA}/sobjects/Docebo_User__c/{user2}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = org
        .call(
            Method::PATCH,
            &format!("{DATA}/sobjects/Docebo_User__c/{user3}"),
            Some(json!({"Name": "Renamed"})),
        )
        .await;
    assert_eq!(status, 204);

    let (_, info) = org.wait(&id).await;
    assert_eq!(info["state"], "JobComplete");
    let (_, rows) = org.all_results(&id, None).await;
    let keys: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(keys, ["1", "3", "4", "5"]);
    assert_eq!(rows[1][2], "Renamed");

    let (_, info) = org.wait(&all_id).await;
    assert_eq!(info["state"], "JobComplete");
    let (_, rows) = org.all_results(&all_id, None).await;
    let mut keys: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["1", "2", "3", "4", "5"],
        "queryAll sees the deleted user"
    );
    let deleted: Vec<&str> = rows
        .iter()
        .filter(|r| r[3] == "true")
        .map(|r| r[1].as_str())
        .collect();
    assert_eq!(deleted, ["2"]);
    assert_eq!(rows.iter().filter(|r| r[3] == "false").count(), 4);

    // REST: /queryAll reads the recycle bin too, /query does not.
    let soql = "SELECT+Docebo_User_Id__c,IsDeleted+FROM+Docebo_User__c+WHERE+IsDeleted+=+true";
    let (_, body) = org
        .call(Method::GET, &format!("{DATA}/queryAll?q={soql}"), None)
        .await;
    assert_eq!(body["totalSize"], 1, "{body}");
    assert_eq!(body["records"][0]["Docebo_User_Id__c"], "2");
    assert_eq!(body["records"][0]["IsDeleted"], true);
    let (_, body) = org
        .call(Method::GET, &format!("{DATA}/query?q={soql}"), None)
        .await;
    assert_eq!(body["totalSize"], 0, "{body}");
}

#[tokio::test]
async fn bad_query_jobs_are_refused_or_fail() {
    let org = Org::new(Duration::from_millis(1)).await;
    let (status, body) = org
        .create_query("upsert", "SELECT Id FROM Docebo_User__c")
        .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALIDJOB");
    let (status, body) = org
        .create_query("query", "SELECT Nope__c FROM Docebo_User__c")
        .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALID_FIELD");
    let (status, body) = org.create_query("query", "").await;
    assert_eq!(status, 400, "{body}");

    // Aggregates are not served by query jobs: the job fails with a message.
    let (status, job) = org
        .create_query("query", "SELECT COUNT() FROM Docebo_User__c")
        .await;
    assert_eq!(status, 200);
    let (_, info) = org.wait(job["id"].as_str().unwrap()).await;
    assert_eq!(info["state"], "Failed");
    assert!(
        info["errorMessage"].as_str().unwrap().contains("Aggregate"),
        "{info}"
    );
    let (status, _) = org
        .call(
            Method::GET,
            &format!("{DATA}/jobs/query/750000000000000AAA"),
            None,
        )
        .await;
    assert_eq!(status, 404);
}
