"""Drives the Salesforce simulator with the real simple-salesforce client: sObject Collections, Bulk 2.0 upsert, query, Bulk 2.0 query.

Usage: python simple_salesforce_check.py BASE_URL CLIENT_ID CLIENT_SECRET
Exits 0 when every check passed, non-zero (with a message) otherwise.
"""
import csv
import io
import sys
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce


class RewriteHttpsToSim(HTTPAdapter):
    """simple-salesforce always builds https:// URLs; the simulator speaks plain HTTP on 127.0.0.1.

    Mounted on "https://", this adapter sends every such request to the simulator over http instead.
    """

    def __init__(self, sim_host):
        super().__init__()
        self.sim_host = sim_host

    def send(self, request, **kwargs):
        parts = urlsplit(request.url)
        request.url = urlunsplit(("http", self.sim_host, parts.path, parts.query, parts.fragment))
        return super().send(request, **kwargs)


def main():
    base_url, client_id, client_secret = sys.argv[1], sys.argv[2], sys.argv[3]
    host = urlsplit(base_url).netloc

    token = requests.post(
        f"{base_url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret},
        timeout=10,
    )
    token.raise_for_status()
    access_token = token.json()["access_token"]

    session = requests.Session()
    session.mount("https://", RewriteHttpsToSim(host))
    sf = Salesforce(instance=host, session_id=access_token, version="62.0", session=session)

    # sObject Collections upsert of parents.
    users = [
        {"attributes": {"type": "Docebo_User__c"}, "Docebo_User_Id__c": str(100 + i), "Name": f"Py User {i}",
         "Email__c": f"py{i}@acme.example", "Active__c": True}
        for i in range(10)
    ]
    results = sf.restful(
        "composite/sobjects/Docebo_User__c/Docebo_User_Id__c",
        method="PATCH",
        json={"allOrNone": False, "records": users},
    )
    assert len(results) == 10, results
    assert all(r["success"] and r["created"] for r in results), results
    courses = [{"attributes": {"type": "Docebo_Course__c"}, "Docebo_Course_Id__c": "55", "Name": "Sales 101",
                "Type__c": "Elearning"}]
    results = sf.restful("composite/sobjects/Docebo_Course__c/Docebo_Course_Id__c", method="PATCH",
                         json={"allOrNone": True, "records": courses})
    assert results[0]["success"], results

    # Bulk API 2.0 upsert of children, with relationship columns and one orphan.
    records = [
        {"Enrollment_Key__c": f"{100 + i}-55", "Name": f"{100 + i}-55",
         "Docebo_User__r.Docebo_User_Id__c": str(100 + i), "Docebo_Course__r.Docebo_Course_Id__c": "55",
         "Status__c": "Completed", "Completed_At__c": "2024-03-20T09:01:02.000Z", "Score__c": "87"}
        for i in range(10)
    ]
    records.append({"Enrollment_Key__c": "999-55", "Name": "999-55", "Docebo_User__r.Docebo_User_Id__c": "999",
                    "Docebo_Course__r.Docebo_Course_Id__c": "55", "Status__c": "Completed",
                    "Completed_At__c": "", "Score__c": ""})
    jobs = sf.bulk2.Docebo_Course_Enrollment__c.upsert(
        records=records, external_id_field="Enrollment_Key__c", wait=0.05)
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert job["numberRecordsProcessed"] == 11, job
    assert job["numberRecordsFailed"] == 1, job
    failed = sf.bulk2.Docebo_Course_Enrollment__c.get_failed_records(job["job_id"])
    assert "Foreign key external ID: 999 not found" in failed, failed
    successful = sf.bulk2.Docebo_Course_Enrollment__c.get_successful_records(job["job_id"])
    assert successful.count("\n") >= 10, successful

    # Query back.
    result = sf.query_all("SELECT Id, Enrollment_Key__c, Docebo_User__r.Docebo_User_Id__c FROM Docebo_Course_Enrollment__c")
    assert result["totalSize"] == 10, result
    assert result["records"][0]["Docebo_User__r"]["Docebo_User_Id__c"] == "100", result["records"][0]

    # Bulk API 2.0 query, in result sets of at most 4 records followed by locator.
    sets = list(sf.bulk2.Docebo_Course_Enrollment__c.query(
        "SELECT Id, Enrollment_Key__c, Docebo_User__r.Docebo_User_Id__c, Completed_At__c "
        "FROM Docebo_Course_Enrollment__c",
        max_records=4, wait=0.05))
    parsed = [list(csv.reader(io.StringIO(text))) for text in sets]
    assert [len(rows) - 1 for rows in parsed] == [4, 4, 2], sets
    for rows in parsed:
        assert rows[0] == ["Id", "Enrollment_Key__c", "Docebo_User__r.Docebo_User_Id__c", "Completed_At__c"], rows[0]
    records = [row for rows in parsed for row in rows[1:]]
    assert sorted(row[1] for row in records) == sorted(f"{100 + i}-55" for i in range(10)), records
    assert all(row[3] == "2024-03-20T09:01:02.000Z" for row in records), records
    assert all(row[2] == row[1].split("-")[0] for row in records), records
    print("simple-salesforce checks passed")


if __name__ == "__main__":
    main()
