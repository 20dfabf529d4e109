"""A gRPC echo service and client (grpcio, no generated code), for the
proxy's gRPC test (tests/it/grpc.rs).

    python3 echo.py serve NAME        # prints its port, then serves on 127.0.0.1
    python3 echo.py call TARGET USERS  # calls through TARGET, prints JSON

The service `test.Echo` has `Unary` (answers NAME:REQUEST, with trailing
metadata x-backend: NAME; the request b"fail" aborts with NOT_FOUND) and
`Bidi` (answers each message NAME:MESSAGE) and `Slow` (three answers 0.6 s
apart). Messages are raw bytes.
"""

import json
import sys
import time
from concurrent import futures

import grpc


def serve(name):
    def unary(request, context):
        context.set_trailing_metadata((("x-backend", name),))
        if request == b"fail":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + name)
        return name.encode() + b":" + request

    def bidi(requests, context):
        for message in requests:
            yield name.encode() + b":" + message

    def slow(request, context):
        for i in range(3):
            yield b"%s:slow-%d" % (name.encode(), i)
            time.sleep(0.6)

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Slow": grpc.unary_stream_rpc_method_handler(slow),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def call(target, users):
    channel = grpc.insecure_channel(target)
    unary = channel.unary_unary("/test.Echo/Unary")
    bidi = channel.stream_stream("/test.Echo/Bidi")
    slow = channel.unary_stream("/test.Echo/Slow")
    result = {"unary": {}, "bidi": {}, "error": None, "slow": None}
    for user in users:
        seen = []
        for i in range(5):
            answer, call_ = unary.with_call(
                b"hello-%d" % i, metadata=(("x-user", user),), timeout=10
            )
            trailing = dict(call_.trailing_metadata())
            seen.append([answer.decode(), trailing.get("x-backend")])
        result["unary"][user] = seen
        answers = bidi(
            iter([b"m%d" % i for i in range(5)]),
            metadata=(("x-user", user),),
            timeout=10,
        )
        result["bidi"][user] = [a.decode() for a in answers]
    try:
        unary(b"fail", metadata=(("x-user", users[0]),), timeout=10)
    except grpc.RpcError as error:
        result["error"] = [error.code().name, error.details()]
    # A stream longer than the proxy's request_timeout: it bounds the wait
    # for the response head only.
    result["slow"] = [a.decode() for a in slow(b"", metadata=(("x-user", users[0]),), timeout=10)]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        call(sys.argv[2], sys.argv[3].split(","))
