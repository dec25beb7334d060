//! Proves per-connection mappings end to end over gRPC, Postgres, workers and both simulators: a
//! custom mapping (renamed fields, additional fields, users as Contacts, enrollments pointing at
//! the Contact) synchronizes exactly; bad mappings are refused with every problem named and a
//! check saves nothing; a mapping change rewrites exactly the records whose values changed.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use learnsync_client::{Client, pb, pb_mapping};
use learnsync_e2e::{TestSystem, details, eventually, manual, tokens};
use learnsync_sim::salesforce::Schema;
use learnsync_sim::{EntityKind, GenerateParams};
use serde_json::{Value, json};
use tonic::Code;

fn params(users: usize) -> GenerateParams {
    GenerateParams {
        seed: 15,
        users: Some(users),
        courses: Some(4),
        learning_plans: Some(2),
        sessions_per_course: Some(1),
        course_enrollments: Some(60),
        learning_plan_enrollments: Some(10),
        session_enrollments: Some(10),
        bad_records: Some(false),
        ..GenerateParams::default()
    }
}

/// The connection's current mapping as a document.
async fn document(client: &mut Client, connection: &str) -> Value {
    pb_mapping::to_document(&client.get_mapping(connection).await.unwrap())
}

async fn set(
    client: &mut Client,
    connection: &str,
    document: &Value,
    check_only: bool,
) -> Result<pb::Mapping, tonic::Status> {
    let mapping = pb_mapping::from_document(document).unwrap();
    client.set_mapping(connection, mapping, check_only).await
}

const ENROLLMENT_OBJECTS: [&str; 3] = [
    "Docebo_Course_Enrollment__c",
    "Docebo_Learning_Plan_Enrollment__c",
    "Docebo_Session_Enrollment__c",
];

/// An org that keeps learners as Contacts (with a region and a cost centre), enrollments pointing
/// at them, and the course code under another name.
fn contact_org(mut schema: Schema) -> Schema {
    let field = |value: Value| serde_json::from_value(value).unwrap();
    for object in &mut schema.objects {
        match object.name.as_str() {
            "Contact" => {
                object
                    .fields
                    .push(field(json!({"name": "Docebo_User_Id__c", "type": "string",
                    "length": 20, "external_id": true, "unique": true})));
                object
                    .fields
                    .push(field(json!({"name": "Region__c", "type": "picklist",
                    "values": ["EMEA", "AMER", "APAC"]})));
                object.fields.push(field(
                    json!({"name": "Cost_Centre__c", "type": "string", "length": 10}),
                ));
                object.fields.push(field(
                    json!({"name": "Source__c", "type": "string", "length": 20}),
                ));
            }
            "Docebo_Course__c" => {
                for course_field in &mut object.fields {
                    if course_field.name == "Code__c" {
                        course_field.name = "Course_Code__c".into();
                    }
                }
            }
            name if ENROLLMENT_OBJECTS.contains(&name) => {
                object.fields.retain(|f| f.name != "Docebo_User__c");
                object
                    .fields
                    .push(field(json!({"name": "Contact__c", "type": "reference",
                    "reference_to": "Contact", "relationship_name": "Contact__r",
                    "required": true})));
            }
            _ => {}
        }
    }
    schema
}

/// The default mapping changed for [`contact_org`].
fn contact_mapping(mut document: Value) -> Value {
    document["entities"]["users"] = json!({
        "object": "Contact", "external_id": "Docebo_User_Id__c", "name": [],
        "upsert_by": "Email",
        "fields": [
            {"field": "FirstName", "from": "first_name", "type": "text", "length": 40, "truncate": true},
            {"field": "LastName", "from": "last_name", "type": "text", "length": 80, "required": true},
            {"field": "Email", "from": "email", "type": "email", "length": 80, "required": true},
            {"field": "Region__c", "additional_field": "Region", "type": "picklist",
             "values": {"emea": "EMEA", "amer": "AMER", "apac": "APAC"}},
            {"field": "Cost_Centre__c", "additional_field": "2", "type": "text", "length": 10},
            {"field": "Source__c", "constant": "Docebo", "type": "text", "length": 20}
        ]
    });
    for field in document["entities"]["courses"]["fields"]
        .as_array_mut()
        .unwrap()
    {
        if field["field"] == "Code__c" {
            field["field"] = json!("Course_Code__c");
        }
    }
    for entity in [
        "course_enrollments",
        "learning_plan_enrollments",
        "session_enrollments",
    ] {
        for field in document["entities"][entity]["fields"]
            .as_array_mut()
            .unwrap()
        {
            if field["field"] == "Docebo_User__r" {
                *field = json!({"field": "Contact__r", "from": "user_id", "type": "lookup",
                    "object": "Contact", "external_id": "Docebo_User_Id__c", "required": true});
            }
        }
    }
    document
}

fn additional(user: &Value, title: &str) -> Value {
    user["additional_fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|field| field["title"] == title)
        .map(|field| field["value"].clone())
        .unwrap()
}

fn by_key(records: Vec<Value>, field: &str) -> BTreeMap<String, Value> {
    records
        .into_iter()
        .map(|record| (record[field].as_str().unwrap().to_string(), record))
        .collect()
}

async fn sync(system: &TestSystem, area: pb::Area) -> pb::Run {
    let run = system.first_sync(manual(area)).await.unwrap();
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    run
}

#[tokio::test]
async fn a_custom_mapping_synchronizes_exactly() {
    let system = TestSystem::start(&params(40), 1, |_| {}).await.unwrap();
    let connection = system.connection_id.clone();
    let mut client = system.client().await.unwrap();
    system
        .salesforce
        .load_schema(contact_org(system.salesforce.schema()))
        .unwrap();
    let document = contact_mapping(document(&mut client, &connection).await);
    let saved = set(&mut client, &connection, &document, false)
        .await
        .unwrap();
    assert_eq!(saved.version, 1);
    assert_eq!(client.get_mapping(&connection).await.unwrap().version, 1);
    // A Contact the org already holds for one learner: matched by email, not duplicated.
    let learner = system.docebo.items(EntityKind::Users)[0].clone();
    let created: Value = reqwest::Client::new()
        .post(format!(
            "{}/services/data/v62.0/sobjects/Contact",
            system.salesforce.base_url()
        ))
        .bearer_auth(system.salesforce.issue_token())
        .json(&json!({"LastName": "Existing", "Email": learner["email"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let existing_id = created["id"].as_str().unwrap().to_string();

    for area in [pb::Area::Users, pb::Area::Courses, pb::Area::Enrollments] {
        let run = sync(&system, area).await;
        assert_eq!(run.counts.as_ref().unwrap().failed, 0, "{run:?}");
    }

    let users = system.docebo.items(EntityKind::Users);
    let contacts = by_key(
        system.salesforce.records("Contact").unwrap(),
        "Docebo_User_Id__c",
    );
    assert_eq!(contacts.len(), users.len());
    assert_eq!(system.salesforce.record_count("Contact"), users.len());
    assert_eq!(
        contacts[learner["user_id"].as_str().unwrap()]["Id"],
        json!(existing_id)
    );
    assert_eq!(system.salesforce.record_count("Docebo_User__c"), 0);
    for user in &users {
        let contact = &contacts[user["user_id"].as_str().unwrap()];
        let first: String = user["first_name"]
            .as_str()
            .unwrap()
            .chars()
            .take(40)
            .collect();
        assert_eq!(contact["FirstName"], json!(first));
        assert_eq!(contact["LastName"], user["last_name"]);
        assert_eq!(contact["Email"], user["email"]);
        assert_eq!(contact["Region__c"], additional(user, "Region"));
        assert_eq!(contact["Cost_Centre__c"], additional(user, "Cost centre"));
        assert_eq!(contact["Source__c"], json!("Docebo"));
    }
    let courses = by_key(
        system.salesforce.records("Docebo_Course__c").unwrap(),
        "Docebo_Course_Id__c",
    );
    for course in system.docebo.items(EntityKind::Courses) {
        let key = learnsync_e2e::env::docebo_key(EntityKind::Courses, &course);
        assert_eq!(courses[&key]["Course_Code__c"], course["code"]);
    }
    let contact_ids: BTreeMap<String, String> = contacts
        .iter()
        .map(|(key, contact)| (contact["Id"].as_str().unwrap().to_string(), key.clone()))
        .collect();
    let enrollments = system.docebo.items(EntityKind::CourseEnrollments);
    let written = system
        .salesforce
        .records("Docebo_Course_Enrollment__c")
        .unwrap();
    assert_eq!(written.len(), enrollments.len());
    for record in &written {
        let key = record["Enrollment_Key__c"].as_str().unwrap();
        let user = key.split('-').next().unwrap();
        let contact = record["Contact__c"].as_str().unwrap();
        assert_eq!(contact_ids[contact], user, "{record}");
    }

    // The org changes (a field deleted): the next run fails before it writes anything, naming
    // the problem as SetMapping would.
    let mut schema = system.salesforce.schema();
    for object in &mut schema.objects {
        if object.name == "Contact" {
            object.fields.retain(|field| field.name != "Region__c");
        }
    }
    system.salesforce.load_schema(schema).unwrap();
    system.salesforce.clear_counters();
    let run = client
        .resynchronize(&connection, pb::Area::Users, None, false)
        .await
        .unwrap();
    let run = system
        .wait_for_run(&run.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(run.state, pb::RunState::Failed as i32, "{run:?}");
    let error = run.jobs[0].error_message.clone();
    assert!(
        error.contains(
            "entities.users.fields[3]: the org has no field Region__c on Contact \
             (org: Contact.Region__c)"
        ),
        "{error}"
    );
    assert_eq!(
        write_calls(&system),
        0,
        "{:?}",
        system.salesforce.counters()
    );
    system.stop().await.unwrap();
}

#[tokio::test]
async fn bad_mappings_are_refused_with_every_problem_named_and_a_check_saves_nothing() {
    let system = TestSystem::start(&params(5), 0, |_| {}).await.unwrap();
    let connection = system.connection_id.clone();
    let mut client = system.client().await.unwrap();
    let default = document(&mut client, &connection).await;

    // Another tenant learns nothing of this connection's mapping.
    let mut other = system.server.client(tokens::GLOBEX).await.unwrap();
    let denied = other.get_mapping(&connection).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = set(&mut other, &connection, &default, false)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Problems of the mapping on its own: INVALID_ARGUMENT, one violation each.
    let mut alone = default.clone();
    alone["entities"]["people"] = json!({"object": "Person__c", "external_id": "Id__c"});
    alone["entities"]["users"]["fields"][0]["length"] = json!(0);
    alone["entities"]["courses"]["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"field": "Region__c", "additional_field": "Region", "type": "text", "length": 9}));
    alone["entities"]["sessions"]["fields"][1]["values"] = json!({});
    let error = set(&mut client, &connection, &alone, false)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert_eq!(
        details::fields(&error),
        [
            "mapping.entities.people",
            "mapping.entities.users.fields[0]",
            "mapping.entities.courses.fields[7]",
            "mapping.entities.sessions.fields[1]",
        ]
    );

    // Problems with the org: FAILED_PRECONDITION, one violation each, naming the org's field.
    let mut org = default.clone();
    org["entities"]["users"]["object"] = json!("Prospect__c");
    org["entities"]["courses"]["fields"][0]["type"] = json!("checkbox");
    org["entities"]["courses"]["fields"][0]["true_values"] = json!(["1"]);
    org["entities"]["courses"]["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"field": "Nonexistent__c", "from": "code", "type": "text", "length": 9}));
    org["entities"]["sessions"]["fields"][0]["object"] = json!("Docebo_User__c");
    org["entities"]["course_enrollments"]["external_id"] = json!("Name");
    org["entities"]["course_enrollments"]["fields"][2]["values"]["paused"] = json!("Paused");
    let error = set(&mut client, &connection, &org, false)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert_eq!(
        details::reason(&error).unwrap().0,
        "MAPPING_DOES_NOT_FIT_ORG"
    );
    use tonic_types::StatusExt as _;
    let violations = error.get_details_precondition_failure().unwrap().violations;
    let named: BTreeMap<String, String> = violations
        .into_iter()
        .inspect(|violation| assert_eq!(violation.r#type, "MAPPING"))
        .map(|violation| (violation.subject, violation.description))
        .collect();
    let expected: BTreeMap<&str, &str> = BTreeMap::from([
        (
            "mapping.entities.users.object",
            "the org has no object Prospect__c",
        ),
        (
            "mapping.entities.courses.fields[0]",
            "(org: Docebo_Course__c.Code__c)",
        ),
        (
            "mapping.entities.courses.fields[7]",
            "the org has no field Nonexistent__c on Docebo_Course__c",
        ),
        (
            "mapping.entities.sessions.fields[0]",
            "the lookup points to [\"Docebo_Course__c\"], not Docebo_User__c",
        ),
        (
            "mapping.entities.course_enrollments.external_id",
            "Name on Docebo_Course_Enrollment__c is not an external id field",
        ),
        (
            "mapping.entities.course_enrollments.fields[2]",
            "the picklist has no value Paused (org: Docebo_Course_Enrollment__c.Status__c)",
        ),
    ]);
    assert_eq!(
        named.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        expected.keys().copied().collect::<BTreeSet<_>>(),
        "{named:#?}"
    );
    for (subject, text) in expected {
        assert!(
            named[subject].contains(text),
            "{subject}: {}",
            named[subject]
        );
    }
    assert_eq!(client.get_mapping(&connection).await.unwrap().version, 0);

    // Users as Leads (matched by email, a constant company) fit the org: a check saves nothing.
    let mut leads = default.clone();
    leads["entities"]["users"] = json!({
        "object": "Lead", "external_id": "Docebo_User_Id__c", "upsert_by": "Email", "name": [],
        "fields": [
            {"field": "LastName", "from": "last_name", "type": "text", "length": 80, "required": true},
            {"field": "Email", "from": "email", "type": "email", "length": 80, "required": true},
            {"field": "Company", "constant": "Docebo learners", "type": "text", "length": 255},
            {"field": "FirstName", "from": "first_name", "type": "text", "length": 40, "truncate": true}
        ]
    });
    let checked = set(&mut client, &connection, &leads, true).await.unwrap();
    assert_eq!(checked.version, 0);
    // Upserts cannot match on a field that is neither an external id nor an idLookup one.
    leads["entities"]["users"]["upsert_by"] = json!("LastName");
    let error = set(&mut client, &connection, &leads, true)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(
        error
            .message()
            .contains("mapping.entities.users.upsert_by: LastName on Lead is neither"),
        "{error:?}"
    );

    // A check of a mapping that fits saves nothing; setting it saves version 1.
    let mut fits = default.clone();
    fits["entities"]["courses"]["fields"][0]["truncate"] = json!(true);
    let checked = set(&mut client, &connection, &fits, true).await.unwrap();
    assert_eq!(checked.version, 0);
    let current = client.get_mapping(&connection).await.unwrap();
    assert_eq!(current.version, 0);
    assert_eq!(pb_mapping::to_document(&current), default);
    // Idempotent: the same request id twice saves one version and answers it twice.
    let request = pb::SetMappingRequest {
        connection_id: connection.clone(),
        mapping: Some(pb_mapping::from_document(&fits).unwrap()),
        check_only: false,
        request_id: "set-mapping-1".into(),
    };
    let saved = client
        .raw()
        .set_mapping(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(saved.version, 1);
    let again = client
        .raw()
        .set_mapping(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, saved);
    assert_eq!(
        pb_mapping::to_document(&client.get_mapping(&connection).await.unwrap()),
        fits
    );
}

/// Write calls to Salesforce (sObject Collections upserts and Bulk ingest jobs) since the
/// counters were cleared.
fn write_calls(system: &TestSystem) -> u64 {
    system
        .salesforce
        .counters()
        .iter()
        .filter(|(route, _)| {
            route.starts_with("PATCH /services/data/v62.0/composite/sobjects")
                || route.starts_with("POST /services/data/v62.0/jobs/ingest")
        })
        .map(|(_, calls)| calls)
        .sum()
}

/// The next run of an area after `after` (a realtime area's scheduled runs), once it ended.
async fn next_run(system: &TestSystem, client: &mut Client, after: &BTreeSet<String>) -> pb::Run {
    let connection = system.connection_id.clone();
    let run = eventually(Duration::from_secs(60), "a scheduled run", || {
        let mut client = client.clone();
        let connection = connection.clone();
        async move {
            let runs = client
                .list_runs(pb::ListRunsRequest {
                    connection_id: connection,
                    area: pb::Area::Users as i32,
                    page_size: 50,
                    page_token: String::new(),
                })
                .await?
                .runs;
            Ok(runs.into_iter().find(|run| !after.contains(&run.id)))
        }
    })
    .await
    .unwrap();
    system
        .wait_for_run(&run.id, Duration::from_secs(60))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_mapping_change_rewrites_only_what_changed() {
    let system = TestSystem::start(&params(40), 1, |_| {}).await.unwrap();
    let connection = system.connection_id.clone();
    let mut client = system.client().await.unwrap();
    let first = sync(&system, pb::Area::Users).await;
    let users = system.docebo.items(EntityKind::Users);
    assert_eq!(
        system.salesforce.record_count("Docebo_User__c"),
        users.len()
    );

    // First names now keep 5 characters: only the longer ones change.
    let mut document = document(&mut client, &connection).await;
    for field in document["entities"]["users"]["fields"]
        .as_array_mut()
        .unwrap()
    {
        if field["field"] == "First_Name__c" {
            field["length"] = json!(5);
            field["truncate"] = json!(true);
        }
    }
    set(&mut client, &connection, &document, false)
        .await
        .unwrap();
    let changed: BTreeSet<String> = users
        .iter()
        .filter(|user| user["first_name"].as_str().unwrap().chars().count() > 5)
        .map(|user| user["user_id"].as_str().unwrap().to_string())
        .collect();
    assert!(!changed.is_empty() && changed.len() < users.len());

    // The next (incremental) run reads everything once and rewrites the changed records only.
    system.salesforce.clear_counters();
    let realtime = pb::AreaConfig {
        area: pb::Area::Users as i32,
        enabled: true,
        mode: pb::Mode::Realtime as i32,
        interval: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        full_comparison_interval: Some(prost_types::Duration {
            seconds: 86_400,
            nanos: 0,
        }),
        ..Default::default()
    };
    client.configure(&connection, realtime).await.unwrap();
    let mut seen = BTreeSet::from([first.id.clone()]);
    let remapped = next_run(&system, &mut client, &seen).await;
    seen.insert(remapped.id.clone());
    let counts = remapped.counts.unwrap();
    assert_eq!(
        remapped.state,
        pb::RunState::Succeeded as i32,
        "{remapped:?}"
    );
    // An incremental run (the full comparison is a day away), which read everything anyway.
    assert!(!remapped.full, "{remapped:?}");
    assert_eq!(counts.read, users.len() as i64, "{counts:?}");
    assert_eq!(counts.written, changed.len() as i64, "{counts:?}");
    assert_eq!(
        counts.unchanged,
        (users.len() - changed.len()) as i64,
        "{counts:?}"
    );
    assert_eq!(
        write_calls(&system),
        1,
        "{:?}",
        system.salesforce.counters()
    );
    let records = by_key(
        system.salesforce.records("Docebo_User__c").unwrap(),
        "Docebo_User_Id__c",
    );
    for user in &users {
        let first: String = user["first_name"]
            .as_str()
            .unwrap()
            .chars()
            .take(5)
            .collect();
        let key = user["user_id"].as_str().unwrap();
        assert_eq!(records[key]["First_Name__c"], json!(first), "{key}");
    }
    // The ledger says which version wrote (or, unchanged, maps to) each record.
    let conn = system.server.store.conn().await.unwrap();
    let versions = learnsync_store::mappings::ledger_versions(
        &conn,
        uuid::Uuid::parse_str(&connection).unwrap(),
        "Docebo_User__c",
    )
    .await
    .unwrap();
    assert_eq!(versions.len(), users.len());
    assert!(
        versions.iter().all(|(_, version)| *version == Some(1)),
        "{versions:?}"
    );

    // The run after it reads only what Docebo changed (nothing) and writes nothing.
    system.salesforce.clear_counters();
    let quiet = next_run(&system, &mut client, &seen).await;
    let counts = quiet.counts.unwrap();
    assert_eq!(quiet.state, pb::RunState::Succeeded as i32, "{quiet:?}");
    assert_eq!((counts.read, counts.written), (0, 0), "{counts:?}");
    assert_eq!(
        write_calls(&system),
        0,
        "{:?}",
        system.salesforce.counters()
    );
    system.stop().await.unwrap();
}
