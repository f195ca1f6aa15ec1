// The Maxima console: POST /maxima (goemaxima's API), the output as text,
// plots from the zip answer as images.

import { readZip } from "./zip.js";

const TYPES = { svg: "image/svg+xml", png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif" };
const PROMPT = /^(?:\(%i\d+\) ?)+/;
const $ = (id) => document.getElementById(id);

const LABEL = /^\(%o\d+\) /;

// A run of lines holding a result, centred by Maxima on its 79 columns:
// moved next to its label, its 2D shape kept.
function besideLabel(run) {
  const labels = run.map((line) => line.match(LABEL)?.[0] ?? "");
  const width = Math.max(...labels.map((label) => label.length));
  const bare = run.map((line, n) => " ".repeat(labels[n].length) + line.slice(labels[n].length));
  const cut = Math.min(...bare.filter((line) => line.trim()).map((line) => line.length - line.trimStart().length));
  return bare.map((line, n) => labels[n].padEnd(width) + line.slice(cut));
}

// A run of indented and labelled lines, split into results: a labelled line
// whose neighbours are labelled too (or none) is a 1D result of its own.
function results(run) {
  const labelled = run.map((line) => LABEL.test(line));
  const blocks = [];
  let start = 0;
  for (let k = 0; k <= run.length; k++) {
    const alone = k < run.length && labelled[k] && (k === 0 || labelled[k - 1]) && (k === run.length - 1 || labelled[k + 1]);
    if (k === run.length || alone) {
      if (k > start) blocks.push(run.slice(start, k));
      if (alone) blocks.push([run[k]]);
      start = k + 1;
    }
  }
  return blocks;
}

// Maxima's REPL text without its input prompts, each result beside its label.
export function withoutPrompts(text) {
  const lines = [];
  for (const line of text.split("\n")) {
    const prompted = PROMPT.test(line);
    const rest = prompted ? line.replace(PROMPT, "").trim() : line.trimEnd(); // text after a prompt: gnuplot's
    if (prompted && !rest) continue;
    lines.push(rest);
  }
  const out = [];
  for (let i = 0; i < lines.length; ) {
    let j = i;
    // Indented past a label's width: part of a result (gnuplot's messages are indented less).
    while (j < lines.length && (LABEL.test(lines[j]) || lines[j].startsWith("       "))) j++;
    if (j > i && lines.slice(i, j).some((line) => LABEL.test(line))) {
      for (const block of results(lines.slice(i, j))) out.push(...besideLabel(block));
      i = j;
    } else out.push(lines[i++]);
  }
  return out.join("\n").replace(/^\n+|\n+$/g, "");
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
