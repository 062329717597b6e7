#!/usr/bin/env python3
"""A user-webhook receiver for benchmarks: counts the status callbacks ferry relays.

    python3 benches/webhook_sink.py PORT_FILE

Binds 127.0.0.1:0, writes the port to PORT_FILE, then answers every POST 200 (HTTP/1.1,
keep-alive) after counting the statuses of its body (the On-Premises shape,
{"statuses": [{"id", "status", ...}]}, or the Cloud shape, entry[].changes[].value.statuses[]).
`GET /stats` answers JSON: posts, statuses, unique (id, status) pairs, repeats, and `by_status`.
asyncio with no dependencies, so the benchmark runs wherever python3 does.
"""

import asyncio
import json
import os
import sys

posts = 0
statuses = 0
repeats = 0
seen = set()
by_status = {}


def count(body):
    global statuses, repeats
    doc = json.loads(body)
    found = list(doc.get("statuses") or [])
    for entry in doc.get("entry") or []:
        for change in entry.get("changes") or []:
            found.extend((change.get("value") or {}).get("statuses") or [])
    for s in found:
        statuses += 1
        key = (s.get("id"), s.get("status"))
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        by_status[key[1]] = by_status.get(key[1], 0) + 1


def stats():
    return json.dumps({"posts": posts, "statuses": statuses, "unique": len(seen), "repeats": repeats,
                       "by_status": by_status}).encode()


async def serve(reader, writer):
    global posts
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            if method == "POST":
                posts += 1
                try:
                    count(body)
                    answer = b""
                    status = b"200 OK"
                except (ValueError, AttributeError) as e:
                    answer = str(e).encode()
                    status = b"400 Bad Request"
            elif path == "/stats":
                answer, status = stats(), b"200 OK"
            else:
                answer, status = b"", b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
                         + str(len(answer)).encode() + b"\r\n\r\n" + answer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(port_file):
    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
