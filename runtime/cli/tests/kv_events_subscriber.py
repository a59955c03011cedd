"""A KV-event subscriber as vLLM's users write one: pyzmq SUB + msgpack.

    python kv_events_subscriber.py ENDPOINT SECONDS

Connects to the publisher, prints `connected`, then one JSON line per message for SECONDS:
{"frames": number of frames, "topic": ..., "seq": ..., "batch": the decoded payload}.
"""
import json
import sys
import time

import msgpack
import zmq

endpoint, seconds = sys.argv[1], float(sys.argv[2])
sock = zmq.Context.instance().socket(zmq.SUB)
sock.connect(endpoint)
sock.setsockopt(zmq.SUBSCRIBE, b"")
print("connected", flush=True)
deadline = time.time() + seconds
while time.time() < deadline:
    if not sock.poll(100):
        continue
    frames = sock.recv_multipart()
    out = {"frames": len(frames)}
    if len(frames) == 3:
        topic, seq, payload = frames
        out.update(topic=topic.decode(), seq=int.from_bytes(seq, "big", signed=True),
                   batch=msgpack.unpackb(payload, raw=False))
    print(json.dumps(out), flush=True)
