#!/usr/bin/env python3
"""Lockstep's gRPC API spoken by another language: Python's grpcio.

    PYTHONPATH=STUBS python3 interop.py ADDR ADDR ADDR

STUBS holds what `python -m grpc_tools.protoc` generated from proto/; the
ADDRs are the client addresses of a freshly bootstrapped 3-node
cluster (scripts/interop-python starts one). It proves that a client built
from the protos with nothing but the stock Python tools can:

- see every node SERVING through the standard health service;
- run a job's whole life through a follower (which forwards to the leader):
  create a queue, enqueue with ids and groups, fetch one head per group,
  extend, ack, nack and fetch the job again as attempt 2, with the offsets,
  ids, groups, fences and attempts the protos promise;
- enqueue the same id again: DUPLICATE at the first offset for the same
  job, ID_CONFLICT for another payload, and nothing stored either way;
- repeat a fetch under a session and get the first answer back;
- get each status code the protos document for bad input (INVALID_ARGUMENT,
  NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION with and without
  x-lockstep-error, RESOURCE_EXHAUSTED, and per-item codes in AckResult)
  with a message naming the field or limit, and store nothing for it;
- discover the lockstep.v1 services by server reflection, over both
  grpc.reflection.v1 and grpc.reflection.v1alpha (last, so that a server
  without v1alpha still shows every other check).

UNAVAILABLE and ABORTED need faults, not bad input: tests/at_most_once.rs.
Prints one line per check and exits 1 at the first failure.
"""

import argparse
import sys
import time
import traceback

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
# grpcio-reflection ships stubs for v1alpha only; v1 renamed the package and
# kept every message field for field, so these messages serve both paths.
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from lockstep.v1 import admin_pb2 as pb_admin, admin_pb2_grpc as rpc_admin
from lockstep.v1 import queue_pb2 as pb, queue_pb2_grpc as rpc

CALL_S = 10  # deadline of every call
Q = "interop"
passed = ["(none yet)"]  # the last check that passed, named when a call fails


def ok(name):
    passed.append(name)
    print(f"ok    {name}", flush=True)


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL  {name}: {detail}", flush=True)
        sys.exit(1)
    ok(name)


def expect_error(name, call, request, code, *words, header=None):
    """`call(request)` must fail with `code`, a message holding every word,
    and, if given, trailing metadata x-lockstep-error = `header`."""
    try:
        answer = call(request, timeout=CALL_S)
    except grpc.RpcError as e:
        message = e.details() or ""
        missing = [w for w in words if w not in message]
        meta = dict(e.trailing_metadata() or ())
        check(f"{name}: {code.name}", e.code() == code and not missing
              and (header is None or meta.get("x-lockstep-error") == header),
              f"got {e.code().name} {message!r} {meta}, missing {missing}")
        return
    check(f"{name}: {code.name}", False, f"answered OK: {answer}")


def wait_for_leader(cluster):
    """The Cluster.Status of a node once it names a leader (within 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        status = cluster.Status(pb_admin.StatusRequest(), timeout=CALL_S)
        if status.HasField("leader_id"):
            return status
        check("a leader within 30 s", time.monotonic() < deadline, status)
        time.sleep(0.2)


def job(id, group, payload=None, **kw):
    return pb.Job(id=id, group=group, payload=payload or f"payload-{id}".encode(), **kw)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("addrs", nargs=3, help="the client addresses of the three nodes")
    args = parser.parse_args()
    channels = {addr: grpc.insecure_channel(addr) for addr in args.addrs}

    # Health, on every node.
    for addr, channel in channels.items():
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "lockstep.v1.Queue"):
            got = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_S)
            check(f"health {addr} {service or '(server)'}: SERVING",
                  got.status == health_pb2.HealthCheckResponse.SERVING, got)

    # The leader, from Cluster.Status; then work through a follower only.
    status = wait_for_leader(rpc_admin.ClusterStub(channels[args.addrs[0]]))
    addr_of = {m.id: m.client_addr for m in status.members}
    check("Cluster.Status lists 3 members, one leader",
          sorted(addr_of.values()) == sorted(args.addrs)
          and [m.role for m in status.members].count("leader") == 1, status)
    follower = next(a for i, a in sorted(addr_of.items()) if i != status.leader_id)
    ok(f"leader is node {status.leader_id} ({addr_of[status.leader_id]}); "
       f"everything below goes through {follower}")
    channel = channels[follower]
    queue, admin = rpc.QueueStub(channel), rpc_admin.AdminStub(channel)
    cluster = rpc_admin.ClusterStub(channel)

    config = pb_admin.QueueConfig(max_payload_bytes=1024, max_jobs=10)
    made = admin.CreateQueue(pb_admin.CreateQueueRequest(name=Q, config=config), timeout=CALL_S)
    again = admin.CreateQueue(pb_admin.CreateQueueRequest(name=Q, config=config), timeout=CALL_S)
    check("CreateQueue: created, then the same config again is no change",
          made.created and not again.created, (made, again))

    def enqueue(*jobs):
        request = pb.EnqueueRequest(queue=Q, jobs=jobs)
        return list(queue.Enqueue(request, timeout=CALL_S).results)

    def fetch(max=10, wait_ms=0, session=None):
        request = pb.FetchRequest(queue=Q, consumer="py", max=max, lease_ms=60_000,
                                  wait_ms=wait_ms, session=session)
        return sorted(queue.Fetch(request, timeout=CALL_S).deliveries, key=lambda d: d.offset)

    def ack(*items):
        request = pb.AckRequest(queue=Q, items=[pb.AckItem(offset=o, fence=f) for o, f in items])
        return list(queue.Ack(request, timeout=CALL_S).results)

    def next_offset():
        got = admin.GetQueue(pb_admin.GetQueueRequest(name=Q), timeout=CALL_S)
        return got.queue.stats.next_offset

    # Enqueue: dense offsets from 0, in request order, ids echoed.
    results = enqueue(job("a-1", "a"), job("a-2", "a"), job("b-1", "b"))
    check("Enqueue 3 jobs: CREATED at offsets 0, 1, 2 with their ids",
          [(r.outcome, r.offset, r.id) for r in results]
          == [(pb.CREATED, 0, "a-1"), (pb.CREATED, 1, "a-2"), (pb.CREATED, 2, "b-1")], results)
    dup = enqueue(job("a-1", "a"))[0]
    check("same id and payload again: DUPLICATE at offset 0, state READY",
          (dup.outcome, dup.offset, dup.state, dup.id)
          == (pb.DUPLICATE, 0, pb.JOB_STATE_READY, "a-1"), dup)
    conflict = enqueue(job("a-1", "a", b"another payload"))[0]
    check("same id, other payload: ID_CONFLICT naming offset 0",
          (conflict.outcome, conflict.offset) == (pb.ID_CONFLICT, 0), conflict)
    check("neither stored a job", next_offset() == 3, next_offset())

    # Fetch: one head per group, attempt 1, fences the Raft index (> 0).
    got = fetch()
    check("Fetch: the heads of a and b only (a-2 waits for a-1)",
          [(d.offset, d.id, d.group, d.payload, d.attempt) for d in got]
          == [(0, "a-1", "a", b"payload-a-1", 1), (2, "b-1", "b", b"payload-b-1", 1)], got)
    a1, b1 = got
    check("fences are set", a1.fence > 0 and b1.fence > 0, (a1.fence, b1.fence))
    check("nothing more to fetch while a and b are leased", fetch() == [])

    ext = queue.Extend(pb.ExtendRequest(queue=Q, offset=0, fence=a1.fence, lease_ms=120_000),
                       timeout=CALL_S)
    check("Extend: a later lease deadline", ext.lease_deadline_ms > a1.lease_deadline_ms,
          (ext.lease_deadline_ms, a1.lease_deadline_ms))
    acked = ack((2, b1.fence))
    check("Ack b-1: code OK", [(r.offset, r.code) for r in acked] == [(2, 0)], acked)

    nacked = queue.Nack(pb.NackRequest(queue=Q, offset=0, fence=a1.fence, delay_ms=1),
                        timeout=CALL_S)
    check("Nack a-1: not dead", not nacked.dead, nacked)
    again = fetch(max=1, wait_ms=5_000)
    check("Fetch again: a-1 as attempt 2 under a new, higher fence",
          [(d.offset, d.id, d.attempt) for d in again] == [(0, "a-1", 2)]
          and again[0].fence > a1.fence, again)
    a1_again = again[0]
    stale = ack((0, a1.fence))
    check("Ack with the old fence: item code FAILED_PRECONDITION, lease lost",
          stale[0].code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
          and "lease lost" in stale[0].message, stale)
    expect_error("Nack with the old fence", queue.Nack,
                 pb.NackRequest(queue=Q, offset=0, fence=a1.fence),
                 grpc.StatusCode.FAILED_PRECONDITION, "lease lost", "offset 0", f"fence {a1.fence}")
    expect_error("Extend with the old fence", queue.Extend,
                 pb.ExtendRequest(queue=Q, offset=0, fence=a1.fence, lease_ms=1_000),
                 grpc.StatusCode.FAILED_PRECONDITION, "lease lost")
    acked = ack((0, a1_again.fence), (99, 1))
    check("Ack a-1 and a never-issued offset: OK and NOT_FOUND per item",
          [r.code for r in acked] == [0, grpc.StatusCode.NOT_FOUND.value[0]]
          and "offset 99" in acked[1].message, acked)

    # Sessions: a retried fetch (same session and seq) gets its first answer.
    session = queue.OpenSession(pb.OpenSessionRequest(), timeout=CALL_S).session
    first = fetch(session=pb.Session(id=session, seq=1))
    retry = fetch(session=pb.Session(id=session, seq=1))
    check("Fetch a-2 under a session, retried: the same lease, granted once",
          [(d.offset, d.fence) for d in first] == [(d.offset, d.fence) for d in retry]
          and [d.id for d in first] == ["a-2"], (first, retry))
    ack((first[0].offset, first[0].fence))
    expect_error("a session never opened", queue.Fetch,
                 pb.FetchRequest(queue=Q, max=1, session=pb.Session(id=session + 1000, seq=1)),
                 grpc.StatusCode.FAILED_PRECONDITION, "session", "open a new session",
                 header="session-unknown")
    expect_error("session seq 0", queue.Fetch,
                 pb.FetchRequest(queue=Q, max=1, session=pb.Session(id=session, seq=0)),
                 grpc.StatusCode.INVALID_ARGUMENT, "session.seq")

    # Bad input: the documented code, a message naming the field, nothing stored.
    before = next_offset()
    bad = grpc.StatusCode.INVALID_ARGUMENT
    enq = queue.Enqueue
    expect_error("Enqueue to an empty queue name", enq,
                 pb.EnqueueRequest(queue="", jobs=[job("e", "g")]), bad, "`queue`", "empty")
    expect_error("Fetch from an empty queue name", queue.Fetch,
                 pb.FetchRequest(queue="", max=1), bad, "`queue`", "empty")
    expect_error("CreateQueue with a bad name", admin.CreateQueue,
                 pb_admin.CreateQueueRequest(name="bad name/.."),
                 bad, "`queue`", "A-Z a-z 0-9 . _ -")
    expect_error("an oversized payload in a batch", enq,
                 pb.EnqueueRequest(queue=Q, jobs=[job("fine", "g"), job("big", "g", b"x" * 2048)]),
                 bad, "jobs[1].payload", "max_payload_bytes = 1024")
    expect_error("an id present but empty", enq,
                 pb.EnqueueRequest(queue=Q, jobs=[pb.Job(id="", payload=b"x")]),
                 bad, "jobs[0].id", "empty")
    expect_error("priority 10", enq,
                 pb.EnqueueRequest(queue=Q, jobs=[job("p", "g", priority=10)]),
                 bad, "jobs[0].priority", "highest priority 9")
    expect_error("a control character in a group", enq,
                 pb.EnqueueRequest(queue=Q, jobs=[job("c", "g\x07")]),
                 bad, "jobs[0].group", "control")
    expect_error("an empty batch", enq, pb.EnqueueRequest(queue=Q), bad, "`jobs`", "empty")
    expect_error("Fetch max 0", queue.Fetch, pb.FetchRequest(queue=Q, max=0), bad, "`max`")
    expect_error("a lease over the 12 h ceiling", queue.Fetch,
                 pb.FetchRequest(queue=Q, max=1, lease_ms=13 * 3_600_000), bad, "lease_ms")
    expect_error("ListGroups limit 0 (1..1000)", admin.ListGroups,
                 pb_admin.ListGroupsRequest(queue=Q, limit=0), bad, "limit", "1..=1000")
    expect_error("Enqueue to an unknown queue", enq,
                 pb.EnqueueRequest(queue="nope", jobs=[job("n", "g")]),
                 grpc.StatusCode.NOT_FOUND, "queue `nope`")
    expect_error("GetQueue of an unknown queue", admin.GetQueue,
                 pb_admin.GetQueueRequest(name="nope"), grpc.StatusCode.NOT_FOUND, "queue `nope`")
    expect_error("CreateQueue again with another config", admin.CreateQueue,
                 pb_admin.CreateQueueRequest(name=Q, config=pb_admin.QueueConfig(max_jobs=11)),
                 grpc.StatusCode.ALREADY_EXISTS, f"`{Q}`", "different configuration")
    expect_error("a batch past the queue's max_jobs", enq,
                 pb.EnqueueRequest(queue=Q, jobs=[job(f"m{i}", "m") for i in range(11)]),
                 grpc.StatusCode.RESOURCE_EXHAUSTED, "`max_jobs` = 10")
    check("none of them stored a job", next_offset() == before, (before, next_offset()))
    boot = cluster.Bootstrap(pb_admin.BootstrapRequest(members=[
        pb_admin.JoinRequest(id=m.id, peer_addr=m.peer_addr, client_addr=m.client_addr)
        for m in status.members]), timeout=CALL_S)
    check("Bootstrap again on a formed cluster: harmless, initialized = false",
          not boot.initialized, boot)

    # Reflection, both protocol versions, on a follower: v1alpha through the
    # stock stub (what grpcio-reflection's own client uses), v1 through the
    # same messages on v1's path.
    reflection = {
        "grpc.reflection.v1.ServerReflection": channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString),
        "grpc.reflection.v1alpha.ServerReflection":
            reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo,
    }
    for name, info in reflection.items():
        asks = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="lockstep.v1.Queue")]
        try:
            listed, file = list(info(iter(asks), timeout=CALL_S))
        except grpc.RpcError as e:
            check(f"reflection {name}", False, f"{e.code().name} {e.details()!r}")
        services = {s.name for s in listed.list_services_response.service}
        want = {"lockstep.v1.Queue", "lockstep.v1.Admin", "lockstep.v1.Cluster"}
        check(f"reflection {name} lists {', '.join(sorted(want))}", want <= services, services)
        files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in file.file_descriptor_response.file_descriptor_proto]
        methods = {m.name for f in files for s in f.service if s.name == "Queue" for m in s.method}
        check(f"reflection {name} describes lockstep.v1.Queue",
              {"Enqueue", "Fetch", "Ack", "Nack", "Extend"} <= methods, methods)

    print("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:  # a call outside expect_error failed
        traceback.print_exc()
        print(f"FAIL  the call after `{passed[-1]}`: {e.code().name} {e.details()!r}",
              flush=True)
        sys.exit(1)
