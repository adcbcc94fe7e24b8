"""A fake model provider on loopback for the driver tests: speaks the
streaming formats of OpenAI Chat Completions and Anthropic Messages.

What it answers is chosen by the last user message's text:
  "tool:NAME"        a tool call to NAME with {"x": 1}
  "status:NNN"       HTTP NNN with a JSON error body (every time)
  "flaky:NNN"        HTTP NNN the first time, then a normal answer
  "garbage"          a malformed chunk
  "slow"             never finishes (for timeouts and cancel)
  "burst:N"          N chunks "w0 ", "w1 ", ... sent at once, with usage
  "hold"             the chunk "held ", then waits for `release` (set
                     `held` once that chunk is sent), then "released"
  anything else      "echo: <text>" in three chunks, with usage
Every request body is recorded in `requests`.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Fake:
    def __init__(self):
        self.requests = []
        self.seen = {}
        self.stop_slow = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n))
                fake.requests.append({"path": self.path, "headers": dict(self.headers),
                                      "body": body})
                anthropic = self.path.endswith("/messages")
                msgs = body.get("messages", [])
                last = ""
                for m in msgs:
                    if m.get("role") == "user":
                        c = m.get("content")
                        if isinstance(c, str):
                            last = c
                        elif isinstance(c, list):
                            last = " ".join(p.get("text", "") for p in c if p.get("type") == "text") or last
                has_tool_result = any(m.get("role") == "tool" for m in msgs) or any(
                    isinstance(m.get("content"), list) and any(p.get("type") == "tool_result"
                                                               for p in m["content"]) for m in msgs)
                if last.startswith("status:") or (last.startswith("flaky:") and
                                                  fake.seen.get(last, 0) == 0):
                    fake.seen[last] = fake.seen.get(last, 0) + 1
                    code = int(last.split(":")[1])
                    data = json.dumps({"error": {"message": "fake failure %d" % code}}).encode()
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def send(obj, raw=None):
                    line = raw if raw is not None else "data: " + json.dumps(obj) + "\n\n"
                    b = line.encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
                    self.wfile.flush()

                if last == "slow":
                    send(None, ": waiting\n\n")
                    fake.stop_slow.wait(30)
                    return
                if last == "garbage":
                    send(None, "data: {not json\n\n")
                elif last.startswith("tool:") and not has_tool_result:
                    name = last.split(":", 1)[1]
                    if anthropic:
                        send({"type": "message_start", "message": {"usage": {"input_tokens": 11}}})
                        send({"type": "content_block_start", "index": 0,
                              "content_block": {"type": "tool_use", "id": "toolu_1", "name": name}})
                        send({"type": "content_block_delta", "index": 0,
                              "delta": {"type": "input_json_delta", "partial_json": "{\"x\":"}})
                        send({"type": "content_block_delta", "index": 0,
                              "delta": {"type": "input_json_delta", "partial_json": " 1}"}})
                        send({"type": "message_delta", "usage": {"output_tokens": 5}})
                    else:
                        send({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_f1",
                              "function": {"name": name, "arguments": "{\"x\":"}}]}}]})
                        send({"choices": [{"delta": {"tool_calls": [{"index": 0,
                              "function": {"arguments": " 1}"}}]}}]})
                        send({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5}})
                else:
                    text = "echo: " + last
                    parts = [text[:5], text[5:10], text[10:]]
                    if last.startswith("burst:"):
                        parts = ["w%d " % i for i in range(int(last.split(":")[1]))]
                    elif last == "hold":
                        parts = ["held ", None, "released"]
                    if anthropic:
                        send({"type": "message_start", "message": {"usage": {"input_tokens": 20,
                              "cache_read_input_tokens": 4}}})
                        for p in parts:
                            if p is None:
                                fake.hold()
                                continue
                            send({"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "text_delta", "text": p}})
                        send({"type": "message_delta", "usage": {"output_tokens": 7}})
                        send({"type": "message_stop"})
                    else:
                        for p in parts:
                            if p is None:
                                fake.hold()
                                continue
                            send({"choices": [{"delta": {"content": p}}]})
                        send({"choices": [], "usage": {"prompt_tokens": 24, "completion_tokens": 7,
                              "prompt_tokens_details": {"cached_tokens": 4}}})
                        send(None, "data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def hold(self):
        """Between the chunks of a "hold" answer: tell the test, wait for it."""
        self.held.set()
        self.release.wait(30)

    @property
    def base(self):
        return "http://127.0.0.1:%d/v1" % self.port

    def close(self):
        self.stop_slow.set()
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
