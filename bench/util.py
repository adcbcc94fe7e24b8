#!/usr/bin/python3
"""Small HTTP helpers for bench/run (stdlib only; 127.0.0.1 only).

  util.py freeport
  util.py wait     PORT SECONDS                 poll GET /healthz until 200
  util.py check    PORT KEY METHOD PATH STATUS [BODY] [--save FILE]
                   two requests on one keep-alive connection; both must answer
                   STATUS and keep the connection open; prints body bytes + type
  util.py create   PORT KEY N OUT               create N sessions, ids to OUT
  util.py total    PORT KEY                     `total` of GET /v1/sessions
  util.py metric   PORT KEY PREFIX              sum of /metrics samples whose
                                                name starts with PREFIX
  util.py non2xx   PORT KEY                     loopd_http_requests_total with a
                                                status other than 2xx, by label set
"""
import http.client
import json
import socket
import sys
import threading
import time

HOST = "127.0.0.1"


def die(msg):
    sys.stderr.write("util.py: %s\n" % msg)
    sys.exit(1)


def conn(port):
    return http.client.HTTPConnection(HOST, int(port), timeout=10)


def request(c, method, path, key, body=None):
    h = {"Authorization": key} if key else {}
    if body is not None:
        h["Content-Type"] = "application/json"
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    return r, data


def cmd_freeport():
    s = socket.socket()
    s.bind((HOST, 0))
    print(s.getsockname()[1])
    s.close()


def cmd_wait(port, secs):
    deadline = time.monotonic() + float(secs)
    while time.monotonic() < deadline:
        try:
            c = conn(port)
            r, _ = request(c, "GET", "/healthz", None)
            c.close()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    die("no 200 from http://%s:%s/healthz within %s s" % (HOST, port, secs))


def cmd_check(port, key, method, path, status, body=None, save=None):
    c = conn(port)
    out = None
    for i in range(2):
        r, data = request(c, method, path, key, body)
        if r.status != int(status):
            die("%s %s answered %d, expected %s: %s" % (method, path, r.status, status, data[:300]))
        if (r.getheader("Connection") or "").lower() == "close":
            die("%s %s answered Connection: close (keep-alive broken)" % (method, path))
        out = (r, data)
    c.close()
    r, data = out
    if save:
        with open(save, "wb") as f:
            f.write(data)
    print("%d %s" % (len(data), r.getheader("Content-Type")))


def cmd_create(port, key, n, out, nthreads=16):
    n = int(n)
    ids = [None] * n
    errs = []

    def work(lo, hi):
        try:
            c = conn(port)
            for i in range(lo, hi):
                r, data = request(c, "POST", "/v1/sessions", key,
                                  json.dumps({"title": "bench patch target %d" % i, "tags": ["a"]}))
                if r.status != 201:
                    raise RuntimeError("POST /v1/sessions answered %d: %s" % (r.status, data[:300]))
                ids[i] = json.loads(data)["id"]
            c.close()
        except Exception as e:  # reported below
            errs.append(str(e))

    step = (n + nthreads - 1) // nthreads
    ts = [threading.Thread(target=work, args=(lo, min(n, lo + step))) for lo in range(0, n, step)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errs:
        die(errs[0])
    with open(out, "w") as f:
        f.write("\n".join(ids) + "\n")


def cmd_total(port, key):
    c = conn(port)
    r, data = request(c, "GET", "/v1/sessions?limit=1", key)
    if r.status != 200:
        die("GET /v1/sessions answered %d: %s" % (r.status, data[:300]))
    print(json.loads(data)["total"])


def cmd_metric(port, key, prefix):
    c = conn(port)
    r, data = request(c, "GET", "/metrics", key)
    if r.status != 200:
        die("GET /metrics answered %d" % r.status)
    tot = 0.0
    for line in data.decode().splitlines():
        if line.startswith(prefix):
            try:
                tot += float(line.rsplit(None, 1)[1])
            except ValueError:
                pass
    print("%g" % tot)


def cmd_non2xx(port, key):
    c = conn(port)
    r, data = request(c, "GET", "/metrics", key)
    if r.status != 200:
        die("GET /metrics answered %d" % r.status)
    for line in data.decode().splitlines():
        if line.startswith("loopd_http_requests_total{") and 'status="2' not in line:
            print(line)


def main():
    a = sys.argv[1:]
    if not a:
        die(__doc__)
    cmd, args = a[0], a[1:]
    save = None
    if "--save" in args:
        i = args.index("--save")
        save = args[i + 1]
        args = args[:i] + args[i + 2:]
    if cmd == "freeport":
        cmd_freeport()
    elif cmd == "wait":
        cmd_wait(*args)
    elif cmd == "check":
        cmd_check(*args, save=save)
    elif cmd == "create":
        cmd_create(*args)
    elif cmd == "total":
        cmd_total(*args)
    elif cmd == "non2xx":
        cmd_non2xx(*args)
    elif cmd == "metric":
        cmd_metric(*args)
    else:
        die("unknown command " + cmd)


if __name__ == "__main__":
    main()
