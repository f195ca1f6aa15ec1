// A small Asymptote syntax mode for CodeMirror 6, in the style of a legacy
// (stream) mode: comments, strings, numbers, keywords, types, the common
// drawing functions and operators.  Asymptote's grammar is C-like; this
// only colours tokens and never fails on text it does not know.

import { StreamLanguage } from "@codemirror/language";

const words = (text) => new Set(text.split(/\s+/).filter(Boolean));

const KEYWORDS = words(`
  if else while for do return break continue struct typedef new access from import unravel include
  quote static public private restricted this explicit operator var true false null cycle newframe
  autounravel`);

const TYPES = words(`
  void bool bool3 int real pair triple string path path3 guide guide3 pen picture transform transform3
  frame file surface projection light material bounds marker arrowbar position align side Label object
  revolution tensionSpecifier curlSpecifier indexedTransform code`);

const BUILTINS = words(`
  draw fill filldraw unfill clip label labelx labely dot shipout size unitsize scale shift rotate
  reflect xscale yscale slant dir expi sqrt sin cos tan asin acos atan atan2 exp log abs floor ceil
  round min max sum write read input output graph axes xaxis yaxis xtick ytick arrow Arrow Arrows
  EndArrow BeginArrow MidArrow ArcArrow Bar Bars circle ellipse arc box unitcircle unitsquare currentpen
  defaultpen linewidth fontsize rgb gray black white red green blue yellow cyan magenta orange purple
  brown dashed dotted longdashed dashdotted solid interp point relpoint reverse subpath length
  intersectionpoint intersectionpoints intersect buildcycle settings add attach erase layer
  usepackage texpreamble format string substr find replace array copy sequence sort`);

function tokenComment(stream, state) {
  while (!stream.eol()) {
    if (stream.match("*/")) {
      state.inComment = false;
      return "comment";
    }
    stream.next();
  }
  return "comment";
}

function tokenString(quote) {
  return (stream, state) => {
    let escaped = false;
    let ch;
    while ((ch = stream.next()) != null) {
      if (ch === quote && !escaped) {
        state.inString = null;
        return "string";
      }
      escaped = !escaped && ch === "\\";
    }
    return "string"; // Asymptote strings may span lines
  };
}

function token(stream, state) {
  if (state.inComment) return tokenComment(stream, state);
  if (state.inString) return tokenString(state.inString)(stream, state);
  if (stream.eatSpace()) return null;
  if (stream.match("//")) {
    stream.skipToEnd();
    return "comment";
  }
  if (stream.match("/*")) {
    state.inComment = true;
    return tokenComment(stream, state);
  }
  const ch = stream.peek();
  if (ch === '"' || ch === "'") {
    stream.next();
    state.inString = ch;
    return tokenString(ch)(stream, state);
  }
  if (stream.match(/^(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?/)) return "number";
  if (stream.match(/^[A-Za-z_][A-Za-z0-9_]*/)) {
    const word = stream.current();
    if (KEYWORDS.has(word)) return "keyword";
    if (TYPES.has(word)) return "typeName";
    if (BUILTINS.has(word)) return "variableName.standard";
    return "variableName";
  }
  if (stream.match(/^(?:\.\.|--|---|::|\^\^|&&|\|\||[<>=!]=|[-+*/%^<>=!&|~#@$])/)) return "operator";
  if (stream.match(/^[()[\]{}]/)) return "bracket";
  stream.next();
  return "punctuation";
}

export const asymptote = StreamLanguage.define({
  name: "asymptote",
  startState: () => ({ inComment: false, inString: null }),
  token,
  languageData: { commentTokens: { line: "//", block: { open: "/*", close: "*/" } } },
});
