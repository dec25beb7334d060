"""The same work as learnsync's full sync, done the way a user would without learnsync: page Docebo
with `requests`, map each item to the Salesforce objects learnsync writes, and load each object with
simple-salesforce's Bulk API 2.0 upsert. Used by `learnsync-bench compare` as the baseline.

Usage: python baseline_sync.py DOCEBO_URL SALESFORCE_URL
Credentials come from the environment: DOCEBO_CLIENT_ID, DOCEBO_CLIENT_SECRET, SF_CLIENT_ID,
SF_CLIENT_SECRET. Prints one JSON line: records read, records loaded, failed, seconds.
Generous to the baseline: Bulk jobs are polled every second (simple-salesforce's default is 5 s),
and records are mapped with no validation at all (Salesforce rejects what does not fit).
"""
import csv
import json
import os
import sys
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce


class RewriteHttpsToSim(HTTPAdapter):
    """simple-salesforce always builds https:// URLs; the simulator speaks plain HTTP on loopback."""

    def __init__(self, host):
        super().__init__()
        self.host = host

    def send(self, request, **kwargs):
        parts = urlsplit(request.url)
        request.url = urlunsplit(("http", self.host, parts.path, parts.query, parts.fragment))
        return super().send(request, **kwargs)


def iso(value):
    if not value or value.startswith("0000"):
        return "#N/A"
    return value.replace(" ", "T") + ".000Z"


def day(value):
    if not value or value.startswith("0000"):
        return "#N/A"
    return value[:10]


def title(value):
    return "_".join(part.capitalize() for part in str(value).split("_")) if value else "#N/A"


class Docebo:
    def __init__(self, base, client_id, client_secret):
        self.base = base
        self.session = requests.Session()
        token = self.session.post(
            f"{base}/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": client_id,
                  "client_secret": client_secret, "scope": "api"},
            timeout=30,
        )
        token.raise_for_status()
        self.session.headers["Authorization"] = "Bearer " + token.json()["access_token"]

    def pages(self, path, **params):
        page = 1
        while True:
            response = self.session.get(f"{self.base}{path}", params={**params, "page": page, "page_size": 200},
                                        timeout=60)
            if response.status_code == 404:
                return
            response.raise_for_status()
            data = response.json()["data"]
            yield from data["items"]
            if not data.get("has_more_data") or not data["items"]:
                return
            page += 1


def upsert(sf, obj, external_id, rows, fields):
    if not rows:
        return 0, 0
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        path = handle.name
    try:
        results = getattr(sf.bulk2, obj).upsert(csv_file=path, external_id_field=external_id, wait=1)
    finally:
        os.unlink(path)
    loaded = sum(int(r.get("numberRecordsProcessed", 0)) - int(r.get("numberRecordsFailed", 0)) for r in results)
    failed = sum(int(r.get("numberRecordsFailed", 0)) for r in results)
    return loaded, failed


def main():
    docebo_url, salesforce_url = sys.argv[1], sys.argv[2]
    started = time.monotonic()
    docebo = Docebo(docebo_url, os.environ["DOCEBO_CLIENT_ID"], os.environ["DOCEBO_CLIENT_SECRET"])
    token = requests.post(
        f"{salesforce_url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": os.environ["SF_CLIENT_ID"],
              "client_secret": os.environ["SF_CLIENT_SECRET"]},
        timeout=30,
    )
    token.raise_for_status()
    host = urlsplit(salesforce_url).netloc
    session = requests.Session()
    session.mount("https://", RewriteHttpsToSim(host))
    sf = Salesforce(instance=host, session_id=token.json()["access_token"], version="62.0", session=session)

    read = loaded = failed = 0

    def load(obj, external_id, rows):
        nonlocal loaded, failed
        fields = sorted({key for row in rows for key in row})
        ok, bad = upsert(sf, obj, external_id, rows, fields)
        loaded += ok
        failed += bad

    users = []
    for u in docebo.pages("/manage/v1/user"):
        users.append({"Docebo_User_Id__c": str(u["user_id"]), "Name": str(u.get("username") or u["user_id"])[:80],
                      "Username__c": u.get("username") or "", "Email__c": u.get("email") or "",
                      "First_Name__c": u.get("first_name") or "", "Last_Name__c": u.get("last_name") or "",
                      "Active__c": "true" if str(u.get("status")) == "1" else "false",
                      "Docebo_Updated_At__c": iso(u.get("last_update"))})
    read += len(users)
    load("Docebo_User__c", "Docebo_User_Id__c", users)

    courses, session_courses = [], []
    for c in docebo.pages("/learn/v1/courses", sort_by="last_update", sort_by_direction="asc"):
        courses.append({"Docebo_Course_Id__c": str(c["id_course"]), "Name": str(c.get("name") or c["id_course"])[:80],
                        "Code__c": c.get("code") or "", "Type__c": title(c.get("course_type")),
                        "Language__c": c.get("language") or "", "Credits__c": c.get("credits") or 0,
                        "Start_Date__c": day(c.get("start_date")), "End_Date__c": day(c.get("end_date")),
                        "Docebo_Updated_At__c": iso(c.get("date_last_updated"))})
        if c.get("course_type") in ("classroom", "webinar"):
            session_courses.append((c["id_course"], c.get("course_type")))
    read += len(courses)
    load("Docebo_Course__c", "Docebo_Course_Id__c", courses)

    plans = []
    for p in docebo.pages("/learningplan/v1/learningplans"):
        plans.append({"Docebo_Learning_Plan_Id__c": str(p["learning_plan_id"]),
                      "Name": str(p.get("title") or p["learning_plan_id"])[:80], "Code__c": p.get("code") or "",
                      "Published__c": "true" if p.get("is_published") else "false",
                      "Credits__c": p.get("credits") or 0, "Docebo_Updated_At__c": iso(p.get("updated_on"))})
    read += len(plans)
    load("Docebo_Learning_Plan__c", "Docebo_Learning_Plan_Id__c", plans)

    sessions, session_types = [], {}
    for course_id, course_type in session_courses:
        for s in docebo.pages(f"/course/v1/courses/{course_id}/sessions"):
            session_types[s["id"]] = course_type
            sessions.append({"Docebo_Session_Id__c": str(s["id"]), "Name": str(s.get("name") or s["id"])[:80],
                             "Docebo_Course__r.Docebo_Course_Id__c": str(course_id), "Type__c": title(course_type),
                             "Start__c": iso(s.get("start_date")), "End__c": iso(s.get("end_date")),
                             "Docebo_Updated_At__c": iso(s.get("updated_on"))})
    read += len(sessions)
    load("Docebo_Session__c", "Docebo_Session_Id__c", sessions)

    enrollments = []
    for e in docebo.pages("/course/v1/courses/enrollments"):
        enrollments.append({"Enrollment_Key__c": f"{e['user_id']}-{e['course_id']}",
                            "Name": f"{e['user_id']}-{e['course_id']}",
                            "Docebo_User__r.Docebo_User_Id__c": str(e["user_id"]),
                            "Docebo_Course__r.Docebo_Course_Id__c": str(e["course_id"]),
                            "Status__c": title(e.get("enrollment_status")),
                            "Level__c": title(e.get("enrollment_level")),
                            "Enrolled_At__c": iso(e.get("enrollment_created_at")),
                            "Completed_At__c": iso(e.get("enrollment_completion_date")),
                            "Score__c": e.get("enrollment_score") or 0,
                            "Time_Spent_Seconds__c": e.get("enrollment_time_spent") or 0,
                            "Docebo_Updated_At__c": iso(e.get("enrollment_date_last_updated"))})
    read += len(enrollments)
    load("Docebo_Course_Enrollment__c", "Enrollment_Key__c", enrollments)

    plan_enrollments = []
    for e in docebo.pages("/learningplan/v1/learningplans/enrollments"):
        plan_enrollments.append({"Enrollment_Key__c": f"{e['user_id']}-{e['learning_plan_id']}",
                                 "Name": f"{e['user_id']}-{e['learning_plan_id']}",
                                 "Docebo_User__r.Docebo_User_Id__c": str(e["user_id"]),
                                 "Docebo_Learning_Plan__r.Docebo_Learning_Plan_Id__c": str(e["learning_plan_id"]),
                                 "Status__c": title(e.get("enrollment_status")),
                                 "Completion_Percent__c": e.get("enrollment_completion_percentage") or 0,
                                 "Enrolled_At__c": iso(e.get("enrollment_created_at")),
                                 "Completed_At__c": iso(e.get("enrollment_completion_date")),
                                 "Docebo_Updated_At__c": iso(e.get("enrollment_date_last_updated"))})
    read += len(plan_enrollments)
    load("Docebo_Learning_Plan_Enrollment__c", "Enrollment_Key__c", plan_enrollments)

    roster = []
    for session_id, course_type in session_types.items():
        for e in docebo.pages(f"/course/v1/sessions/{session_id}/enrollments"):
            roster.append({"Enrollment_Key__c": f"{e['user_id']}-{session_id}", "Name": f"{e['user_id']}-{session_id}",
                           "Docebo_User__r.Docebo_User_Id__c": str(e["user_id"]),
                           "Docebo_Session__r.Docebo_Session_Id__c": str(session_id),
                           "Session_Type__c": title(course_type), "Status__c": title(e.get("status")),
                           "Attendance_Hours__c": e.get("attendance") or 0,
                           "Evaluation__c": title(e.get("evaluation_status")),
                           "Evaluation_Score__c": e.get("evaluation_score") or 0,
                           "Enrolled_At__c": iso(e.get("enrollment_date")),
                           "Completed_At__c": iso(e.get("completion_date"))})
    read += len(roster)
    load("Docebo_Session_Enrollment__c", "Enrollment_Key__c", roster)

    print(json.dumps({"read": read, "loaded": loaded, "failed": failed,
                      "seconds": round(time.monotonic() - started, 3)}))


if __name__ == "__main__":
    main()
