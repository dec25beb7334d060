// Proves the Bulk API 2.0 ingest lifecycle: job creation, CSV upload (sized and chunked, with its limit), close, abort, background processing, results CSVs with sf__Error, #N/A and empty cells, relationship columns, and every operation.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{DATA, client, sf_call, sf_token};
use learnsync_sim::{Faults, SalesforceConfig, SalesforceSim};
use reqwest::Method;
use serde_json::{Value, json};

struct Bulk {
    sim: SalesforceSim,
    http: reqwest::Client,
    token: String,
}

impl Bulk {
    async fn new(config: SalesforceConfig) -> Bulk {
        let sim = SalesforceSim::start(config).await.unwrap();
        let http = client();
        let token = sf_token(&http, &sim).await;
        Bulk { sim, http, token }
    }

    async fn create(&self, body: Value) -> (u16, Value) {
        let (status, _, body) = sf_call(
            &self.http,
            &self.sim,
            &self.token,
            Method::POST,
            &format!("{DATA}/jobs/ingest"),
            Some(body),
        )
        .await;
        (status, body)
    }

    async fn upload(&self, id: &str, csv: &str) -> u16 {
        self.http
            .put(format!(
                "{}{DATA}/jobs/ingest/{id}/batches",
                self.sim.base_url()
            ))
            .bearer_auth(&self.token)
            .header("content-type", "text/csv")
            .body(csv.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn set_state(&self, id: &str, state: &str) -> (u16, Value) {
        let (status, _, body) = sf_call(
            &self.http,
            &self.sim,
            &self.token,
            Method::PATCH,
            &format!("{DATA}/jobs/ingest/{id}"),
            Some(json!({"state": state})),
        )
        .await;
        (status, body)
    }

    async fn info(&self, id: &str) -> Value {
        sf_call(
            &self.http,
            &self.sim,
            &self.token,
            Method::GET,
            &format!("{DATA}/jobs/ingest/{id}"),
            None,
        )
        .await
        .2
    }

    async fn wait(&self, id: &str) -> Value {
        for _ in 0..1000 {
            let info = self.info(id).await;
            if ["JobComplete", "Failed", "Aborted"].contains(&info["state"].as_str().unwrap()) {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} did not finish");
    }

    async fn results(&self, id: &str, kind: &str) -> Vec<Vec<String>> {
        let text = self
            .http
            .get(format!(
                "{}{DATA}/jobs/ingest/{id}/{kind}/",
                self.sim.base_url()
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        csv::Reader::from_reader(text.as_bytes())
            .into_records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect()
    }

    async fn header(&self, id: &str, kind: &str) -> Vec<String> {
        let text = self
            .http
            .get(format!(
                "{}{DATA}/jobs/ingest/{id}/{kind}",
                self.sim.base_url()
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::to_string)
            .collect()
    }

    /// Runs a whole job and returns its final info.
    async fn run(&self, job: Value, csv: &str) -> (String, Value) {
        let (status, info) = self.create(job).await;
        assert_eq!(status, 200, "{info}");
        let id = info["id"].as_str().unwrap().to_string();
        assert_eq!(self.upload(&id, csv).await, 201);
        let (status, _) = self.set_state(&id, "UploadComplete").await;
        assert_eq!(status, 200);
        let info = self.wait(&id).await;
        (id, info)
    }
}

const USERS_CSV: &str = "Docebo_User_Id__c,Name,Email__c,First_Name__c,Active__c,Docebo_Updated_At__c\n\
1,User One,one@acme.example,Zoë,true,2024-03-20T09:01:02.000Z\n\
2,User Two,two@acme.example,\"Quoted, Name\",false,2024-03-20T09:01:02Z\n\
3,User Three,three@acme.example,Third,true,2024-03-21T10:00:00.000Z\n";

fn upsert_job(object: &str, field: &str) -> Value {
    json!({"object": object, "operation": "upsert", "externalIdFieldName": field, "contentType": "CSV", "columnDelimiter": "COMMA", "lineEnding": "LF"})
}

#[tokio::test]
async fn upsert_lifecycle_with_failures_and_results() {
    let bulk = Bulk::new(SalesforceConfig::default()).await;
    let (status, info) = bulk
        .create(upsert_job("Docebo_User__c", "Docebo_User_Id__c"))
        .await;
    assert_eq!(status, 200);
    let id = info["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("750"));
    assert_eq!(id.len(), 18);
    assert_eq!(info["state"], "Open");
    assert_eq!(
        info["contentUrl"],
        format!("services/data/v62.0/jobs/ingest/{id}/batches")
    );
    assert_eq!(info["object"], "Docebo_User__c");
    assert_eq!(info["operation"], "upsert");
    assert_eq!(info["apiVersion"], 62.0);
    assert_eq!(bulk.upload(&id, USERS_CSV).await, 201);
    let (_, info) = bulk.set_state(&id, "UploadComplete").await;
    assert_eq!(info["state"], "UploadComplete");
    let info = bulk.wait(&id).await;
    assert_eq!(info["state"], "JobComplete");
    assert_eq!(info["numberRecordsProcessed"], 3);
    assert_eq!(info["numberRecordsFailed"], 0);

    let users = bulk.sim.records("Docebo_User__c").unwrap();
    assert_eq!(users.len(), 3);
    assert_eq!(users[1]["First_Name__c"], "Quoted, Name");
    assert_eq!(users[1]["Active__c"], false);
    assert_eq!(
        users[1]["Docebo_Updated_At__c"],
        "2024-03-20T09:01:02.000+0000"
    );

    // Children with relationship columns; failures of several kinds; #N/A and empty cells.
    bulk.run(upsert_job("Docebo_Course__c", "Docebo_Course_Id__c"), "Docebo_Course_Id__c,Name,Type__c,Start_Date__c,Credits__c\n55,Sales,Elearning,2024-01-31,2.5\n").await;
    let csv = "Enrollment_Key__c,Name,Docebo_User__r.Docebo_User_Id__c,Docebo_Course__r.Docebo_Course_Id__c,Status__c,Score__c,Completed_At__c\n\
1-55,E1,1,55,Completed,87,2024-03-20T09:01:02.000Z\n\
2-55,E2,2,55,In_Progress,,\n\
12301-55,E3,12301,55,Completed,10,\n\
3-55,E4,3,55,pending_review,1,\n\
3-56,E5,3,56,Completed,1,\n\
1-55,dup,1,55,Completed,1,\n";
    let (id, info) = bulk
        .run(
            upsert_job("Docebo_Course_Enrollment__c", "Enrollment_Key__c"),
            csv,
        )
        .await;
    assert_eq!(info["numberRecordsProcessed"], 6);
    assert_eq!(info["numberRecordsFailed"], 5, "{info}");
    let header = bulk.header(&id, "failedResults").await;
    assert_eq!(header[0], "\"sf__Id\"");
    assert_eq!(header[1], "\"sf__Error\"");
    let failed = bulk.results(&id, "failedResults").await;
    assert_eq!(failed.len(), 5);
    let error_of = |key: &str| {
        failed
            .iter()
            .filter(|r| r[2] == key)
            .map(|r| r[1].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        error_of("12301-55"),
        [
            "INVALID_FIELD:Foreign key external ID: 12301 not found for field Docebo_User_Id__c in entity Docebo_User__c:--"
        ]
    );
    assert_eq!(
        error_of("3-55"),
        [
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST:Status__c: bad value for restricted picklist field: pending_review:Status__c --"
        ]
    );
    assert!(error_of("3-56")[0].starts_with("INVALID_FIELD:Foreign key external ID: 56 not found"));
    assert_eq!(error_of("1-55").len(), 2);
    assert!(error_of("1-55")[0].starts_with("DUPLICATE_EXTERNAL_ID:"));
    let succeeded = bulk.results(&id, "successfulResults").await;
    assert_eq!(
        bulk.header(&id, "successfulResults").await[..2],
        ["\"sf__Id\"", "\"sf__Created\""]
    );
    assert_eq!(succeeded.len(), 1);
    assert_eq!(succeeded[0][1], "true");
    assert!(succeeded[0][0].starts_with("a05"));
    assert_eq!(succeeded[0][2], "2-55");
    let unprocessed = bulk.results(&id, "unprocessedrecords").await;
    assert!(unprocessed.is_empty());

    // An update: an empty cell leaves a field unchanged, #N/A nulls it.
    let csv = "Docebo_User_Id__c,Name,First_Name__c,Email__c\n1,,#N/A,\n";
    let (id, info) = bulk
        .run(upsert_job("Docebo_User__c", "Docebo_User_Id__c"), csv)
        .await;
    assert_eq!(info["numberRecordsFailed"], 0);
    let succeeded = bulk.results(&id, "successfulResults").await;
    assert_eq!(succeeded[0][1], "false", "updated, not created");
    let user = &bulk.sim.records("Docebo_User__c").unwrap()[0];
    assert_eq!(user["Name"], "User One");
    assert_eq!(user["First_Name__c"], Value::Null);
    assert_eq!(user["Email__c"], "one@acme.example");
    // Nulling a required field fails.
    let (id, info) = bulk
        .run(
            upsert_job("Docebo_User__c", "Docebo_User_Id__c"),
            "Docebo_User_Id__c,Name\n1,#N/A\n",
        )
        .await;
    assert_eq!(info["numberRecordsFailed"], 1);
    assert_eq!(
        bulk.results(&id, "failedResults").await[0][1],
        "REQUIRED_FIELD_MISSING:Required fields are missing: [Name]:Name --"
    );
}

#[tokio::test]
async fn insert_update_delete_and_hard_delete() {
    let bulk = Bulk::new(SalesforceConfig::default()).await;
    let insert = json!({"object": "Docebo_Course__c", "operation": "insert"});
    let (id, info) = bulk.run(insert.clone(), "Docebo_Course_Id__c,Name,Type__c,Credits__c,Start_Date__c\n1,A,Classroom,1,2024-02-01\n2,B,Webinar,abc,2024-02-01\n3,C,Webinar,1,2024-02-30\n").await;
    assert_eq!(info["numberRecordsProcessed"], 3);
    assert_eq!(info["numberRecordsFailed"], 2);
    let failed = bulk.results(&id, "failedResults").await;
    assert!(
        failed
            .iter()
            .all(|r| r[1].starts_with("INVALID_TYPE_ON_FIELD_IN_RECORD:")),
        "{failed:?}"
    );
    // Inserting an existing unique external id fails.
    let (id, _) = bulk
        .run(insert, "Docebo_Course_Id__c,Name\n1,Again\n")
        .await;
    assert!(bulk.results(&id, "failedResults").await[0][1].starts_with("DUPLICATE_VALUE:"));

    let course_id = bulk.sim.records("Docebo_Course__c").unwrap()[0]["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, info) = bulk
        .run(
            json!({"object": "Docebo_Course__c", "operation": "update"}),
            &format!("Id,Name\n{course_id},Renamed\n"),
        )
        .await;
    assert_eq!(info["numberRecordsFailed"], 0);
    assert_eq!(
        bulk.sim.records("Docebo_Course__c").unwrap()[0]["Name"],
        "Renamed"
    );

    let (id, info) = bulk
        .run(
            json!({"object": "Docebo_Course__c", "operation": "delete"}),
            &format!("Id\n{course_id}\n"),
        )
        .await;
    assert_eq!(info["numberRecordsFailed"], 0);
    assert_eq!(
        bulk.results(&id, "successfulResults").await[0][0],
        course_id
    );
    assert_eq!(bulk.sim.record_count("Docebo_Course__c"), 0);
    let (id, info) = bulk
        .run(
            json!({"object": "Docebo_Course__c", "operation": "delete"}),
            &format!("Id\n{course_id}\n"),
        )
        .await;
    assert_eq!(info["numberRecordsFailed"], 1);
    assert_eq!(
        bulk.results(&id, "failedResults").await[0][1],
        "ENTITY_IS_DELETED:entity is deleted:--"
    );

    let (_, info) = bulk
        .run(
            json!({"object": "Docebo_Course__c", "operation": "insert"}),
            "Docebo_Course_Id__c,Name\n9,Nine\n",
        )
        .await;
    assert_eq!(info["numberRecordsFailed"], 0);
    let nine = bulk.sim.records("Docebo_Course__c").unwrap()[0]["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, info) = bulk
        .run(
            json!({"object": "Docebo_Course__c", "operation": "hardDelete"}),
            &format!("Id\n{nine}\n"),
        )
        .await;
    assert_eq!(info["numberRecordsFailed"], 0);
    assert_eq!(info["operation"], "hardDelete");
    assert_eq!(bulk.sim.record_count("Docebo_Course__c"), 0);
}

#[tokio::test]
async fn job_errors_abort_and_unprocessed_records() {
    let bulk = Bulk::new(SalesforceConfig {
        max_upload_bytes: 1000,
        ..SalesforceConfig::default()
    })
    .await;
    let (status, body) = bulk
        .create(json!({"object": "Nope__c", "operation": "insert"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALIDJOB");
    let (status, _) = bulk
        .create(json!({"object": "Docebo_User__c", "operation": "merge"}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = bulk
        .create(json!({"object": "Docebo_User__c", "operation": "upsert"}))
        .await;
    assert_eq!(status, 400);

    // An unknown column fails the whole job.
    let (_, info) = bulk
        .run(
            upsert_job("Docebo_User__c", "Docebo_User_Id__c"),
            "Docebo_User_Id__c,Nope__c\n1,x\n",
        )
        .await;
    assert_eq!(info["state"], "Failed");
    assert_eq!(
        info["errorMessage"],
        "InvalidBatch : Field name not found : Nope__c"
    );

    // Upload limit, with and without Content-Length.
    let (_, info) = bulk
        .create(upsert_job("Docebo_User__c", "Docebo_User_Id__c"))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    let big = format!("Docebo_User_Id__c,Name\n{}", "1,x\n".repeat(300));
    assert_eq!(bulk.upload(&id, &big).await, 413);
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(big.clone().into_bytes())]);
    let response = bulk
        .http
        .put(format!(
            "{}{DATA}/jobs/ingest/{id}/batches",
            bulk.sim.base_url()
        ))
        .bearer_auth(&bulk.token)
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // A chunked upload within the limit is accepted.
    let small = "Docebo_User_Id__c,Name\n1,One\n2,Two\n";
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        small.as_bytes().chunks(7).map(|c| Ok(c.to_vec())).collect();
    let response = bulk
        .http
        .put(format!(
            "{}{DATA}/jobs/ingest/{id}/batches",
            bulk.sim.base_url()
        ))
        .bearer_auth(&bulk.token)
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert!(
        response
            .headers()
            .get("content-length")
            .is_none_or(|v| v == "0")
    );
    // Only one upload per job.
    assert_eq!(bulk.upload(&id, small).await, 400);

    // Abort before closing: nothing is processed, everything is unprocessed.
    let (status, info) = bulk.set_state(&id, "Aborted").await;
    assert_eq!(status, 200);
    assert_eq!(info["state"], "Aborted");
    let (status, body) = bulk.set_state(&id, "UploadComplete").await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALIDJOBSTATE");
    let unprocessed = bulk.results(&id, "unprocessedRecords").await;
    assert_eq!(unprocessed.len(), 2);
    assert_eq!(unprocessed[0], ["1", "One"]);
    assert_eq!(bulk.sim.record_count("Docebo_User__c"), 0);

    // Jobs can be deleted once finished.
    let (status, _, _) = sf_call(
        &bulk.http,
        &bulk.sim,
        &bulk.token,
        Method::DELETE,
        &format!("{DATA}/jobs/ingest/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _, _) = sf_call(
        &bulk.http,
        &bulk.sim,
        &bulk.token,
        Method::GET,
        &format!("{DATA}/jobs/ingest/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn lock_row_fault_and_large_job_in_batches() {
    let bulk = Bulk::new(SalesforceConfig::default()).await;
    bulk.sim.set_faults(Faults {
        lock_row_share: 1.0,
        ..Faults::default()
    });
    let (id, info) = bulk
        .run(upsert_job("Docebo_User__c", "Docebo_User_Id__c"), USERS_CSV)
        .await;
    assert_eq!(info["numberRecordsFailed"], 3);
    assert!(bulk.results(&id, "failedResults").await[0][1].starts_with("UNABLE_TO_LOCK_ROW:"));
    bulk.sim.clear_faults();

    // 25,000 rows: three internal batches, all written.
    let mut csv = String::from("Docebo_User_Id__c,Name,Active__c\n");
    for i in 0..25_000 {
        csv.push_str(&format!("{i},User {i},true\n"));
    }
    let (id, info) = bulk
        .run(upsert_job("Docebo_User__c", "Docebo_User_Id__c"), &csv)
        .await;
    assert_eq!(info["numberRecordsProcessed"], 25_000);
    assert_eq!(info["numberRecordsFailed"], 0);
    assert_eq!(bulk.sim.record_count("Docebo_User__c"), 25_000);
    assert_eq!(bulk.results(&id, "successfulResults").await.len(), 25_000);
}
