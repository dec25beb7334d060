// Proves that records written the way the sync writes them (sObject Collections upsert and Bulk API 2.0
// ingest, by external id) can be edited and deleted by someone else through the ordinary REST API
// (PATCH and DELETE of one sObject by id, sObject Collections delete), that the control API lists
// them with their values (filtered by field), and that upserting again restores them.
#![allow(clippy::unwrap_used)]

mod common;

use common::{DATA, client, sf_call, sf_token};
use learnsync_sim::{SalesforceConfig, SalesforceSim};
use reqwest::Method;
use serde_json::{Value, json};

fn enrollment(user: u32, course: u32, score: f64) -> Value {
    json!({"attributes": {"type": "Docebo_Course_Enrollment__c"},
           "Enrollment_Key__c": format!("{user}-{course}"), "Name": format!("{user}-{course}"),
           "Docebo_User__r": {"Docebo_User_Id__c": user.to_string()},
           "Docebo_Course__r": {"Docebo_Course_Id__c": course.to_string()},
           "Status__c": "Completed", "Score__c": score})
}

struct Org {
    sim: SalesforceSim,
    http: reqwest::Client,
    token: String,
}

impl Org {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, body) =
            sf_call(&self.http, &self.sim, &self.token, method, path, body).await;
        (status, body)
    }

    async fn upsert(&self, object: &str, field: &str, records: Vec<Value>) -> Value {
        let (status, body) = self
            .call(
                Method::PATCH,
                &format!("{DATA}/composite/sobjects/{object}/{field}"),
                Some(json!({"allOrNone": false, "records": records})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Reads records back through the control API, filtered by `query` (`?Field=value&...`).
    async fn control_records(&self, object: &str, query: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!(
                "{}/__sim/records/{object}{query}",
                self.sim.base_url()
            ))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }
}

#[tokio::test]
async fn someone_else_edits_and_deletes_what_the_sync_wrote() {
    let sim = SalesforceSim::start(SalesforceConfig::default())
        .await
        .unwrap();
    let http = client();
    let token = sf_token(&http, &sim).await;
    let org = Org { sim, http, token };

    // What the sync writes: parents, then 6 enrollments by external id.
    let users: Vec<Value> = (1..=3)
        .map(|id| json!({"attributes": {"type": "Docebo_User__c"}, "Docebo_User_Id__c": id.to_string(), "Name": format!("User {id}")}))
        .collect();
    org.upsert("Docebo_User__c", "Docebo_User_Id__c", users)
        .await;
    let courses: Vec<Value> = (1..=2)
        .map(|id| json!({"attributes": {"type": "Docebo_Course__c"}, "Docebo_Course_Id__c": id.to_string(), "Name": format!("Course {id}")}))
        .collect();
    org.upsert("Docebo_Course__c", "Docebo_Course_Id__c", courses)
        .await;
    let written: Vec<Value> = (1..=3)
        .flat_map(|user| (1..=2).map(move |course| enrollment(user, course, 80.0)))
        .collect();
    let results = org
        .upsert(
            "Docebo_Course_Enrollment__c",
            "Enrollment_Key__c",
            written.clone(),
        )
        .await;
    let ids: Vec<String> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 6);

    org.sim.clear_counters();
    // The admin edits one record's status and score, and another's lookup to a different user.
    let (status, body) = org
        .call(
            Method::PATCH,
            &format!("{DATA}/sobjects/Docebo_Course_Enrollment__c/{}", ids[0]),
            Some(json!({"Status__c": "In_Progress", "Score__c": null})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let user3 = org
        .sim
        .record_by_external_id("Docebo_User__c", "Docebo_User_Id__c", "3")
        .unwrap()["Id"]
        .clone();
    let (status, _) = org
        .call(
            Method::PATCH,
            &format!("{DATA}/sobjects/Docebo_Course_Enrollment__c/{}", ids[1]),
            Some(json!({"Docebo_User__c": user3})),
        )
        .await;
    assert_eq!(status, 204);
    // ... deletes one by id, and two more with sObject Collections.
    let (status, _) = org
        .call(
            Method::DELETE,
            &format!("{DATA}/sobjects/Docebo_Course_Enrollment__c/{}", ids[2]),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = org
        .call(
            Method::DELETE,
            &format!("{DATA}/composite/sobjects?ids={},{}", ids[3], ids[4]),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        body.as_array()
            .unwrap()
            .iter()
            .all(|r| r["success"] == true),
        "{body}"
    );
    // Two PATCHes and two DELETEs, each counted against the object it changed.
    assert_eq!(
        org.sim.object_calls()["Docebo_Course_Enrollment__c"],
        4,
        "{:?}",
        org.sim.object_calls()
    );

    // The control API shows what the org now holds, with values, filterable by field and id.
    let (status, all) = org.control_records("Docebo_Course_Enrollment__c", "").await;
    assert_eq!(status, 200);
    let keys: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Enrollment_Key__c"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["1-1", "1-2", "3-2"]);
    let (_, edited) = org
        .control_records("Docebo_Course_Enrollment__c", "?Enrollment_Key__c=1-1")
        .await;
    assert_eq!(edited.as_array().unwrap().len(), 1);
    assert_eq!(edited[0]["Status__c"], "In_Progress");
    assert_eq!(edited[0]["Score__c"], Value::Null);
    let (_, moved) = org
        .control_records(
            "Docebo_Course_Enrollment__c",
            &format!("?Id={}&Docebo_User__c={}", ids[1], user3.as_str().unwrap()),
        )
        .await;
    assert_eq!(moved[0]["Enrollment_Key__c"], "1-2");
    let (_, none) = org
        .control_records("Docebo_Course_Enrollment__c", "?Status__c=Cancelled")
        .await;
    assert_eq!(none, json!([]));
    let (status, _) = org
        .control_records("Docebo_Course_Enrollment__c", "?Nope__c=1")
        .await;
    assert_eq!(status, 400);

    // Deleted records are gone for reads by id; SOQL counts what is left.
    let (status, body) = org
        .call(
            Method::GET,
            &format!("{DATA}/sobjects/Docebo_Course_Enrollment__c/{}", ids[2]),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (_, body) = org
        .call(
            Method::GET,
            &format!("{DATA}/query?q=SELECT+COUNT()+FROM+Docebo_Course_Enrollment__c"),
            None,
        )
        .await;
    assert_eq!(body["totalSize"], 3);

    // Upserting what the sync wrote puts it back: the edited records are updated in place, the
    // deleted ones created again with new ids.
    let results = org
        .upsert("Docebo_Course_Enrollment__c", "Enrollment_Key__c", written)
        .await;
    let created: Vec<bool> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["created"].as_bool().unwrap())
        .collect();
    assert_eq!(created, [false, false, true, true, true, false]);
    assert_eq!(results[0]["id"], ids[0].as_str());
    assert_ne!(results[2]["id"], ids[2].as_str());
    let (_, all) = org.control_records("Docebo_Course_Enrollment__c", "").await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 6);
    assert!(
        all.iter()
            .all(|r| r["Status__c"] == "Completed" && r["Score__c"] == 80.0)
    );
    let (_, restored) = org
        .control_records("Docebo_Course_Enrollment__c", "?Enrollment_Key__c=1-2")
        .await;
    let user1 = org
        .sim
        .record_by_external_id("Docebo_User__c", "Docebo_User_Id__c", "1")
        .unwrap()["Id"]
        .clone();
    assert_eq!(restored[0]["Docebo_User__c"], user1);
}
