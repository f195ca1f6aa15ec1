// The Asymptote files: one CodeMirror view, one editor state per file (its
// own undo history), tabs to switch, one file marked main, and an error's
// line.column marked in its file.

import { EditorState, StateEffect, StateField } from "@codemirror/state";
import {
  Decoration,
  EditorView,
  drawSelection,
  highlightActiveLine,
  highlightActiveLineGutter,
  keymap,
  lineNumbers,
} from "@codemirror/view";
import { defaultKeymap, history, historyKeymap } from "@codemirror/commands";
import { bracketMatching, defaultHighlightStyle, syntaxHighlighting } from "@codemirror/language";
import { asymptote } from "./asy-mode.js";

const NAME = /^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}\.asy$/;
const setError = StateEffect.define();

function errorMarks(state, { line, column, message }) {
  const at = state.doc.line(Math.min(Math.max(line, 1), state.doc.lines));
  const title = { title: message, "data-error": message };
  const marks = [Decoration.line({ class: "cm-asy-error-line", attributes: title }).range(at.from)];
  const pos = Math.min(at.from + Math.max(column - 1, 0), at.to);
  if (pos < at.to) marks.push(Decoration.mark({ class: "cm-asy-error-mark" }).range(pos, pos + 1));
  return Decoration.set(marks, true);
}

const errorField = StateField.define({
  create: () => Decoration.none,
  update(marks, tr) {
    let next = marks.map(tr.changes);
    for (const effect of tr.effects) {
      if (effect.is(setError)) next = effect.value ? errorMarks(tr.state, effect.value) : Decoration.none;
    }
    return next;
  },
  provide: (field) => EditorView.decorations.from(field),
});

export class Workspace {
  // tabs: the element of the tab buttons; on: {change, run}.
  constructor(parent, tabs, on) {
    this.tabs = tabs;
    this.on = on;
    this.states = new Map();
    this.main = null;
    this.current = null;
    const runKey = { key: "Mod-Enter", run: () => (on.run(), true), preventDefault: true };
    this.extensions = [
      lineNumbers(),
      highlightActiveLineGutter(),
      history(),
      drawSelection(),
      highlightActiveLine(),
      bracketMatching(),
      asymptote,
      syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
      errorField,
      keymap.of([runKey, ...defaultKeymap, ...historyKeymap]),
      EditorView.lineWrapping,
      EditorView.contentAttributes.of({ "aria-label": "Asymptote code", "aria-multiline": "true" }),
      EditorView.updateListener.of((update) => {
        if (update.docChanged) on.change(this.current);
      }),
    ];
    this.view = new EditorView({ parent });
  }

  stateFor(text) {
    return EditorState.create({ doc: text, extensions: this.extensions });
  }

  add(name, text = "") {
    if (!NAME.test(name)) throw new Error(`a file name is letters, digits, _ and - ending in .asy: ${name}`);
    if (this.states.has(name)) throw new Error(`${name} exists already`);
    this.states.set(name, this.stateFor(text));
    if (this.main === null) this.main = name;
    this.show(name);
  }

  remove(name) {
    if (this.states.size <= 1) return;
    this.states.delete(name);
    if (this.main === name) this.main = this.states.keys().next().value;
    if (this.current === name) this.current = null;
    this.show(this.current ?? this.main);
  }

  setMain(name) {
    this.main = name;
    this.renderTabs();
  }

  show(name) {
    if (this.current !== null && this.states.has(this.current)) this.states.set(this.current, this.view.state);
    this.current = name;
    this.view.setState(this.states.get(name));
    this.renderTabs();
  }

  // Map name -> text of every file.
  texts() {
    if (this.current !== null) this.states.set(this.current, this.view.state);
    return new Map([...this.states].map(([name, state]) => [name, state.doc.toString()]));
  }

  clearErrors() {
    for (const name of this.states.keys()) this.mark(name, null);
  }

  // Marks an error in `name` (null: clears it); shows that file.
  mark(name, error) {
    if (!this.states.has(name)) return;
    if (error) this.show(name);
    if (name === this.current) {
      this.view.dispatch({ effects: setError.of(error) });
      if (error) {
        const line = this.view.state.doc.line(Math.min(Math.max(error.line, 1), this.view.state.doc.lines));
        this.view.dispatch({ effects: EditorView.scrollIntoView(line.from, { y: "center" }) });
      }
    } else {
      this.states.set(name, this.states.get(name).update({ effects: setError.of(error) }).state);
    }
  }

  renderTabs() {
    this.tabs.replaceChildren();
    for (const name of this.states.keys()) {
      const tab = document.createElement("button");
      tab.type = "button";
      tab.setAttribute("role", "tab");
      tab.setAttribute("aria-selected", String(name === this.current));
      tab.dataset.file = name;
      tab.textContent = name === this.main ? `${name} (main)` : name;
      tab.addEventListener("click", () => this.show(name));
      this.tabs.append(tab);
    }
  }

  focus() {
    this.view.focus();
  }
}
