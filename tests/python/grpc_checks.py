"""Helpers shared by the Python client checks: where to connect, the bearer token, assertions
that name what they saw, and a reader for the `google.rpc.Status` in `grpc-status-details-bin`.

Nothing here knows learnsync's messages: the checks get those from generated code or from
server reflection.
"""

import os
import sys

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory


class CheckFailed(Exception):
    """A check saw something other than what it expected."""


def expect(condition, message):
    """Fails the check with `message` unless `condition` holds."""
    if not condition:
        raise CheckFailed(message)


def expect_equal(actual, expected, what):
    """Fails the check unless `actual == expected`, naming `what` and both values."""
    if actual != expected:
        raise CheckFailed(f"{what}: expected {expected!r}, got {actual!r}")


def target(endpoint):
    """`http://127.0.0.1:50051` or `127.0.0.1:50051` -> `127.0.0.1:50051` (grpc's target form)."""
    for scheme in ("http://", "https://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme):]
    return endpoint.rstrip("/")


def secret_from_env(name):
    """A secret from the environment (never argv); fails clearly when it is missing."""
    value = os.environ.get(name, "")
    if not value:
        raise CheckFailed(f"{name} is not set: secrets are passed through the environment")
    return value


def bearer(token):
    """The call metadata learnsync requires."""
    return (("authorization", f"Bearer {token}"),)


def wait_ready(channel, seconds=20):
    """Waits until the channel has connected, or fails naming the target."""
    try:
        grpc.channel_ready_future(channel).result(timeout=seconds)
    except grpc.FutureTimeoutError as error:
        raise CheckFailed(f"the server did not accept a connection within {seconds} s") from error


def _rpc_status_pool():
    """A descriptor pool holding `google.rpc.Status`, `ErrorInfo` and `PreconditionFailure`,
    described by hand (the listed packages do not ship googleapis' protos). Only the fields the
    checks read are declared; the rest are skipped as unknown fields when parsing."""
    pool = descriptor_pool.DescriptorPool()
    any_file = descriptor_pb2.FileDescriptorProto()
    any_pb2.DESCRIPTOR.CopyToProto(any_file)
    pool.Add(any_file)

    field = descriptor_pb2.FieldDescriptorProto
    rpc = descriptor_pb2.FileDescriptorProto(
        name="learnsync_checks/google_rpc_subset.proto",
        package="google.rpc",
        syntax="proto3",
        dependency=["google/protobuf/any.proto"],
    )
    status = rpc.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    status.field.add(
        name="details",
        number=3,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_REPEATED,
        type_name=".google.protobuf.Any",
    )
    info = rpc.message_type.add(name="ErrorInfo")
    info.field.add(name="reason", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    info.field.add(name="domain", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    failure = rpc.message_type.add(name="PreconditionFailure")
    violation = failure.nested_type.add(name="Violation")
    for number, name in enumerate(("type", "subject", "description"), start=1):
        violation.field.add(
            name=name, number=number, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL
        )
    failure.field.add(
        name="violations",
        number=1,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_REPEATED,
        type_name=".google.rpc.PreconditionFailure.Violation",
    )
    pool.Add(rpc)
    return pool


_RPC_POOL = _rpc_status_pool()
_Status = message_factory.GetMessageClass(_RPC_POOL.FindMessageTypeByName("google.rpc.Status"))
_ErrorInfo = message_factory.GetMessageClass(
    _RPC_POOL.FindMessageTypeByName("google.rpc.ErrorInfo")
)
_PreconditionFailure = message_factory.GetMessageClass(
    _RPC_POOL.FindMessageTypeByName("google.rpc.PreconditionFailure")
)


def error_details(error):
    """Reads a failed call's `grpc-status-details-bin` trailer: returns
    `(error_info_reason, error_info_domain, [precondition violation types])`."""
    expect(isinstance(error, grpc.Call), f"not a finished call: {error!r}")
    raw = None
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            raw = value
    expect(raw is not None, f"no grpc-status-details-bin trailer on {error.code()}: {error.details()}")
    status = _Status.FromString(raw)
    expect_equal(status.code, error.code().value[0], "google.rpc.Status code vs the call's status")
    reason, domain, preconditions = None, None, []
    for detail in status.details:
        if detail.Is(_ErrorInfo.DESCRIPTOR):
            info = _ErrorInfo()
            detail.Unpack(info)
            reason, domain = info.reason, info.domain
        elif detail.Is(_PreconditionFailure.DESCRIPTOR):
            failure = _PreconditionFailure()
            detail.Unpack(failure)
            preconditions.extend(v.type for v in failure.violations)
    return reason, domain, preconditions


def expect_refused(call, code, reason, what):
    """Runs `call`, which must fail with `code` and an `ErrorInfo` of domain `learnsync.dev` and
    `reason`; returns the precondition violation types."""
    try:
        answer = call()
    except grpc.RpcError as error:
        expect_equal(error.code(), code, f"{what}: status code ({error.details()})")
        got_reason, domain, preconditions = error_details(error)
        expect_equal(got_reason, reason, f"{what}: ErrorInfo.reason")
        expect_equal(domain, "learnsync.dev", f"{what}: ErrorInfo.domain")
        return preconditions
    raise CheckFailed(f"{what}: expected {code}, the call answered {answer!r}")


def main(run):
    """Runs a check function; a failed check or an unexpected gRPC error exits non-zero."""
    try:
        run()
    except CheckFailed as failure:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
    except grpc.RpcError as error:
        print(f"UNEXPECTED RPC ERROR: {error.code()}: {error.details()}", file=sys.stderr)
        sys.exit(1)
