// The Maxima console: POST /maxima (goemaxima's API), the output as text,
// plots from the zip answer as images.

import { readZip } from "./zip.js";

const TYPES = { svg: "image/svg+xml", png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif" };
const PROMPT = /^(?:\(%i\d+\) ?)+/;
const $ = (id) => document.getElementById(id);

// Maxima's REPL text without its input prompts (the (%oN) labels stay).
export function withoutPrompts(text) {
  const lines = [];
  for (const line of text.split("\n")) {
    const rest = line.replace(PROMPT, "");
    if (rest !== line && !rest.trim()) continue;
    lines.push(rest.trimEnd());
  }
  return lines.join("\n").replace(/^\n+|\n+$/g, "");
}

const STATUS = {
  400: "Refused (bad request)",
  413: "Refused: the input is too long",
  416: "Time limit reached (output so far)",
  500: "The server could not finish the job",
  503: "Busy",
};

export class MaximaPanel {
  constructor() {
    this.urls = [];
    $("maxima-run").addEventListener("click", () => this.run());
    $("maxima-input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.run();
      }
    });
  }

  status(text, kind = "") {
    $("maxima-status").textContent = text;
    $("maxima-status").dataset.state = kind;
  }

  async run() {
    const body = new URLSearchParams({
      input: $("maxima-input").value,
      timeout: String($("maxima-timeout").value || 10000),
      ploturlbase: "!ploturl!",
    });
    this.status("Running…", "running");
    $("maxima-run").disabled = true;
    try {
      const response = await fetch("/maxima", { method: "POST", body });
      await this.answer(response);
    } catch (e) {
      this.status(`No answer: ${e.message}`, "error");
    } finally {
      $("maxima-run").disabled = false;
    }
  }

  async answer(response) {
    const type = response.headers.get("content-type") || "";
    let text;
    let plots = new Map();
    if (response.status === 200 && type.startsWith("application/zip")) {
      const files = await readZip(await response.arrayBuffer());
      text = files.has("OUTPUT") ? new TextDecoder().decode(files.get("OUTPUT")) : "";
      files.delete("OUTPUT");
      plots = files;
    } else {
      text = await response.text();
    }
    $("maxima-text").textContent = response.ok || response.status === 416 ? withoutPrompts(text) : text.trim();
    this.showPlots(plots);
    if (response.ok) this.status(`Done${plots.size ? `, ${plots.size} plot(s)` : ""}`, "done");
    else {
      const retry = response.headers.get("retry-after");
      const why = STATUS[response.status] || `HTTP ${response.status}`;
      this.status(`${why}${retry ? `: retry after ${retry} s` : ""}`, "error");
    }
  }

  showPlots(plots) {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
    const box = $("maxima-plots");
    box.replaceChildren();
    for (const [name, bytes] of plots) {
      const type = TYPES[name.split(".").pop().toLowerCase()];
      if (!type) continue;
      const url = URL.createObjectURL(new Blob([bytes], { type }));
      this.urls.push(url);
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      Object.assign(img, { src: url, alt: `Maxima plot ${name}` });
      const caption = document.createElement("figcaption");
      const link = document.createElement("a");
      Object.assign(link, { href: url, download: name, textContent: name });
      caption.append(link);
      figure.append(img, caption);
      box.append(figure);
    }
  }
}
