#!/usr/bin/python3
"""replica_proxy.py: a tiny round-robin HTTP proxy in front of flowd serve
replicas (docs/scale-out.md), for trying the replica set-up and for the
loopback test (tests/server/test_replicas.c); in production use nginx or
HAProxy (configurations in docs/scale-out.md).

    tools/replica_proxy.py --listen 127.0.0.1:8080 \\
        --backend http://127.0.0.1:8081 --backend http://127.0.0.1:8082

Each request goes to the next backend in turn, whole (the body is read,
then sent; the answer is buffered, so not for event streams); a backend
that refuses the connection is skipped for that request, and 502 comes
back when none answers. The answer carries X-Flowd-Replica: the backend's
index. --port-file writes the port it listens on (with port 0)."""
import argparse
import http.client
import itertools
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
       "trailers", "transfer-encoding", "upgrade", "host", "content-length"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:8080")
    ap.add_argument("--backend", action="append", required=True)
    ap.add_argument("--port-file")
    a = ap.parse_args()
    backends = [urllib.parse.urlsplit(b) for b in a.backend]
    turn = itertools.count()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def relay(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else None
            with lock:
                first = next(turn)
            for k in range(len(backends)):
                i = (first + k) % len(backends)
                b = backends[i]
                try:
                    c = http.client.HTTPConnection(b.hostname, b.port, timeout=300)
                    hdrs = {h: v for h, v in self.headers.items() if h.lower() not in HOP}
                    c.request(self.command, self.path, body=body, headers=hdrs)
                    r = c.getresponse()
                    data = r.read()
                except OSError:
                    continue
                self.send_response(r.status, r.reason)
                for h, v in r.getheaders():
                    if h.lower() not in HOP:
                        self.send_header(h, v)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Flowd-Replica", str(i))
                self.end_headers()
                self.wfile.write(data)
                c.close()
                return
            msg = b'{"error":{"code":"bad_gateway","message":"no replica answered"}}'
            self.send_response(502)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)

        do_GET = do_POST = do_PUT = do_DELETE = relay

    host, port = a.listen.rsplit(":", 1)
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(str(srv.server_address[1]))
        import os
        os.replace(a.port_file + ".tmp", a.port_file)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
