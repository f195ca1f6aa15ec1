// The mathrun page: the Asymptote editor with live preview, and the Maxima
// console.  Bundled by scripts/setup.sh (esbuild) into static/app.js.

import { AsyPanel } from "./asy-panel.js";
import { MaximaPanel } from "./maxima-panel.js";

function start() {
  document.getElementById("not-built").remove();
  window.mathrun = { asy: new AsyPanel(), maxima: new MaximaPanel() };
  document.body.dataset.ready = "true";
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
