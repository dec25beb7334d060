// Proves Salesforce REST: sObject Collections upsert/delete with every validation error code, allOrNone, single-record upsert, SOQL with paging, describe, ids, reading the org back, and writes held in flight until released.
#![allow(clippy::unwrap_used)]

mod common;

use common::{DATA, client, sf_call, sf_token};
use learnsync_sim::salesforce::{case_safe_suffix, normalize_id};
use learnsync_sim::{Faults, SalesforceConfig, SalesforceSim};
use reqwest::Method;
use serde_json::{Value, json};

async fn setup() -> (SalesforceSim, reqwest::Client, String) {
    let sim = SalesforceSim::start(SalesforceConfig::default())
        .await
        .unwrap();
    let http = client();
    let token = sf_token(&http, &sim).await;
    (sim, http, token)
}

fn user(id: u32) -> Value {
    json!({"attributes": {"type": "Docebo_User__c"}, "Docebo_User_Id__c": id.to_string(), "Name": format!("User {id}"),
           "Email__c": format!("u{id}@acme.example"), "First_Name__c": "Zoë", "Active__c": true,
           "Docebo_Updated_At__c": "2024-03-20T09:01:02Z"})
}

fn course(id: u32) -> Value {
    json!({"attributes": {"type": "Docebo_Course__c"}, "Docebo_Course_Id__c": id.to_string(), "Name": format!("Course {id}"),
           "Type__c": "Elearning", "Credits__c": 1.5, "Start_Date__c": "2024-01-31"})
}

fn enrollment(user: u32, course: u32) -> Value {
    json!({"attributes": {"type": "Docebo_Course_Enrollment__c"}, "Enrollment_Key__c": format!("{user}-{course}"),
           "Name": format!("{user}-{course}"),
           "Docebo_User__r": {"Docebo_User_Id__c": user.to_string()},
           "Docebo_Course__r": {"Docebo_Course_Id__c": course.to_string()},
           "Status__c": "Completed", "Completed_At__c": "2024-03-20T09:01:02Z", "Score__c": 87})
}

async fn upsert(
    sim: &SalesforceSim,
    http: &reqwest::Client,
    token: &str,
    object: &str,
    field: &str,
    all_or_none: bool,
    records: Vec<Value>,
) -> (u16, Value) {
    let (status, _, body) = sf_call(
        http,
        sim,
        token,
        Method::PATCH,
        &format!("{DATA}/composite/sobjects/{object}/{field}"),
        Some(json!({"allOrNone": all_or_none, "records": records})),
    )
    .await;
    (status, body)
}

fn is_valid_id(id: &str, prefix: &str) -> bool {
    id.len() == 18 && id.starts_with(prefix) && case_safe_suffix(&id[..15]) == id[15..]
}

#[tokio::test]
async fn collections_upsert_creates_then_updates_in_order() {
    let (sim, http, token) = setup().await;
    let (status, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        vec![user(1), user(2)],
    )
    .await;
    assert_eq!(status, 200);
    let results = body.as_array().unwrap();
    assert_eq!(results.len(), 2);
    for result in results {
        assert_eq!(result["success"], true);
        assert_eq!(result["created"], true);
        assert_eq!(result["errors"], json!([]));
        assert!(is_valid_id(result["id"].as_str().unwrap(), "a01"));
    }
    let first_id = results[0]["id"].as_str().unwrap().to_string();
    let mut changed = user(1);
    changed["Name"] = json!("Renamed");
    let (_, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        vec![user(3), changed],
    )
    .await;
    assert_eq!(body[0]["created"], true);
    assert_eq!(body[1]["created"], false);
    assert_eq!(body[1]["id"], first_id.as_str());

    let records = sim.records("Docebo_User__c").unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["Id"], first_id.as_str());
    assert_eq!(records[0]["Name"], "Renamed");
    assert_eq!(records[0]["First_Name__c"], "Zoë");
    assert_eq!(records[0]["Active__c"], true);
    assert_eq!(
        records[0]["Docebo_Updated_At__c"],
        "2024-03-20T09:01:02.000+0000"
    );
    assert_eq!(sim.record_count("Docebo_User__c"), 3);
    assert_eq!(sim.record_counts()["Docebo_User__c"], 3);
    assert_eq!(
        sim.record_by_external_id("Docebo_User__c", "Docebo_User_Id__c", "1")
            .unwrap()["Id"],
        first_id.as_str()
    );
    assert!(
        sim.record_by_external_id("Docebo_User__c", "Docebo_User_Id__c", "404")
            .is_none()
    );

    // The same through the control API.
    let via_http: Value = http
        .get(format!("{}/__sim/records/Docebo_User__c", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(via_http.as_array().unwrap().len(), 3);
    assert_eq!(via_http[0]["Docebo_User_Id__c"], "1");

    // Lookups by external id resolve to the parent's id.
    upsert(
        &sim,
        &http,
        &token,
        "Docebo_Course__c",
        "Docebo_Course_Id__c",
        false,
        vec![course(55)],
    )
    .await;
    let (_, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_Course_Enrollment__c",
        "Enrollment_Key__c",
        false,
        vec![enrollment(1, 55)],
    )
    .await;
    assert_eq!(body[0]["success"], true, "{body}");
    assert!(is_valid_id(body[0]["id"].as_str().unwrap(), "a05"));
    let enrollment_record = &sim.records("Docebo_Course_Enrollment__c").unwrap()[0];
    assert_eq!(enrollment_record["Docebo_User__c"], first_id.as_str());
    assert_eq!(enrollment_record["Score__c"], 87.0);
}

#[tokio::test]
async fn per_record_validation_errors() {
    let (sim, http, token) = setup().await;
    upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        vec![user(1)],
    )
    .await;
    upsert(
        &sim,
        &http,
        &token,
        "Docebo_Course__c",
        "Docebo_Course_Id__c",
        false,
        vec![course(55)],
    )
    .await;

    let mut missing_status = enrollment(1, 55);
    missing_status.as_object_mut().unwrap().remove("Status__c");
    let mut too_long = enrollment(1, 56);
    too_long["Docebo_Course__r"] = json!({"Docebo_Course_Id__c": "55"});
    too_long["Name"] = json!("x".repeat(81));
    let mut bad_picklist = enrollment(1, 57);
    bad_picklist["Docebo_Course__r"] = json!({"Docebo_Course_Id__c": "55"});
    bad_picklist["Status__c"] = json!("pending_review");
    let mut bad_type = enrollment(1, 58);
    bad_type["Docebo_Course__r"] = json!({"Docebo_Course_Id__c": "55"});
    bad_type["Completed_At__c"] = json!("2024-03-20 09:01:02");
    let missing_parent = enrollment(12301, 55);
    let mut bad_number = enrollment(1, 59);
    bad_number["Docebo_Course__r"] = json!({"Docebo_Course_Id__c": "55"});
    bad_number["Score__c"] = json!(123456.0);
    let mut fine = enrollment(1, 60);
    fine["Docebo_Course__r"] = json!({"Docebo_Course_Id__c": "55"});

    let (status, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_Course_Enrollment__c",
        "Enrollment_Key__c",
        false,
        vec![
            missing_status,
            too_long,
            bad_picklist,
            bad_type,
            missing_parent,
            bad_number,
            fine,
        ],
    )
    .await;
    assert_eq!(status, 200);
    let results = body.as_array().unwrap();
    let error = |i: usize| &results[i]["errors"][0];
    assert_eq!(results[0]["success"], false);
    assert_eq!(error(0)["statusCode"], "REQUIRED_FIELD_MISSING");
    assert_eq!(error(0)["fields"], json!(["Status__c"]));
    assert_eq!(error(1)["statusCode"], "STRING_TOO_LONG");
    assert_eq!(error(1)["fields"], json!(["Name"]));
    assert_eq!(
        error(2)["statusCode"],
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    );
    assert_eq!(error(2)["fields"], json!(["Status__c"]));
    assert_eq!(error(3)["statusCode"], "INVALID_TYPE_ON_FIELD_IN_RECORD");
    assert_eq!(error(3)["fields"], json!(["Completed_At__c"]));
    assert_eq!(error(4)["statusCode"], "INVALID_FIELD");
    assert_eq!(
        error(4)["message"],
        "Foreign key external ID: 12301 not found for field Docebo_User_Id__c in entity Docebo_User__c"
    );
    assert_eq!(error(5)["statusCode"], "NUMBER_OUTSIDE_VALID_RANGE");
    assert_eq!(results[6]["success"], true);
    assert_eq!(sim.record_count("Docebo_Course_Enrollment__c"), 1);

    // A bad email.
    let mut bad_email = user(2);
    bad_email["Email__c"] = json!("not an email");
    let (_, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        vec![bad_email],
    )
    .await;
    assert_eq!(body[0]["errors"][0]["statusCode"], "INVALID_EMAIL_ADDRESS");
    // A missing external id value.
    let mut no_key = user(3);
    no_key.as_object_mut().unwrap().remove("Docebo_User_Id__c");
    let (_, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        vec![no_key],
    )
    .await;
    assert_eq!(body[0]["success"], false);
    assert_eq!(body[0]["errors"][0]["statusCode"], "MISSING_ARGUMENT");
}

#[tokio::test]
async fn duplicates_all_or_none_and_request_level_errors() {
    let (sim, http, token) = setup().await;
    let (_, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        vec![user(1), user(2), user(1)],
    )
    .await;
    assert_eq!(body[0]["errors"][0]["statusCode"], "DUPLICATE_EXTERNAL_ID");
    assert_eq!(body[2]["errors"][0]["statusCode"], "DUPLICATE_EXTERNAL_ID");
    assert_eq!(body[1]["success"], true);
    assert_eq!(sim.record_count("Docebo_User__c"), 1);

    let mut bad = user(4);
    bad["Name"] = json!("y".repeat(100));
    let (_, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        true,
        vec![user(3), bad],
    )
    .await;
    assert_eq!(body[0]["success"], false);
    assert_eq!(
        body[0]["errors"][0]["statusCode"],
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert_eq!(body[1]["errors"][0]["statusCode"], "STRING_TOO_LONG");
    assert_eq!(sim.record_count("Docebo_User__c"), 1, "nothing written");

    // Unknown column: request-level 400 array.
    let mut unknown = user(5);
    unknown["Nope__c"] = json!("x");
    let (status, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        vec![unknown],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALID_FIELD");
    assert_eq!(
        body[0]["message"],
        "No such column 'Nope__c' on sobject of type Docebo_User__c"
    );
    // Unknown object.
    let (status, body) = upsert(
        &sim,
        &http,
        &token,
        "Nope__c",
        "Id__c",
        false,
        vec![json!({"attributes": {"type": "Nope__c"}})],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALID_TYPE");
    assert_eq!(
        body[0]["message"],
        "sObject type 'Nope__c' is not supported."
    );
    // More than 200 records.
    let many: Vec<Value> = (0..201).map(user).collect();
    let (status, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        many,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body[0]["errorCode"].is_string());
    // Bad JSON.
    let response = http
        .patch(format!(
            "{}{DATA}/composite/sobjects/Docebo_User__c/Docebo_User_Id__c",
            sim.base_url()
        ))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()[0]["errorCode"],
        "JSON_PARSER_ERROR"
    );
}

#[tokio::test]
async fn unable_to_lock_row_fault() {
    let (sim, http, token) = setup().await;
    sim.set_faults(Faults {
        lock_row_share: 1.0,
        ..Faults::default()
    });
    let (_, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        vec![user(1), user(2)],
    )
    .await;
    assert_eq!(body[0]["errors"][0]["statusCode"], "UNABLE_TO_LOCK_ROW");
    assert_eq!(body[1]["errors"][0]["statusCode"], "UNABLE_TO_LOCK_ROW");
    sim.clear_faults();
    let (_, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        vec![user(1)],
    )
    .await;
    assert_eq!(body[0]["success"], true);
}

#[tokio::test]
async fn collections_delete_and_single_upsert() {
    let (sim, http, token) = setup().await;
    let (_, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        vec![user(1), user(2)],
    )
    .await;
    let id1 = body[0]["id"].as_str().unwrap().to_string();
    let id2 = body[1]["id"].as_str().unwrap().to_string();
    let unknown = format!("a01{}", &id1[3..14]).to_string() + "Z";
    let unknown = normalize_id(&unknown).unwrap();
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::DELETE,
        &format!("{DATA}/composite/sobjects?ids={id1},{unknown}&allOrNone=false"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["success"], true);
    assert_eq!(body[0]["id"], id1.as_str());
    assert_eq!(
        body[1]["errors"][0]["statusCode"],
        "INVALID_CROSS_REFERENCE_KEY"
    );
    let (_, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::DELETE,
        &format!("{DATA}/composite/sobjects?ids={id1},{id2}"),
        None,
    )
    .await;
    assert_eq!(body[0]["errors"][0]["statusCode"], "ENTITY_IS_DELETED");
    assert_eq!(body[1]["success"], true);
    assert_eq!(sim.record_count("Docebo_User__c"), 0);
    // A 15-character id is accepted too.
    let (_, body) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        vec![user(3)],
    )
    .await;
    let id3 = body[0]["id"].as_str().unwrap().to_string();
    let (_, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::DELETE,
        &format!(
            "{DATA}/composite/sobjects?ids={}&allOrNone=true",
            &id3[..15]
        ),
        None,
    )
    .await;
    assert_eq!(body[0]["success"], true);

    // Single-record upsert: 201 created, 200 updated.
    let record = json!({"Name": "Solo", "Active__c": false});
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::PATCH,
        &format!("{DATA}/sobjects/Docebo_User__c/Docebo_User_Id__c/777"),
        Some(record.clone()),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body["created"], true);
    assert_eq!(body["success"], true);
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::PATCH,
        &format!("{DATA}/sobjects/Docebo_User__c/Docebo_User_Id__c/777"),
        Some(record),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["created"], false);
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::PATCH,
        &format!("{DATA}/sobjects/Docebo_User__c/Docebo_User_Id__c/778"),
        Some(json!({"Active__c": true})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "REQUIRED_FIELD_MISSING");
    let records = sim.records("Docebo_User__c").unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["Docebo_User_Id__c"], "777");
}

#[tokio::test]
async fn soql_subset_paging_and_errors() {
    let (sim, http, token) = setup().await;
    for chunk in 0..11u32 {
        let records: Vec<Value> = (chunk * 200..(chunk + 1) * 200).map(user).collect();
        let (_, body) = upsert(
            &sim,
            &http,
            &token,
            "Docebo_User__c",
            "Docebo_User_Id__c",
            false,
            records,
        )
        .await;
        assert_eq!(body[0]["success"], true);
    }
    upsert(
        &sim,
        &http,
        &token,
        "Docebo_Course__c",
        "Docebo_Course_Id__c",
        false,
        vec![course(55)],
    )
    .await;
    upsert(
        &sim,
        &http,
        &token,
        "Docebo_Course_Enrollment__c",
        "Enrollment_Key__c",
        false,
        vec![enrollment(1, 55), enrollment(2, 55)],
    )
    .await;

    let query = |q: &str| {
        format!(
            "{DATA}/query?q={}",
            q.replace(' ', "+")
                .replace('\'', "%27")
                .replace(',', "%2C")
                .replace('(', "%28")
                .replace(')', "%29")
                .replace('=', "%3D")
        )
    };

    // Paging: 2200 records in pages of 2000.
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &query("SELECT Id, Docebo_User_Id__c FROM Docebo_User__c"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["totalSize"], 2200);
    assert_eq!(body["done"], false);
    assert_eq!(body["records"].as_array().unwrap().len(), 2000);
    assert_eq!(body["records"][0]["attributes"]["type"], "Docebo_User__c");
    assert!(
        body["records"][0]["attributes"]["url"]
            .as_str()
            .unwrap()
            .starts_with("/services/data/v62.0/sobjects/Docebo_User__c/a01")
    );
    let next = body["nextRecordsUrl"].as_str().unwrap().to_string();
    assert!(next.starts_with("/services/data/v62.0/query/01g"));
    assert!(next.ends_with("-2000"));
    let (status, _, body) = sf_call(&http, &sim, &token, Method::GET, &next, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["done"], true);
    assert_eq!(body["records"].as_array().unwrap().len(), 200);
    assert!(body.get("nextRecordsUrl").is_none());

    // WHERE =, IN, ORDER BY, LIMIT.
    let (_, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &query("SELECT Id, Name FROM Docebo_User__c WHERE Docebo_User_Id__c = '7'"),
        None,
    )
    .await;
    assert_eq!(body["totalSize"], 1);
    assert_eq!(body["records"][0]["Name"], "User 7");
    let (_, _, body) = sf_call(&http, &sim, &token, Method::GET, &query("SELECT Docebo_User_Id__c FROM Docebo_User__c WHERE Docebo_User_Id__c IN ('3','5','9999') ORDER BY Docebo_User_Id__c DESC"), None).await;
    assert_eq!(body["totalSize"], 2);
    assert_eq!(body["records"][0]["Docebo_User_Id__c"], "5");
    assert_eq!(body["records"][1]["Docebo_User_Id__c"], "3");
    let (_, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &query("SELECT Id FROM Docebo_User__c ORDER BY Name ASC LIMIT 5"),
        None,
    )
    .await;
    assert_eq!(body["records"].as_array().unwrap().len(), 5);
    assert_eq!(body["done"], true);
    let (_, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &query("SELECT COUNT() FROM Docebo_User__c WHERE Active__c = true"),
        None,
    )
    .await;
    assert_eq!(body["totalSize"], 2200);
    assert_eq!(body["records"], json!([]));

    // Relationship fields, datetimes in query format.
    let (_, _, body) = sf_call(&http, &sim, &token, Method::GET, &query("SELECT Enrollment_Key__c, Docebo_User__r.Docebo_User_Id__c, Completed_At__c FROM Docebo_Course_Enrollment__c ORDER BY Enrollment_Key__c"), None).await;
    assert_eq!(body["totalSize"], 2);
    assert_eq!(
        body["records"][0]["Docebo_User__r"]["Docebo_User_Id__c"],
        "1"
    );
    assert_eq!(
        body["records"][0]["Docebo_User__r"]["attributes"]["type"],
        "Docebo_User__c"
    );
    assert_eq!(
        body["records"][0]["Completed_At__c"],
        "2024-03-20T09:01:02.000+0000"
    );
    let (_, _, body) = sf_call(&http, &sim, &token, Method::GET, &query("SELECT Id FROM Docebo_Course_Enrollment__c WHERE Docebo_User__r.Docebo_User_Id__c = '2'"), None).await;
    assert_eq!(body["totalSize"], 1);

    // Errors.
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &query("SELEC Id FROM Docebo_User__c"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "MALFORMED_QUERY");
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &query("SELECT Id FROM Docebo_User__c WHERE"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "MALFORMED_QUERY");
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &query("SELECT Bogus__c FROM Docebo_User__c"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALID_FIELD");
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &query("SELECT Id FROM Bogus__c"),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALID_TYPE");

    // The Rust API runs the same queries.
    assert_eq!(
        sim.query("SELECT Id FROM Docebo_User__c WHERE Docebo_User_Id__c IN ('1','2')")
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn describe_and_schema_control() {
    let (sim, http, token) = setup().await;
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/sobjects/Docebo_Course_Enrollment__c/describe"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["keyPrefix"], "a05");
    let fields = body["fields"].as_array().unwrap();
    let field = |name: &str| fields.iter().find(|f| f["name"] == name).unwrap().clone();
    assert_eq!(field("Enrollment_Key__c")["externalId"], true);
    assert_eq!(field("Enrollment_Key__c")["unique"], true);
    assert_eq!(field("Status__c")["type"], "picklist");
    assert_eq!(
        field("Status__c")["picklistValues"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    assert_eq!(
        field("Docebo_User__c")["relationshipName"],
        "Docebo_User__r"
    );
    assert_eq!(
        field("Docebo_User__c")["referenceTo"],
        json!(["Docebo_User__c"])
    );
    assert_eq!(field("Score__c")["precision"], 6);
    let (status, _, body) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/sobjects"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["sobjects"].as_array().unwrap().len(), 9);

    // Loading another schema over the control API.
    let schema = json!({"objects": [{"name": "Thing__c", "key_prefix": "a0Z", "fields": [
        {"name": "Key__c", "type": "string", "length": 10, "external_id": true, "unique": true, "required": true}]}]});
    let response = http
        .put(format!("{}/__sim/schema", sim.base_url()))
        .json(&schema)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, body) = upsert(
        &sim,
        &http,
        &token,
        "Thing__c",
        "Key__c",
        false,
        vec![json!({"attributes": {"type": "Thing__c"}, "Key__c": "k1"})],
    )
    .await;
    assert!(body[0]["id"].as_str().unwrap().starts_with("a0Z"));
    let (_, body) = upsert(
        &sim,
        &http,
        &token,
        "Thing__c",
        "Key__c",
        false,
        vec![json!({"attributes": {"type": "Thing__c"}, "Key__c": "k".repeat(11)})],
    )
    .await;
    assert_eq!(body[0]["errors"][0]["statusCode"], "STRING_TOO_LONG");
    let response = http
        .put(format!("{}/__sim/schema", sim.base_url()))
        .json(&json!({"objects": [{"name": "X", "key_prefix": "toolong", "fields": []}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    sim.reset();
    assert_eq!(sim.schema().objects.len(), 9);
}

#[tokio::test]
async fn a_held_write_is_counted_and_applied_only_once_released() {
    let (sim, http, token) = setup().await;
    let control = format!("{}/__sim", sim.base_url());
    let held: Value = http
        .post(format!("{control}/hold_writes"))
        .json(&json!({"count": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(held, json!({"holding": 1}));
    let write = {
        let (sim_url, http, token) = (sim.base_url().to_string(), http.clone(), token.clone());
        tokio::spawn(async move {
            http.patch(format!(
                "{sim_url}{DATA}/composite/sobjects/Docebo_User__c/Docebo_User_Id__c"
            ))
            .bearer_auth(token)
            .json(&json!({"allOrNone": false, "records": [user(1)]}))
            .send()
            .await
            .unwrap()
            .status()
        })
    };
    // Counted, waiting, not applied; reads go on meanwhile.
    for _ in 0..500 {
        if sim.held_writes() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(sim.held_writes(), 1);
    let waiting: Value = http
        .get(format!("{control}/hold_writes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(waiting, json!({"holding": 0, "waiting": 1}));
    assert_eq!(sim.record_count("Docebo_User__c"), 0);
    let (status, _, _) = sf_call(
        &http,
        &sim,
        &token,
        Method::GET,
        &format!("{DATA}/query?q=SELECT+Id+FROM+Docebo_User__c"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // Released: applied, and the next write is not held.
    let released: Value = http
        .post(format!("{control}/release_writes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(released, json!({"released": 1}));
    assert_eq!(write.await.unwrap().as_u16(), 200);
    assert_eq!(sim.record_count("Docebo_User__c"), 1);
    assert_eq!(sim.held_writes(), 0);
    let (status, _) = upsert(
        &sim,
        &http,
        &token,
        "Docebo_User__c",
        "Docebo_User_Id__c",
        false,
        vec![user(2)],
    )
    .await;
    assert_eq!(status, 200);
}
