// One render through the queue at /asy (docs/asymptote.md): a text frame
// `verb {json}`, and a binary frame after `add`, `input`, `output` and
// `result`.  Files the server has seen (by SHA-256) are restored rather than
// sent again; those it has lost come back in `missing` and are uploaded.

import { sha256Hex } from "./sha256.js";

const WITH_PAYLOAD = new Set(["output", "result"]);
const encoder = new TextEncoder();

export function queueUrl(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/asy`;
}

export class QueueRun {
  // files: Map name -> text; seen: Set of hashes the server was sent;
  // on: {queue, start, output, result, complete, denied, uploads}.
  constructor(url, { files, main, options, seen, on }) {
    this.files = new Map([...files].map(([name, text]) => [name, encoder.encode(text)]));
    this.hashes = new Map([...this.files].map(([name, bytes]) => [name, sha256Hex(bytes)]));
    this.main = main;
    this.options = options;
    this.seen = seen;
    this.on = on;
    this.uploaded = [];
    this.restored = [];
    this.pending = null;
    this.done = false;
    this.ws = new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    this.ws.onopen = () => this.begin();
    this.ws.onmessage = (event) => this.receive(event.data);
    this.ws.onclose = (event) => this.closed(event);
  }

  send(verb, body, payload) {
    this.ws.send(body === undefined ? verb : `${verb} ${JSON.stringify(body)}`);
    if (payload !== undefined) this.ws.send(payload);
  }

  add(name, restore) {
    const body = { filename: name, main: name === this.main, hash: this.hashes.get(name) };
    if (restore) {
      this.send("add", { ...body, restore: true });
      this.restored.push(name);
    } else {
      this.send("add", body, this.files.get(name));
      this.seen.add(body.hash);
      this.uploaded.push(name);
    }
  }

  begin() {
    for (const name of this.files.keys()) this.add(name, this.seen.has(this.hashes.get(name)));
    this.send("options", this.options);
    this.send("run");
    this.on.uploads(this.uploaded, this.restored);
  }

  input(text) {
    if (!this.done && this.ws.readyState === WebSocket.OPEN) this.send("input", undefined, encoder.encode(text));
  }

  close() {
    this.done = true;
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
  }

  receive(data) {
    if (this.done) return;
    if (typeof data !== "string") {
      const message = this.pending;
      this.pending = null;
      if (!message) return;
      if (message.verb === "output") this.on.output(message.body.stream, new Uint8Array(data));
      else this.on.result(message.body.format, data);
      return;
    }
    const space = data.indexOf(" ");
    const verb = space < 0 ? data : data.slice(0, space);
    const body = space < 0 ? null : JSON.parse(data.slice(space + 1));
    if (WITH_PAYLOAD.has(verb)) this.pending = { verb, body };
    else if (verb === "missing") this.reupload(body);
    else if (verb === "queue") body.passed ? this.on.start() : this.on.queue(body.estimate, body.position);
    else if (verb === "complete") this.finish(() => this.on.complete(body));
    else if (verb === "denied") this.finish(() => this.on.denied(body.error));
  }

  reupload(missing) {
    for (const { filename } of missing) {
      this.restored = this.restored.filter((name) => name !== filename);
      if (this.files.has(filename)) this.add(filename, false);
    }
    this.send("run");
    this.on.uploads(this.uploaded, this.restored);
  }

  finish(report) {
    this.done = true;
    report();
  }

  closed(event) {
    if (this.done) return;
    this.done = true;
    const why = event.code === 1000 ? "" : ` (code ${event.code}${event.reason ? ": " + event.reason : ""})`;
    this.on.complete({ success: false, error: `The connection closed before the result${why}` });
  }
}
