"""Drives learnsync with a Python client generated from proto/ by grpcio-tools.

The scenario a Python integrator would write: create a connection (idempotently), configure the
users area, start it, follow its log until the run ends, read the status, then start the courses
area and stop it. Every answer is checked, refusals included (their `google.rpc` details are read
from the trailer). Exits non-zero on the first mismatch. The last line of stdout is
`RESULT <json>`, naming what was created, for the caller to check on its side.

Secrets come from the environment: LEARNSYNC_TOKEN (an operator token), DOCEBO_CLIENT_SECRET and
SALESFORCE_CLIENT_SECRET.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import grpc

from grpc_checks import (
    bearer,
    expect,
    expect_equal,
    expect_refused,
    main,
    secret_from_env,
    target,
    wait_ready,
)

CALL_TIMEOUT = 30
RUN_TIMEOUT = 120


def generate(proto_dir, out_dir):
    """Runs grpcio-tools' protoc on sync.proto into `out_dir` and imports the modules."""
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_dir, "learnsync", "v1", "sync.proto"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    expect(done.returncode == 0, f"protoc failed ({done.returncode}): {done.stderr}")
    for name in ("sync_pb2.py", "sync_pb2_grpc.py"):
        path = os.path.join(out_dir, "learnsync", "v1", name)
        expect(os.path.exists(path), f"protoc did not write {path}")
    sys.path.insert(0, out_dir)
    return (
        importlib.import_module("learnsync.v1.sync_pb2"),
        importlib.import_module("learnsync.v1.sync_pb2_grpc"),
    )


def follow_run_logs(stub, pb, auth, connection_id, run_id):
    """Streams the run's log with `follow`: the stream must end by itself once the run ended."""
    request = pb.StreamLogsRequest(connection_id=connection_id, run_id=run_id, follow=True)
    events = []
    for event in stub.StreamLogs(request, metadata=auth, timeout=RUN_TIMEOUT):
        events.append(event)
    expect(events, f"no log event for run {run_id}")
    previous = 0
    for event in events:
        expect(
            event.sequence > previous,
            f"log sequences not increasing: {event.sequence} after {previous}",
        )
        previous = event.sequence
        expect_equal(event.connection_id, connection_id, "log event connection_id")
        expect_equal(event.run_id, run_id, "log event run_id")
        expect(event.level != pb.LOG_LEVEL_UNSPECIFIED, f"log event without a level: {event}")
        expect(event.HasField("time"), f"log event without a time: {event}")
    expect("queued" in events[0].message, f"first event of the run: {events[0].message!r}")
    return events


def check(args):
    token = secret_from_env("LEARNSYNC_TOKEN")
    docebo_secret = secret_from_env("DOCEBO_CLIENT_SECRET")
    salesforce_secret = secret_from_env("SALESFORCE_CLIENT_SECRET")
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="learnsync-python-") as out_dir:
        pb, pb_grpc = generate(args.proto_dir, out_dir)
        print(f"generated {pb.__file__} and {pb_grpc.__name__}")

        channel = grpc.insecure_channel(target(args.endpoint))
        wait_ready(channel)
        stub = pb_grpc.SyncServiceStub(channel)
        auth = bearer(token)
        active = (pb.RUN_STATE_QUEUED, pb.RUN_STATE_RUNNING, pb.RUN_STATE_STOPPING)

        # Without the token, nothing is answered.
        expect_refused(
            lambda: stub.ListConnections(pb.ListConnectionsRequest(), timeout=CALL_TIMEOUT),
            grpc.StatusCode.UNAUTHENTICATED,
            "UNAUTHENTICATED",
            "ListConnections without a token",
        )

        # Create, with a request id: the retry returns the same connection.
        display_name = f"python generated client {uuid.uuid4().hex[:8]}"
        create = pb.CreateConnectionRequest(
            connection=pb.Connection(
                display_name=display_name,
                docebo=pb.DoceboCredentials(
                    base_url=args.docebo_url,
                    client_id=args.docebo_client_id,
                    client_secret=docebo_secret,
                    client_credentials=pb.DoceboClientCredentialsGrant(),
                ),
                salesforce=pb.SalesforceCredentials(
                    login_url=args.salesforce_url,
                    client_id=args.salesforce_client_id,
                    client_credentials=pb.SalesforceClientCredentialsGrant(
                        client_secret=salesforce_secret
                    ),
                ),
                unenrollment_policy=pb.UNENROLLMENT_POLICY_MARK_UNENROLLED,
                docebo_calls_per_hour=100000,
            ),
            request_id=str(uuid.uuid4()),
        )
        connection = stub.CreateConnection(create, metadata=auth, timeout=CALL_TIMEOUT)
        connection_id = connection.id
        expect(uuid.UUID(connection_id), f"connection id {connection_id!r} is not a uuid")
        retried = stub.CreateConnection(create, metadata=auth, timeout=CALL_TIMEOUT)
        expect_equal(retried.id, connection_id, "CreateConnection retried with its request_id")

        fetched = stub.GetConnection(
            pb.GetConnectionRequest(connection_id=connection_id), metadata=auth, timeout=CALL_TIMEOUT
        )
        expect_equal(fetched.display_name, display_name, "GetConnection display_name")
        expect_equal(fetched.tenant, "default", "GetConnection tenant")
        expect(not fetched.HasField("docebo"), "GetConnection returned Docebo credentials")
        expect(not fetched.HasField("salesforce"), "GetConnection returned Salesforce credentials")
        expect_equal(
            fetched.credentials_info.docebo_grant, "client_credentials", "credentials_info.docebo_grant"
        )
        expect_equal(
            fetched.credentials_info.salesforce_grant,
            "client_credentials",
            "credentials_info.salesforce_grant",
        )
        expect(fetched.HasField("create_time"), "GetConnection without create_time")
        listed = stub.ListConnections(
            pb.ListConnectionsRequest(page_size=1000), metadata=auth, timeout=CALL_TIMEOUT
        )
        expect(
            connection_id in [c.id for c in listed.connections],
            f"ListConnections does not list {connection_id}",
        )

        # Configure the users area; refusals carry their reasons.
        users_config = stub.Configure(
            pb.ConfigureRequest(
                connection_id=connection_id,
                config=pb.AreaConfig(area=pb.AREA_USERS, enabled=True, mode=pb.MODE_MANUAL),
                request_id=str(uuid.uuid4()),
            ),
            metadata=auth,
            timeout=CALL_TIMEOUT,
        )
        expect_equal(users_config.area, pb.AREA_USERS, "Configure area")
        expect_equal(users_config.enabled, True, "Configure enabled")
        expect_equal(users_config.mode, pb.MODE_MANUAL, "Configure mode")
        preconditions = expect_refused(
            lambda: stub.Stop(
                pb.StopRequest(connection_id=connection_id, area=pb.AREA_USERS),
                metadata=auth,
                timeout=CALL_TIMEOUT,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "NO_ACTIVE_RUN",
            "Stop with nothing running",
        )
        expect_equal(preconditions, ["NO_ACTIVE_RUN"], "Stop's PreconditionFailure types")
        preconditions = expect_refused(
            lambda: stub.Configure(
                pb.ConfigureRequest(
                    connection_id=connection_id,
                    config=pb.AreaConfig(
                        area=pb.AREA_ENROLLMENTS, enabled=True, mode=pb.MODE_MANUAL
                    ),
                ),
                metadata=auth,
                timeout=CALL_TIMEOUT,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "PREREQUISITE_NOT_SYNCHRONIZED",
            "enabling enrollments before users and courses",
        )
        expect_equal(
            preconditions, ["PREREQUISITE_NOT_SYNCHRONIZED"], "Configure's PreconditionFailure types"
        )

        # Start the users area and follow its log until the run ends.
        run = stub.Start(
            pb.StartRequest(
                connection_id=connection_id, area=pb.AREA_USERS, request_id=str(uuid.uuid4())
            ),
            metadata=auth,
            timeout=CALL_TIMEOUT,
        )
        expect(run.state in active, f"Start returned a run in state {run.state}")
        expect_equal(run.area, pb.AREA_USERS, "Start run area")
        expect_equal(run.trigger, pb.TRIGGER_START, "Start run trigger")
        expect_equal(run.full, True, "Start run full")
        expect_equal([job.kind for job in run.jobs], [pb.JOB_KIND_USERS], "Start run jobs")
        events = follow_run_logs(stub, pb, auth, connection_id, run.id)
        print(f"followed {len(events)} log events of the users run: {[e.message for e in events]}")

        finished = stub.GetRun(
            pb.GetRunRequest(connection_id=connection_id, run_id=run.id),
            metadata=auth,
            timeout=CALL_TIMEOUT,
        )
        expect_equal(
            pb.RunState.Name(finished.state),
            "RUN_STATE_SUCCEEDED",
            f"users run state ({finished.error_message})",
        )
        expect(finished.counts.read > 0, f"users run read nothing: {finished.counts}")
        expect_equal(finished.counts.failed, 0, "users run failed records")
        expect_equal(
            finished.counts.written + finished.counts.unchanged,
            finished.counts.read,
            "users run written + unchanged vs read",
        )
        expect(
            all(job.state == pb.JOB_STATE_SUCCEEDED for job in finished.jobs),
            f"users jobs: {[pb.JobState.Name(job.state) for job in finished.jobs]}",
        )
        expect(finished.HasField("end_time"), "finished users run without end_time")
        expect_equal(finished.first_error_sequence, 0, "users run first_error_sequence")

        # The status reflects the finished run.
        status = stub.GetStatus(
            pb.GetStatusRequest(connection_id=connection_id), metadata=auth, timeout=CALL_TIMEOUT
        )
        expect_equal(status.connection_id, connection_id, "GetStatus connection_id")
        expect_equal(
            [area.area for area in status.areas],
            [pb.AREA_USERS, pb.AREA_COURSES, pb.AREA_ENROLLMENTS],
            "GetStatus areas",
        )
        users = status.areas[0]
        expect(users.configured, "users area not configured in GetStatus")
        expect(not users.HasField("active_run"), f"users area still has an active run: {users}")
        expect_equal(users.last_run.id, run.id, "users last_run id")
        expect_equal(users.last_run.state, pb.RUN_STATE_SUCCEEDED, "users last_run state")
        expect(users.HasField("last_success_time"), "users area without last_success_time")
        expect(users.records_imported > 0, f"users records_imported {users.records_imported}")
        expect_equal(users.first_error_sequence, 0, "users first_error_sequence")
        expect(not status.areas[1].configured, "courses area configured before Configure")

        preconditions = expect_refused(
            lambda: stub.Start(
                pb.StartRequest(connection_id=connection_id, area=pb.AREA_USERS),
                metadata=auth,
                timeout=CALL_TIMEOUT,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "ALREADY_SYNCHRONIZED",
            "a second Start of the users area",
        )
        expect_equal(preconditions, ["ALREADY_SYNCHRONIZED"], "second Start's PreconditionFailure")

        # Start the courses area and stop it at once.
        stub.Configure(
            pb.ConfigureRequest(
                connection_id=connection_id,
                config=pb.AreaConfig(area=pb.AREA_COURSES, enabled=True, mode=pb.MODE_MANUAL),
            ),
            metadata=auth,
            timeout=CALL_TIMEOUT,
        )
        courses_run = stub.Start(
            pb.StartRequest(connection_id=connection_id, area=pb.AREA_COURSES),
            metadata=auth,
            timeout=CALL_TIMEOUT,
        )
        stopping = stub.Stop(
            pb.StopRequest(
                connection_id=connection_id, area=pb.AREA_COURSES, request_id=str(uuid.uuid4())
            ),
            metadata=auth,
            timeout=CALL_TIMEOUT,
        )
        expect_equal(stopping.id, courses_run.id, "Stop's run id")
        expect(
            stopping.state in (pb.RUN_STATE_STOPPING, pb.RUN_STATE_STOPPED),
            f"Stop returned {pb.RunState.Name(stopping.state)}",
        )
        expect(stopping.HasField("stop_time"), "Stop returned a run without stop_time")
        print(f"Stop answered {pb.RunState.Name(stopping.state)}")
        courses_events = follow_run_logs(stub, pb, auth, connection_id, courses_run.id)
        stopped = stub.GetRun(
            pb.GetRunRequest(connection_id=connection_id, run_id=courses_run.id),
            metadata=auth,
            timeout=CALL_TIMEOUT,
        )
        expect_equal(pb.RunState.Name(stopped.state), "RUN_STATE_STOPPED", "courses run state")
        expect(
            all(job.state in (pb.JOB_STATE_STOPPED, pb.JOB_STATE_SUCCEEDED) for job in stopped.jobs),
            f"courses jobs: {[pb.JobState.Name(job.state) for job in stopped.jobs]}",
        )
        courses = stub.GetStatus(
            pb.GetStatusRequest(connection_id=connection_id, areas=[pb.AREA_COURSES]),
            metadata=auth,
            timeout=CALL_TIMEOUT,
        )
        expect_equal([a.area for a in courses.areas], [pb.AREA_COURSES], "GetStatus(courses) areas")
        expect(not courses.areas[0].HasField("active_run"), "courses still active after Stop")
        expect_equal(courses.areas[0].last_run.id, courses_run.id, "courses last_run id")
        expect_equal(courses.areas[0].last_run.state, pb.RUN_STATE_STOPPED, "courses last_run state")

        runs = stub.ListRuns(
            pb.ListRunsRequest(connection_id=connection_id), metadata=auth, timeout=CALL_TIMEOUT
        )
        expect_equal([r.id for r in runs.runs], [courses_run.id, run.id], "ListRuns, newest first")
        channel.close()

    result = {
        "connection_id": connection_id,
        "display_name": display_name,
        "users_run_id": run.id,
        "users_log_events": len(events),
        "users_last_sequence": events[-1].sequence,
        "users_records_imported": users.records_imported,
        "courses_run_id": courses_run.id,
        "courses_log_events": len(courses_events),
        "seconds": round(time.monotonic() - started, 2),
    }
    print("checks passed")
    print("RESULT " + json.dumps(result))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="the server, e.g. http://127.0.0.1:50051")
    parser.add_argument("--proto-dir", required=True, help="the repository's proto/ directory")
    parser.add_argument("--docebo-url", required=True)
    parser.add_argument("--docebo-client-id", required=True)
    parser.add_argument("--salesforce-url", required=True)
    parser.add_argument("--salesforce-client-id", required=True)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    main(lambda: check(arguments))
