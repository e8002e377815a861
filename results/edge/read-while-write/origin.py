import http.server, time, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    count = 0
    def do_GET(self):
        H.count += 1
        sys.stderr.write(f"origin request {H.count} {self.path}\n")
        size = 20 * 1024 * 1024
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "max-age=600")
        self.end_headers()
        chunk = b"x" * (1024 * 1024)
        for _ in range(20):
            self.wfile.write(chunk)
            self.wfile.flush()
            time.sleep(0.1)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
