// The Asymptote panel: files, options, Run and live mode, the queue's
// messages, the image, the output, an error marked in the editor, and the
// interactive shell.

import { QueueRun, queueUrl } from "./asyqueue.js";
import { Workspace } from "./editor.js";

const EXAMPLE = `size(4cm);
draw(unitcircle, blue);
dot((0,0));
label("$O$", (0,0), SW);
`;
const LIVE_DELAY_MS = 700;
const ERROR = /^([A-Za-z0-9_][A-Za-z0-9_-]*\.asy): (\d+)\.(\d+): (.*)$/m;
const TYPES = { svg: "image/svg+xml", pdf: "application/pdf", png: "image/png" };
const decoder = new TextDecoder();
const $ = (id) => document.getElementById(id);

// asy's SVG inline, without what could run script in the page.
function safeSvg(buffer) {
  const doc = new DOMParser().parseFromString(decoder.decode(buffer), "image/svg+xml");
  const svg = doc.documentElement;
  if (svg.nodeName !== "svg") throw new Error("the SVG could not be read");
  for (const bad of svg.querySelectorAll("script, foreignObject")) bad.remove();
  for (const element of [svg, ...svg.querySelectorAll("*")]) {
    for (const attr of [...element.attributes]) {
      const value = attr.value.trim().toLowerCase();
      if (attr.name.startsWith("on") || value.startsWith("javascript:")) element.removeAttribute(attr.name);
    }
  }
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Asymptote picture");
  return document.importNode(svg, true);
}

export class AsyPanel {
  constructor() {
    this.seen = new Set(); // hashes the server was sent
    this.history = [];
    this.run = null;
    this.urls = [];
    this.liveTimer = null;
    this.workspace = new Workspace($("asy-editor"), $("asy-tabs"), {
      change: () => this.changed(),
      run: () => this.start(),
    });
    this.workspace.add("main.asy", EXAMPLE);
    $("asy-run").addEventListener("click", () => this.start());
    $("asy-shell").addEventListener("submit", (event) => this.send(event));
    $("asy-new-file").addEventListener("submit", (event) => this.newFile(event));
    $("asy-make-main").addEventListener("click", () => this.workspace.setMain(this.workspace.current));
    $("asy-remove").addEventListener("click", () => this.workspace.remove(this.workspace.current));
    $("asy-interactive").addEventListener("change", () => this.modeChanged());
  }

  status(text, kind = "") {
    this.history.push(text); // what the status said, for a test's failure message
    $("asy-status").textContent = text;
    $("asy-status").dataset.state = kind;
  }

  newFile(event) {
    event.preventDefault();
    const input = $("asy-new-name");
    try {
      this.workspace.add(input.value.trim());
      input.value = "";
      this.workspace.focus();
    } catch (e) {
      this.status(e.message, "error");
    }
  }

  modeChanged() {
    const interactive = $("asy-interactive").checked;
    $("asy-run").textContent = interactive ? "Start session" : "Run";
    if (this.run && !interactive) this.stop();
  }

  changed() {
    if (!$("asy-live").checked || $("asy-interactive").checked) return;
    clearTimeout(this.liveTimer);
    this.liveTimer = setTimeout(() => this.start(), LIVE_DELAY_MS);
  }

  options() {
    const timeout = $("asy-timeout").value;
    const options = { format: $("asy-format").value, stderr: "separate" };
    if (timeout !== "default") options.timeout = Number(timeout);
    if ($("asy-interactive").checked) options.interactive = true;
    return options;
  }

  stop() {
    if (this.run) this.run.close();
    this.run = null;
    $("asy-shell").hidden = true;
  }

  start() {
    clearTimeout(this.liveTimer);
    this.stop();
    const options = this.options();
    this.format = options.format;
    this.output = [];
    this.images = [];
    $("asy-output").replaceChildren();
    $("asy-error").hidden = true;
    this.workspace.clearErrors();
    this.status("Connecting…", "connecting");
    const run = new QueueRun(queueUrl(window.location), {
      files: this.workspace.texts(),
      main: this.workspace.main,
      options,
      seen: this.seen,
      on: this.handlers(() => run === this.run, options.interactive),
    });
    this.run = run;
  }

  handlers(current, interactive) {
    const only = (f) => (...args) => current() && f(...args);
    return {
      uploads: only((uploaded, restored) => {
        const parts = [`uploaded: ${uploaded.join(", ") || "none"}`];
        if (restored.length) parts.push(`restored: ${restored.join(", ")}`);
        $("asy-uploads").textContent = parts.join("; ");
      }),
      queue: only((estimate, position) => {
        const place = position ? `position ${position} in the queue` : "in the queue";
        const wait = estimate === undefined ? "" : `, expected wait ${(estimate / 1000).toFixed(1)} s`;
        this.status(`Queued: ${place}${wait}`, "queued");
      }),
      start: only(() => {
        this.status(interactive ? "Interactive session: type below" : "Running…", "running");
        if (interactive) {
          $("asy-shell").hidden = false;
          $("asy-input").focus();
        }
      }),
      output: only((stream, bytes) => this.print(decoder.decode(bytes), stream)),
      result: only((format, buffer) => this.images.push({ format, buffer })),
      complete: only((body) => this.completed(body)),
      denied: only((error) => {
        this.status(`Refused: ${error}`, "error");
        this.run = null;
      }),
    };
  }

  print(text, stream) {
    const span = document.createElement("span");
    span.className = stream;
    span.textContent = text;
    $("asy-output").append(span);
    this.output.push(text);
  }

  send(event) {
    event.preventDefault();
    const line = $("asy-input").value;
    $("asy-input").value = "";
    if (!this.run) return;
    this.print(`> ${line}\n`, "input");
    this.run.input(`${line}\n`);
  }

  completed(body) {
    this.run = null;
    $("asy-shell").hidden = true;
    const time = body.time === undefined ? "" : ` in ${body.time} ms`;
    if (body.success) {
      this.status(`Done${time}${body.cached ? " (cached)" : ""}`, "done");
    } else {
      this.status(`Error: ${body.error || "failed"}`, "error");
    }
    if (this.images.length) this.show(this.images);
    const found = ERROR.exec(this.output.join(""));
    if (!body.success && found) {
      const [, file, line, column, message] = found;
      const where = `${file}: ${line}.${column}: ${message}`;
      $("asy-error").textContent = where;
      $("asy-error").hidden = false;
      this.workspace.mark(file, { line: Number(line), column: Number(column), message: where });
    }
  }

  show(images) {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
    const preview = $("asy-preview");
    preview.replaceChildren();
    preview.dataset.renders = String(Number(preview.dataset.renders || 0) + 1);
    images.forEach(({ format, buffer }, n) => {
      const blob = new Blob([buffer], { type: TYPES[format] });
      const url = URL.createObjectURL(blob);
      this.urls.push(url);
      if (format === "svg") preview.append(safeSvg(buffer));
      else if (format === "pdf") {
        const embed = document.createElement("embed");
        Object.assign(embed, { type: "application/pdf", src: url, title: "Asymptote picture (PDF)" });
        preview.append(embed);
      } else {
        const img = document.createElement("img");
        Object.assign(img, { src: url, alt: "Asymptote picture" });
        preview.append(img);
      }
      if (n === 0) {
        const link = $("asy-download");
        const base = this.workspace.main.replace(/\.asy$/, "");
        Object.assign(link, { href: url, download: `${base}.${format}`, hidden: false });
        link.textContent = `Download ${base}.${format} (${blob.size} bytes)`;
      }
    });
  }
}
