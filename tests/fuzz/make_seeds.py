#!/usr/bin/env python3
"""Writes the seed corpus of the binary fuzz targets (envelope, headers):
inputs in the layout fuzz.h and each target's comment describe, made from
readable descriptions here. Run it after changing that layout:

    python3 tests/fuzz/make_seeds.py

It writes a few DLQ export lines (dlq_import) too. The other text
targets' seeds (parse, config) are plain files under corpus/ written by
hand."""
import base64
import json
import os
import struct
import sys

sys.setrecursionlimit(10000)

HERE = os.path.dirname(os.path.abspath(__file__))

# fz_value()'s kind byte: an index into fuzz.c's fz_kinds.
KINDS = ["bool", "i8", "u8", "i16", "u16", "i32", "u32", "i64", "u64", "f32", "f64",
         "decimal", "string", "bytes", "timestamp", "void", "array", "table"]


def short(b):
    b = b.encode() if isinstance(b, str) else b
    assert len(b) < 256
    return bytes([len(b)]) + b


def long_(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<H", len(b)) + b


def value(kind, v=None):
    out = bytes([KINDS.index(kind)])
    if kind == "bool":
        return out + bytes([1 if v else 0])
    ints = {"i8": "<b", "u8": "<B", "i16": "<h", "u16": "<H", "i32": "<i", "u32": "<I",
            "i64": "<q", "u64": "<Q", "timestamp": "<Q", "f32": "<f", "f64": "<d"}
    if kind in ints:
        return out + struct.pack(ints[kind], v)
    if kind == "decimal":
        return out + struct.pack("<BI", v[0], v[1])
    if kind in ("string", "bytes"):
        return out + long_(v)
    if kind == "void":
        return out
    if kind == "array":
        return out + bytes([len(v)]) + b"".join(value(*x) for x in v)
    if kind == "table":
        return out + table(v)
    raise ValueError(kind)


def table(entries):
    return bytes([len(entries)]) + b"".join(short(k) + value(*v) for k, v in entries)


# AMQP basic property flags.
F = {"content_type": 1 << 15, "content_encoding": 1 << 14, "headers": 1 << 13,
     "delivery_mode": 1 << 12, "priority": 1 << 11, "correlation_id": 1 << 10,
     "reply_to": 1 << 9, "expiration": 1 << 8, "message_id": 1 << 7, "timestamp": 1 << 6,
     "type": 1 << 5, "user_id": 1 << 4, "app_id": 1 << 3, "cluster_id": 1 << 2}
ORDER = ["content_type", "content_encoding", "headers", "delivery_mode", "priority",
         "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
         "user_id", "app_id", "cluster_id"]


def props(**p):
    flags = sum(F[k] for k in p)
    out = struct.pack("<H", flags)
    for k in ORDER:
        if k not in p:
            continue
        v = p[k]
        if k == "headers":
            out += table(v)
        elif k in ("delivery_mode", "priority"):
            out += bytes([v])
        elif k == "timestamp":
            out += struct.pack("<Q", v)
        else:
            out += short(v)
    return out


X_DEATH = ("array", [("table", [
    ("count", ("i64", 1)), ("reason", ("string", "rejected")), ("queue", ("string", "cw.orders")),
    ("time", ("timestamp", 1764020000)), ("exchange", ("string", "cw.tasks")),
    ("routing-keys", ("array", [("string", "payment.refund")]))])])

FAILURE = [
    ("cw-error", ("string", "card processor said: unknown payment \u2713")),
    ("cw-error-class", ("string", "permanent")),
    ("cw-failed-at", ("string", "2026-11-24T21:50:03.123Z")),
    ("cw-handler", ("string", "refund 1.0.0 (payment.refund)")),
    ("cw-worker", ("string", "host-1/4242")),
    ("cw-queue", ("string", "cw.orders")),
    ("cw-original-exchange", ("string", "cw.tasks")),
    ("cw-original-routing-key", ("string", "payment.refund")),
    ("cw-attempt", ("i32", 5)),
]

EVERY_KIND = [
    ("b", ("bool", True)), ("i8", ("i8", -5)), ("u8", ("u8", 250)), ("i16", ("i16", -300)),
    ("u16", ("u16", 65000)), ("i32", ("i32", -70000)), ("u32", ("u32", 4000000000)),
    ("i64", ("i64", -(1 << 62))), ("u64", ("u64", (1 << 64) - 1)), ("f32", ("f32", 1.5)),
    ("f64", ("f64", float("nan"))), ("inf", ("f64", float("-inf"))), ("dec", ("decimal", (2, 12345))),
    ("s", ("string", "caf\u00e9")), ("latin1", ("string", b"caf\xe9")), ("bin", ("bytes", b"\x00\x01\xff")),
    ("ts", ("timestamp", 1764020000)), ("v", ("void",)),
    ("arr", ("array", [("i32", 1), ("string", "x"), ("void",), ("table", [("k", ("bool", False))])])),
    ("tbl", ("table", [("inner", ("table", [("deep", ("u8", 1))]))])),
    ("x-delivery-count", ("i64", 3)),
]

ID = "7d3f1c2a-6b1e-4c1a-9f57-0a8e6f1b2c3d"


def envelope(flags, mid=None, typ=None, corr=None, ct=None, headers=None, body=b""):
    out = bytes([flags])
    for v in (mid, typ, corr, ct):
        if v is not None:
            out += short(v)
    if headers is not None:
        out += table(headers)
    return out + (body.encode() if isinstance(body, str) else body)


def deep_table(depth):
    v = ("u8", 1)
    for _ in range(depth):
        v = ("table", [("t", v)])
    return [("deep", v)]


ENVELOPE = {
    "valid": envelope(0x0f, ID, "payment.refund", "saga-42", "application/json",
                      body='{"order_id": 42, "amount_cents": 1999}'),
    "attempt": envelope(0x1f, ID, "payment.refund", "saga-42", "application/json; charset=utf-8",
                        [("cw-attempt", ("i32", 3))], '{"a":[1,2,{"b":null}]}'),
    "attempt-negative": envelope(0x13, ID, "a", headers=[("cw-attempt", ("i8", -1))], body="{}"),
    "attempt-huge": envelope(0x13, ID, "a", headers=[("cw-attempt", ("u64", (1 << 64) - 1))], body="{}"),
    "attempt-string": envelope(0x13, ID, "a", headers=[("cw-attempt", ("string", "3"))], body="{}"),
    "no-id": envelope(0x0e, typ="payment.refund", corr="saga", ct="application/json", body="{}"),
    "empty-id": envelope(0x03, "", "a", body="{}"),
    "unknown-type": envelope(0x03, ID, "nobody.handles.this", body="{}"),
    "bad-type": envelope(0x03, ID, "pay ment", body="{}"),
    "wrong-content-type": envelope(0x0b, ID, "a", ct="text/plain", body="{}"),
    "not-json": envelope(0x03, ID, "a", body="refund order 42"),
    "truncated": envelope(0x03, ID, "a", body='{"order_id": 4'),
    "scalar": envelope(0x03, ID, "a", body="12"),
    "null": envelope(0x03, ID, "a", body="null"),
    "trailing": envelope(0x03, ID, "a", body='{} {}'),
    "nul-byte": envelope(0x03, ID, "a", body=b'{"a":"\x00"}'),
    "bad-utf8": envelope(0x03, ID, "a", body=b'{"a":"\xc3\x28"}'),
    "deep": envelope(0x03, ID, "a", body="[" * 100 + "]" * 100),
    "too-large": envelope(0x43, ID, "a", body='{"pad":"' + "x" * 100 + '"}'),
    "every-kind": envelope(0x37, ID, "stock.restock", "", headers=EVERY_KIND, body="{ }"),
}

HEADERS = {
    "failure": b"\x00" + short("cw.dlx") + short("cw.dlq.orders") + props(
        content_type="application/json", headers=FAILURE, delivery_mode=2,
        correlation_id="saga-42", message_id=ID, timestamp=1764020000, type="payment.refund")
        + b'{"order_id":42}',
    "x-death": b"\x00" + short("") + short("cw.dlq.orders") + props(
        headers=[("x-death", X_DEATH), ("x-first-death-reason", ("string", "expired")),
                 ("x-first-death-queue", ("string", "cw.orders")),
                 ("x-first-death-exchange", ("string", "cw.tasks"))],
        message_id=ID, type="payment.refund") + b"{}",
    "every-kind": b"\x01" + short("cw.dlx") + short("rk") + props(
        headers=EVERY_KIND + [("cw-replayed", ("u16", 2))], message_id=ID, priority=9,
        reply_to="r", expiration="60000", user_id="guest", app_id="app", cluster_id="c",
        content_encoding="gzip") + b"\x00\xff",
    "deep": b"\x00" + short("") + short("") + props(headers=deep_table(260)) + b"",
    "deep-256": b"\x00" + short("") + short("") + props(headers=deep_table(256)) + b"",
    "deep-257": b"\x00" + short("") + short("") + props(headers=deep_table(257)) + b"",
    "empty": b"\x00\x00\x00\x00\x00",
    "bad-time": b"\x00" + short("x") + short("y") + props(
        headers=[("cw-failed-at", ("string", "1969-12-31T23:59:59.999Z")),
                 ("cw-attempt", ("u64", 1 << 63)), ("cw-replayed", ("f64", 2.0))],
        message_id="m") + b"{}",
}


def line(headers=None, body=b'{"order_id":42}', **props):
    p = dict(props)
    if headers is not None:
        p["headers"] = headers
    o = {"format": "compworker-dlq", "version": 1, "exchange": "cw.dlx",
         "routing_key": "cw.dlq.orders", "properties": p,
         "body_base64": base64.b64encode(body).decode()}
    return json.dumps(o, separators=(",", ":"), ensure_ascii=False).encode()


def h(key, typ, val=None):
    e = {"key": key, "type": typ}
    if typ != "void":
        e["value"] = val
    return e


EVERY_TYPE = [
    h("b", "bool", True), h("i8", "i8", -128), h("u8", "u8", 255), h("i16", "i16", -32768),
    h("u16", "u16", 65535), h("i32", "i32", -2147483648), h("u32", "u32", 4294967295),
    h("i64", "i64", -9223372036854775808), h("u64", "u64", 18446744073709551615),
    h("f32", "f32", 1.5), h("f64", "f64", 0.1), h("nan", "f64", {"bits": "7ff8000000000000"}),
    h("inf32", "f32", {"bits": "ff800000"}), h("dec", "decimal", {"decimals": 2, "value": 12345}),
    h("s", "string", "caf\u00e9 \u2713"), h({"base64": "Y2Fm6Q=="}, "string", {"base64": "Y2Fm6Q=="}),
    h("bin", "bytes", {"base64": "AAH/"}), h("ts", "timestamp", 1764020000), h("v", "void"),
    h("arr", "array", [{"type": "i32", "value": 1}, {"type": "void"},
                       {"type": "table", "value": [h("k", "bool", False)]}]),
    h("x-delivery-count", "i64", 2),
]

DLQ_IMPORT = {
    "full": line([h("cw-error", "string", "unknown payment"), h("cw-error-class", "string", "permanent"),
                  h("cw-failed-at", "string", "2026-11-24T21:50:03.123Z"), h("cw-attempt", "i32", 5)],
                 content_type="application/json", delivery_mode=2, correlation_id="saga-42",
                 message_id=ID, timestamp=1764020000, type="payment.refund"),
    "every-type": line(EVERY_TYPE, body=b"\x00\xff", priority=9, reply_to="r", expiration="60000",
                       user_id="guest", app_id="app", cluster_id="c", content_encoding="gzip",
                       message_id={"base64": "AAE="}),
    "x-death": line([h("x-death", "array", [{"type": "table", "value": [
        h("count", "i64", 1), h("reason", "string", "rejected"), h("queue", "string", "cw.orders"),
        h("time", "timestamp", 1764020000), h("exchange", "string", "cw.tasks"),
        h("routing-keys", "array", [{"type": "string", "value": "payment.refund"}])]}])],
        message_id=ID, type="payment.refund"),
    "empty": line(body=b""),
    "wrong-format": b'{"format":"other","version":1,"properties":{},"body_base64":""}',
    "truncated": b'{"format":"compworker-dlq","version":1,"properties":{"headers":[',
    "bad-base64": b'{"format":"compworker-dlq","version":1,"properties":{},"body_base64":"abc"}',
}


# Inputs of bugs found, kept under regressions/ (the others there are the
# fuzzers' own files).
ENVELOPE_REGRESSIONS = {
    # Its first half ends inside the escape after a high surrogate: json-c
    # 0.16 kept that past json_tokener_reset(), and the reused validator then
    # read the whole body's first \u escape wrong.
    "stale-surrogate": envelope(0x03, ID, "a", body='{"k":"\\ud83d\\u0041xxxxxxxxxx"}'),
}


def write(target, seeds, where="corpus"):
    d = os.path.join(HERE, where, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    write("envelope", ENVELOPE)
    write("envelope", ENVELOPE_REGRESSIONS, "regressions")
    write("headers", HEADERS)
    write("dlq_import", DLQ_IMPORT)
