"""One wrk run as a row of figures: what bench/vs-nginx.sh, bench/tls.sh and bench/blobserve.sh
read from the output each of their runs recorded (base64, one line per run)."""
import base64
import re

UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def seconds(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60}[unit]


def wrk_row(rnd, server, obj, cpu, raw, duration):
    """The figures of one wrk run (`raw`: its output, base64) that lasted `duration` seconds
    while the server used `cpu` seconds of CPU. `errors` counts non-2xx/3xx answers and
    socket errors: a run with any is not valid."""
    out = base64.b64decode(raw).decode()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    num, unit = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out).groups()
    gib = float(num) * UNITS[unit] / (1 << 30)
    p99 = re.search(r"99%\s+(\S+)", out)
    bad = int((re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out) or [0, 0])[1])
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad += sum(int(x) for x in errors.groups()) if errors else 0
    requests = rps * duration
    cpu = float(cpu)
    return dict(round=int(rnd), server=server, object=obj, rps=rps, gib_s=gib,
                p99_ms=seconds(p99.group(1)) * 1e3 if p99 else None, errors=bad, cpu_s=cpu,
                cpu_us_per_req=cpu / requests * 1e6 if requests else None,
                cpu_s_per_gib=cpu / (gib * duration) if gib else None)
