"""Calls learnsync with nothing but server reflection, as grpcurl does: no generated learnsync code
and no .proto file.

1. Through reflection v1alpha (grpcio-reflection's ProtoReflectionDescriptorDatabase): list the
   services, load SyncService's file descriptors into a descriptor pool, build message classes
   with message_factory.GetMessageClass, and call the health check, ListConnections, GetStatus,
   CreateConnection and Configure with requests written as JSON (json_format), grpcurl style.
2. Through reflection v1 (grpcio-reflection ships only v1alpha stubs; v1 is the same protocol
   under another package, so its message classes are built here from v1alpha's descriptor):
   list the services and fetch the same file descriptors, which must be identical, then call
   GetConnection and GetStatus with classes built from the v1 descriptors.

Exits non-zero on the first mismatch. The last line of stdout is `RESULT <json>`. The bearer
token comes from the environment (LEARNSYNC_TOKEN).
"""

import argparse
import json
import uuid

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from grpc_checks import (
    bearer,
    error_details,
    expect,
    expect_equal,
    main,
    secret_from_env,
    target,
    wait_ready,
)

CALL_TIMEOUT = 30
SERVICE = "learnsync.v1.SyncService"
PROTO_FILE = "learnsync/v1/sync.proto"
METHODS = {
    "CreateConnection",
    "GetConnection",
    "ListConnections",
    "UpdateConnection",
    "DeleteConnection",
    "Configure",
    "Start",
    "Stop",
    "Resynchronize",
    "GetStatus",
    "GetRun",
    "ListRuns",
    "StreamLogs",
    "GetWebhookEndpoint",
    "RotateWebhookSecret",
    "GetMapping",
    "SetMapping",
}
AREAS = ["AREA_USERS", "AREA_COURSES", "AREA_ENROLLMENTS"]


def dynamic_method(channel, pool, full_name):
    """A unary callable for `package.Service.Method`, with request and response classes built
    from the pool's descriptors. Returns (request class, callable)."""
    method = pool.FindMethodByName(full_name)
    expect(not method.client_streaming, f"{full_name} is client-streaming")
    expect(not method.server_streaming, f"{full_name} is server-streaming")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    return request_class, call


def call_json(channel, pool, full_name, body, metadata=()):
    """grpcurl-style: a request written as JSON, the answer returned as JSON (a dict)."""
    request_class, call = dynamic_method(channel, pool, full_name)
    request = json_format.ParseDict(body, request_class())
    answer = call(request, metadata=metadata, timeout=CALL_TIMEOUT)
    return json_format.MessageToDict(answer)


def check_service(pool, label):
    """The service the pool describes is learnsync's, whole."""
    service = pool.FindServiceByName(SERVICE)
    expect_equal({m.name for m in service.methods}, METHODS, f"{label}: SyncService's methods")
    expect_equal(service.file.name, PROTO_FILE, f"{label}: SyncService's file")
    for method in service.methods:
        expect_equal(
            method.server_streaming,
            method.name == "StreamLogs",
            f"{label}: {method.name} server-streaming",
        )
    dependencies = {d.name for d in service.file.dependencies}
    for well_known in ("google/protobuf/timestamp.proto", "google/protobuf/duration.proto"):
        expect(well_known in dependencies, f"{label}: {PROTO_FILE} does not import {well_known}")
    area = pool.FindEnumTypeByName("learnsync.v1.Area")
    expect_equal(
        [v.name for v in area.values],
        ["AREA_UNSPECIFIED"] + AREAS,
        f"{label}: learnsync.v1.Area values",
    )
    return service


def file_proto(pool, name):
    """The FileDescriptorProto of one file of the pool, serialized (for comparisons)."""
    proto = descriptor_pb2.FileDescriptorProto()
    pool.FindFileByName(name).CopyToProto(proto)
    return proto.SerializeToString(deterministic=True)


def v1_reflection_classes():
    """grpc.reflection.v1's request and response classes. v1 is v1alpha under a new package, so
    its descriptor is v1alpha's with the package renamed."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha.DESCRIPTOR.CopyToProto(proto)
    expect_equal(proto.package, "grpc.reflection.v1alpha", "grpcio-reflection's package")
    proto.name = "learnsync_checks/grpc_reflection_v1.proto"
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")

    def renamed(name):
        return name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")

    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = renamed(field.type_name)
    for service in proto.service:
        service.ClearField("options")
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    request = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    )
    response = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    )
    return request, response


class V1Reflection:
    """A minimal reflection v1 client: one request per stream, like the library's v1alpha one."""

    def __init__(self, channel):
        self.request_class, response_class = v1_reflection_classes()
        self.stream = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=self.request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )

    def ask(self, **fields):
        responses = list(self.stream(iter([self.request_class(**fields)]), timeout=CALL_TIMEOUT))
        expect_equal(len(responses), 1, f"v1 reflection answers to {fields}")
        response = responses[0]
        expect(
            response.WhichOneof("message_response") != "error_response",
            f"v1 reflection refused {fields}: {response.error_response}",
        )
        return response

    def services(self):
        answer = self.ask(list_services="")
        return [s.name for s in answer.list_services_response.service]

    def pool_for_symbol(self, symbol):
        """A descriptor pool holding the file that defines `symbol` and every file it imports,
        each fetched through v1."""
        files = {}

        def add(response):
            for raw in response.file_descriptor_response.file_descriptor_proto:
                proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
                files.setdefault(proto.name, proto)

        add(self.ask(file_containing_symbol=symbol))
        missing = True
        while missing:
            missing = False
            for proto in list(files.values()):
                for dependency in proto.dependency:
                    if dependency not in files:
                        add(self.ask(file_by_filename=dependency))
                        missing = True
        pool = descriptor_pool.DescriptorPool()
        added = set()
        while len(added) < len(files):
            progress = False
            for name, proto in files.items():
                if name not in added and all(d in added for d in proto.dependency):
                    pool.Add(proto)
                    added.add(name)
                    progress = True
            expect(progress, f"v1 reflection: unresolvable imports among {sorted(files)}")
        return pool


def check(args):
    token = secret_from_env("LEARNSYNC_TOKEN")
    auth = bearer(token)
    channel = grpc.insecure_channel(target(args.endpoint))
    wait_ready(channel)

    # 1. Reflection v1alpha, through grpcio-reflection's descriptor database.
    database = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(database.get_services())
    print(f"v1alpha services: {services}")
    for name in (SERVICE, "grpc.health.v1.Health"):
        expect(name in services, f"reflection does not list {name}: {services}")
    pool = descriptor_pool.DescriptorPool(database)
    check_service(pool, "v1alpha")

    health = call_json(
        channel, pool, "grpc.health.v1.Health.Check", {"service": SERVICE}
    )
    expect_equal(health.get("status"), "SERVING", "health of learnsync.v1.SyncService")

    try:
        dynamic_method(channel, pool, f"{SERVICE}.ListConnections")[1](
            pool_message(pool, "learnsync.v1.ListConnectionsRequest"), timeout=CALL_TIMEOUT
        )
        expect(False, "ListConnections without a token was answered")
    except grpc.RpcError as error:
        expect_equal(error.code(), grpc.StatusCode.UNAUTHENTICATED, "ListConnections without a token")
        reason, domain, _ = error_details(error)
        expect_equal((reason, domain), ("UNAUTHENTICATED", "learnsync.dev"), "ErrorInfo")

    listed = call_json(channel, pool, f"{SERVICE}.ListConnections", {"pageSize": 1000}, auth)
    by_id = {c["id"]: c for c in listed.get("connections", [])}
    expect(args.connection_id in by_id, f"ListConnections misses {args.connection_id}: {listed}")
    expect_equal(
        by_id[args.connection_id].get("displayName"), args.display_name, "listed displayName"
    )
    expect("docebo" not in by_id[args.connection_id], "ListConnections returned credentials")

    status = call_json(
        channel, pool, f"{SERVICE}.GetStatus", {"connectionId": args.connection_id}, auth
    )
    expect_equal(status.get("connectionId"), args.connection_id, "GetStatus connectionId")
    expect_equal([a.get("area") for a in status.get("areas", [])], AREAS, "GetStatus areas")
    expect(
        not any(a.get("configured", False) for a in status["areas"]),
        f"areas configured on a new connection: {status}",
    )

    display_name = f"made by reflection {uuid.uuid4().hex[:8]}"
    created = call_json(
        channel,
        pool,
        f"{SERVICE}.CreateConnection",
        {
            "connection": {
                "displayName": display_name,
                "tenant": "acme",
                "docebo": {
                    "baseUrl": "https://reflection.docebosaas.com",
                    "clientId": "reflection-client",
                    "clientSecret": "reflection-secret-value",
                    "password": {"username": "superadmin", "password": "not-a-real-password"},
                },
                "salesforce": {
                    "loginUrl": "https://login.salesforce.com",
                    "clientId": "reflection-consumer-key",
                    "clientCredentials": {"clientSecret": "reflection-consumer-secret"},
                },
                "unenrollmentPolicy": "UNENROLLMENT_POLICY_DELETE",
            },
            "requestId": str(uuid.uuid4()),
        },
        auth,
    )
    created_id = created.get("id", "")
    expect(uuid.UUID(created_id), f"CreateConnection answered {created}")
    expect_equal(created.get("tenant"), "acme", "created tenant")
    expect_equal(created.get("unenrollmentPolicy"), "UNENROLLMENT_POLICY_DELETE", "created policy")
    expect_equal(
        created.get("credentialsInfo", {}).get("doceboGrant"), "password", "created doceboGrant"
    )
    expect("createTime" in created, f"created connection without createTime: {created}")

    configured = call_json(
        channel,
        pool,
        f"{SERVICE}.Configure",
        {
            "connectionId": created_id,
            "config": {
                "area": "AREA_COURSES",
                "enabled": True,
                "mode": "MODE_MANUAL",
                "courseCategoryIds": ["3", "7"],
            },
        },
        auth,
    )
    expect_equal(configured.get("area"), "AREA_COURSES", "configured area")
    expect_equal(configured.get("courseCategoryIds"), ["3", "7"], "configured courseCategoryIds")

    # 2. Reflection v1, the same descriptors through the other protocol version.
    v1 = V1Reflection(channel)
    v1_services = sorted(v1.services())
    print(f"v1 services: {v1_services}")
    # Each version may list its own reflection service; the rest must be the same.
    expect_equal(
        without_reflection(v1_services),
        without_reflection(services),
        "services listed by v1 vs v1alpha",
    )
    v1_pool = v1.pool_for_symbol(SERVICE)
    check_service(v1_pool, "v1")
    expect(
        file_proto(v1_pool, PROTO_FILE) == file_proto(pool, PROTO_FILE),
        f"{PROTO_FILE} differs between reflection v1 and v1alpha",
    )
    fetched = call_json(
        channel, v1_pool, f"{SERVICE}.GetConnection", {"connectionId": created_id}, auth
    )
    expect_equal(fetched.get("displayName"), display_name, "GetConnection through v1 classes")
    courses = call_json(
        channel,
        v1_pool,
        f"{SERVICE}.GetStatus",
        {"connectionId": created_id, "areas": ["AREA_COURSES"]},
        auth,
    )
    expect_equal(len(courses.get("areas", [])), 1, "GetStatus(courses) areas")
    area = courses["areas"][0]
    expect_equal(area.get("configured"), True, "courses configured")
    expect_equal(area.get("config", {}).get("courseCategoryIds"), ["3", "7"], "courses categories")
    channel.close()

    print("checks passed")
    result = {
        "services": services,
        "created_connection_id": created_id,
        "created_display_name": display_name,
    }
    print("RESULT " + json.dumps(result))


def without_reflection(services):
    return [s for s in services if not s.startswith("grpc.reflection.")]


def pool_message(pool, full_name):
    """An empty message of a type the pool knows."""
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", required=True, help="the server, e.g. http://127.0.0.1:50051")
    parser.add_argument("--connection-id", required=True, help="a connection that exists")
    parser.add_argument("--display-name", required=True, help="that connection's display name")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    main(lambda: check(arguments))
