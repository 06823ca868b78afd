#!/usr/bin/env python3
"""Baseline for the private mode (issue 14): OpenMined PSI (PyPI `openmined.psi`, imported as
`private_set_intersection`; ECDH over P-256 with BoringSSL) on the same set sizes as ours.

One protocol run per data structure (GCS, and the Bloom filter the library also offers):
  server  CreateWithNewKey, CreateSetupMessage(fpr, C, server items, ds)  -> setup message
  client  CreateWithNewKey, CreateRequest(client items)                   -> request
  server  ProcessRequest(request)                                         -> response
  client  GetIntersection(setup, response) (GetIntersectionSize with --size-only)
Every step is timed with time.perf_counter (wall) and time.process_time (CPU of the whole
process, all threads); CPU/wall above 1 would mean the library used more than one core.
Message sizes are the serialised protobufs, as they would go over the wire. The times are those
of the library's Python API, so they include its protobuf round trip (C++ save, Python parse).
The query steps run --queries times for each setup (a fresh client key each time; the median is
reported) and the whole thing --repeat times (medians over repeats; setup dominates).
The reported intersection is checked against the true one: any missed item, or more false
positives than the FPR makes plausible (Poisson tail 1e-9), fails the run (exit 1).

Items are E.164-like strings, "+1" and ten digits, drawn with a fixed seed (--seed). About half
of the client items are in the server set.

  openmined_psi_bench.py --server-items N --client-items C --fpr F [--repeat R] [--json]
  # --ds gcs,bloom (also: raw)  --queries Q  --seed S  --size-only
With --json the table goes to stderr and one JSON object to stdout.
"""
import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import time
from importlib import metadata

import private_set_intersection.python as psi

DATA_STRUCTURES = {
    "gcs": psi.DataStructure.GCS,
    "bloom": psi.DataStructure.BLOOM_FILTER,
    "raw": psi.DataStructure.RAW,
}


def make_items(n_server, n_client, seed):
    """n_server distinct numbers, and n_client numbers of which n_client // 2 are server items."""
    rng = random.Random(seed)
    space = 10**10
    if n_server + n_client > space // 2:
        sys.exit("too many items for the number space")
    server_nums = rng.sample(range(space), n_server)
    server_items = [f"+1{x:010d}" for x in server_nums]
    in_server = min(n_client // 2, n_server)
    client = [server_items[i] for i in rng.sample(range(n_server), in_server)]
    server_set = set(server_nums)
    while len(client) < n_client:
        x = rng.randrange(space)
        if x not in server_set:
            server_set.add(x)  # also keeps the client's outsiders distinct
            client.append(f"+1{x:010d}")
    rng.shuffle(client)
    return server_items, client


def allowed_false_positives(fpr, tail=1e-9):
    """Smallest k with P(X > k) < tail for X ~ Poisson(fpr): the library's fpr is the chance
    that a whole query of num_client_inputs items has a false positive."""
    lam, k, term = max(fpr, 1e-300), 0, math.exp(-max(fpr, 1e-300))
    cdf = term
    while 1 - cdf >= tail and k < 10**6:
        k += 1
        term *= lam / k
        cdf += term
    return k


def timed(fn, *args):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - w0, time.process_time() - c0


def run_once(ds_name, fpr, server_items, client_items, truth, queries, size_only):
    reveal = not size_only
    ds = DATA_STRUCTURES[ds_name]
    server = psi.server.CreateWithNewKey(reveal)
    setup, setup_wall, setup_cpu = timed(server.CreateSetupMessage, fpr, len(client_items),
                                         server_items, ds)
    setup_bytes = len(setup.SerializeToString())
    qs = []
    for _ in range(queries):
        client = psi.client.CreateWithNewKey(reveal)
        request, req_wall, req_cpu = timed(client.CreateRequest, client_items)
        response, proc_wall, proc_cpu = timed(server.ProcessRequest, request)
        if size_only:
            got, fin_wall, fin_cpu = timed(client.GetIntersectionSize, setup, response)
            missed, false_pos = max(0, len(truth) - got), max(0, got - len(truth))
        else:
            got, fin_wall, fin_cpu = timed(client.GetIntersection, setup, response)
            got = set(got)
            missed, false_pos = len(truth - got), len(got - truth)
        qs.append({
            "request_bytes": len(request.SerializeToString()),
            "response_bytes": len(response.SerializeToString()),
            "request_wall_s": req_wall, "request_cpu_s": req_cpu,
            "process_wall_s": proc_wall, "process_cpu_s": proc_cpu,
            "finalise_wall_s": fin_wall, "finalise_cpu_s": fin_cpu,
            "missed": missed, "false_positives": false_pos,
        })
    return {"setup_wall_s": setup_wall, "setup_cpu_s": setup_cpu, "setup_bytes": setup_bytes,
            "queries": qs}


def summarise(ds_name, runs, n, c, fpr):
    med = statistics.median
    qs = [q for r in runs for q in r["queries"]]
    setup_wall = med(r["setup_wall_s"] for r in runs)
    setup_cpu = med(r["setup_cpu_s"] for r in runs)
    proc_wall = med(q["process_wall_s"] for q in qs)
    proc_cpu = med(q["process_cpu_s"] for q in qs)
    client_wall = med(q["request_wall_s"] + q["finalise_wall_s"] for q in qs)
    client_cpu = med(q["request_cpu_s"] + q["finalise_cpu_s"] for q in qs)
    wall_all = sum(r["setup_wall_s"] for r in runs) + sum(
        q["request_wall_s"] + q["process_wall_s"] + q["finalise_wall_s"] for q in qs)
    cpu_all = sum(r["setup_cpu_s"] for r in runs) + sum(
        q["request_cpu_s"] + q["process_cpu_s"] + q["finalise_cpu_s"] for q in qs)
    return {
        "data_structure": ds_name,
        "fpr": fpr, "server_items": n, "client_items": c,
        "setups": len(runs), "queries": len(qs),
        "setup_us_per_server_item": 1e6 * setup_wall / n,
        "setup_cpu_us_per_server_item": 1e6 * setup_cpu / n,
        "setup_bytes": med(r["setup_bytes"] for r in runs),
        "setup_bytes_per_server_item": med(r["setup_bytes"] for r in runs) / n,
        "request_bytes": med(q["request_bytes"] for q in qs),
        "response_bytes": med(q["response_bytes"] for q in qs),
        "server_us_per_client_item": 1e6 * proc_wall / c,
        "server_cpu_us_per_client_item": 1e6 * proc_cpu / c,
        "client_request_ms": 1e3 * med(q["request_wall_s"] for q in qs),
        "client_finalise_ms": 1e3 * med(q["finalise_wall_s"] for q in qs),
        "client_total_ms": 1e3 * client_wall,
        "client_total_cpu_ms": 1e3 * client_cpu,
        "cpu_over_wall": cpu_all / wall_all if wall_all > 0 else None,
        "missed": sum(q["missed"] for q in qs),
        "false_positives": sum(q["false_positives"] for q in qs),
    }


def table(report, out):
    p = report["params"]
    print(f"OpenMined PSI {report['version']} ({report['package']}), N={p['server_items']:,} "
          f"server items, C={p['client_items']:,} client items ({p['true_intersection']:,} in "
          f"common), fpr={p['fpr']:g}, {p['mode']}, cores allowed {report['cores_allowed']}",
          file=out)
    rows = [
        ("setup, us/server item (wall)", "setup_us_per_server_item", "{:.2f}"),
        ("setup, us/server item (CPU)", "setup_cpu_us_per_server_item", "{:.2f}"),
        ("setup message, bytes", "setup_bytes", "{:,.0f}"),
        ("setup message, bytes/server item", "setup_bytes_per_server_item", "{:.3f}"),
        ("client request, bytes", "request_bytes", "{:,.0f}"),
        ("server response, bytes", "response_bytes", "{:,.0f}"),
        ("server ProcessRequest, us/client item (wall)", "server_us_per_client_item", "{:.2f}"),
        ("server ProcessRequest, us/client item (CPU)", "server_cpu_us_per_client_item", "{:.2f}"),
        ("client CreateRequest, ms", "client_request_ms", "{:.1f}"),
        ("client finalise (GetIntersection), ms", "client_finalise_ms", "{:.1f}"),
        ("client total, ms (wall)", "client_total_ms", "{:.1f}"),
        ("client total, ms (CPU)", "client_total_cpu_ms", "{:.1f}"),
        ("CPU/wall over the run (>1: more than one core)", "cpu_over_wall", "{:.3f}"),
        ("setups x queries", None, None),
        ("missed / false positives (all queries)", None, None),
    ]
    res = report["results"]
    w = max(len(r[0]) for r in rows)
    print(f"  {'':<{w}}" + "".join(f"{r['data_structure']:>16}" for r in res), file=out)
    for label, key, fmt in rows:
        if key:
            cells = [fmt.format(r[key]) for r in res]
        elif label.startswith("setups"):
            cells = [f"{r['setups']} x {r['queries'] // r['setups']}" for r in res]
        else:
            cells = [f"{r['missed']} / {r['false_positives']}" for r in res]
        print(f"  {label:<{w}}" + "".join(f"{c:>16}" for c in cells), file=out)
    print(f"  peak RSS {report['peak_rss_mb']:.0f} MB; item generation {p['generate_s']:.1f} s",
          file=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server-items", type=int, required=True)
    ap.add_argument("--client-items", type=int, required=True)
    ap.add_argument("--fpr", type=float, required=True)
    ap.add_argument("--repeat", type=int, default=1, help="setups per data structure")
    ap.add_argument("--queries", type=int, default=3, help="client queries per setup")
    ap.add_argument("--ds", default="gcs,bloom", help="comma list of gcs, bloom, raw")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size-only", action="store_true",
                    help="reveal_intersection=False and GetIntersectionSize")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    ds_names = [d.strip() for d in a.ds.split(",") if d.strip()]
    for d in ds_names:
        if d not in DATA_STRUCTURES:
            ap.error(f"unknown data structure {d}")
    if min(a.server_items, a.client_items, a.repeat, a.queries) < 1 or not 0 < a.fpr < 1:
        ap.error("sizes, --repeat and --queries must be positive and 0 < fpr < 1")
    out = sys.stderr if a.json else sys.stdout

    t0 = time.perf_counter()
    server_items, client_items = make_items(a.server_items, a.client_items, a.seed)
    server_set = set(server_items)
    truth = {i for i, x in enumerate(client_items) if x in server_set}
    del server_set
    generate_s = time.perf_counter() - t0

    results, failures = [], []
    allowed = allowed_false_positives(a.fpr)
    for d in ds_names:
        runs = [run_once(d, a.fpr, server_items, client_items, truth, a.queries, a.size_only)
                for _ in range(a.repeat)]
        s = summarise(d, runs, a.server_items, a.client_items, a.fpr)
        results.append(s)
        for q in (q for r in runs for q in r["queries"]):
            if q["missed"] or q["false_positives"] > allowed:
                failures.append(f"{d}: {q['missed']} missed, {q['false_positives']} false "
                                f"positives in one query (at most {allowed} allowed at fpr "
                                f"{a.fpr:g})")

    report = {
        "package": "openmined.psi",
        "version": metadata.version("openmined.psi"),
        "python": platform.python_version(),
        "cores_allowed": sorted(os.sched_getaffinity(0)),
        "params": {"server_items": a.server_items, "client_items": a.client_items,
                   "true_intersection": len(truth), "fpr": a.fpr, "repeat": a.repeat,
                   "queries": a.queries, "seed": a.seed,
                   "mode": "size only" if a.size_only else "reveal intersection",
                   "generate_s": generate_s},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "results": results,
        "ok": not failures,
        "failures": failures,
    }
    table(report, out)
    if a.json:
        print(json.dumps(report))
    if failures:
        print("INTERSECTION CHECK FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
