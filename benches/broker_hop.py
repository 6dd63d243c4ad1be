#!/usr/bin/env python3
"""The broker's own latency for one hop of the saga, with nothing else running: a
persistent message published with a confirm to a durable quorum queue, and consumed.

    .venv/bin/python benches/broker_hop.py [COUNT]

AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2F) names the broker. Prints the
median and p99 of publish → confirm and of publish → delivered, in ms, for COUNT messages
(default 200) sent 20 ms apart. A quorum queue confirms and delivers a message once it is
in its log on disk, so this is the floor under each of a saga's eleven hops.
"""

import os
import statistics
import sys
import time
import uuid

import pika


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    params = pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    queue = f"bench.broker-hop.{uuid.uuid4().hex[:8]}"
    publisher = pika.BlockingConnection(params)
    consumer = pika.BlockingConnection(params)
    pub = publisher.channel()
    sub = consumer.channel()
    pub.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    pub.confirm_delivery()
    confirmed, delivered = [], []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            pub.basic_publish("", queue, b"x", pika.BasicProperties(delivery_mode=2))
            confirmed.append((time.perf_counter() - t0) * 1000)
            while True:
                method, _props, _body = sub.basic_get(queue)
                if method:
                    break
            delivered.append((time.perf_counter() - t0) * 1000)
            sub.basic_ack(method.delivery_tag)
            time.sleep(0.02)
    finally:
        pub.queue_delete(queue)
        publisher.close()
        consumer.close()
    for name, values in (("publish → confirm", confirmed), ("publish → delivered", delivered)):
        print(f"{name:20} p50 {statistics.median(values):5.2f} ms   p99 {percentile(values, 0.99):5.2f} ms")


if __name__ == "__main__":
    main()
