"""A small scripted OpenAI-compatible server for tests: real HTTP on 127.0.0.1, well-formed chat completions,
plus failure modes (429 / 500 before succeeding, slow replies beyond the client's timeout, malformed content)."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def keyword_reply(prompt: str) -> str:
    """Deterministic 'LLM': step 1 -> the answer's words plus a positional term; 2 -> candidates minus position;
    3 -> allowed keywords found in the answer."""
    answer = re.search(r"Answer: (.*)", prompt)
    if "Candidate keywords" in prompt:
        candidates = re.findall(r"([a-z][a-z ]*?) \(\d+\)", prompt.split("Candidate keywords (with counts): ")[1])
        return json.dumps({"keywords": [c for c in candidates if c != "left"]})
    if "Allowed keywords" in prompt:
        allowed = [a.strip() for a in prompt.split("Allowed keywords: ")[1].split("\n")[0].split(",") if a.strip()]
        return json.dumps({"keywords": [a for a in allowed if a in answer.group(1).lower()]})
    return json.dumps({"keywords": [answer.group(1).strip().lower(), "left"]})


def judge_reply(prompt: str) -> str:
    """Deterministic judge: correct when the reference answer's words appear in the prediction."""
    answer = re.search(r"Reference answer: (.*)", prompt).group(1).strip().lower()
    prediction = re.search(r"Model prediction: (.*)", prompt).group(1).strip().lower()
    return json.dumps({"correct": answer in prediction})


def any_judge_reply(prompt: str) -> str:
    """The deterministic judge above, answering in MedEvalKit's ``<judge>0/1</judge>`` format (0 = correct) when
    the prompt is MedEvalKit-style ("Standard answer:"), else in JSON."""
    if "Standard answer:" not in prompt:
        return judge_reply(prompt)
    answer = re.search(r"Standard answer: (.*)", prompt).group(1).strip().lower()
    prediction = re.search(r"User's answer: (.*)", prompt).group(1).strip().lower()
    return f"<think>compared</think>\n<judge>{0 if answer in prediction else 1}</judge>"


class ScriptedServer:
    def __init__(self, fail_first: list[int] | None = None, delay: float = 0.0, malformed: bool = False,
                 responder=keyword_reply) -> None:
        self.responder = responder
        self.fail_first = list(fail_first or [])  # HTTP status codes for the first requests
        self.delay, self.malformed = delay, malformed
        self.requests = 0
        self.completions = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with threading.Lock():
                    server.requests += 1
                    status = server.fail_first.pop(0) if server.fail_first else 200
                if status != 200:
                    self._send(status, {"error": {"message": f"scripted {status}", "type": "server_error"}})
                    return
                time.sleep(server.delay)
                prompt = body["messages"][-1]["content"]
                content = "I think the keywords are fine." if server.malformed else server.responder(prompt)
                server.completions += 1
                self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                                 "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
