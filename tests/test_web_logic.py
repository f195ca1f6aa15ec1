"""The page's pure JavaScript run by node: its SHA-256 against hashlib (the
queue refuses a file whose hash is wrong), its zip reader on the zips the
Maxima front end makes, and the Maxima text shown beside its labels."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from mathrun.asy.cache import sha256_hex
from mathrun.maxima.http import make_zip

NODE = shutil.which("node")
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web", "src")


def run_node(requests: list) -> list:
    """Each request ``[kind, base64 or text]`` answered by the page's code."""
    program = f"""
import {{ sha256Hex }} from "{SRC}/sha256.js";
import {{ readZip }} from "{SRC}/zip.js";
import {{ withoutPrompts }} from "{SRC}/maxima-panel.js";
let text = "";
for await (const chunk of process.stdin) text += chunk;
const out = [];
for (const [kind, data] of JSON.parse(text)) {{
  if (kind === "sha256") out.push(sha256Hex(Buffer.from(data, "base64")));
  else if (kind === "zip") {{
    const bytes = Buffer.from(data, "base64");
    const files = await readZip(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    out.push(Object.fromEntries([...files].map(([name, b]) => [name, Buffer.from(b).toString("base64")])));
  }} else out.push(withoutPrompts(data));
}}
console.log(JSON.stringify(out));
"""
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", program],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return json.loads(done.stdout)


class PageLogicTests(unittest.TestCase):
    def setUp(self):
        if NODE is None:
            raise unittest.SkipTest("no node (the set-up step installs it with the page's build)")
        if not os.path.isdir(SRC):
            raise unittest.SkipTest(f"no page sources at {SRC} (a copy of the checkout without web/)")

    @settings(max_examples=5, deadline=None)
    @given(st.lists(st.binary(max_size=300), min_size=1, max_size=40))
    def test_sha256_matches_hashlib(self, blobs):
        blobs += [b"\x00" * n for n in (55, 56, 63, 64, 65, 119, 120)]  # around the padding's block edges
        answers = run_node([["sha256", base64.b64encode(b).decode()] for b in blobs])
        self.assertEqual(answers, [sha256_hex(b) for b in blobs])

    @settings(max_examples=5, deadline=None)
    @given(
        st.binary(max_size=2000),
        st.dictionaries(st.from_regex(r"[a-z]{1,8}\.(svg|png)", fullmatch=True), st.binary(max_size=3000), max_size=4),
    )
    def test_zip_reader_reads_the_maxima_front_ends_zips(self, output, plots):
        zipped = make_zip(output, sorted(plots.items()))
        (answer,) = run_node([["zip", base64.b64encode(zipped).decode()]])
        read = {name: base64.b64decode(data) for name, data in answer.items()}
        self.assertEqual(read, {"OUTPUT": output, **plots})

    def test_results_beside_their_labels(self):
        raw = (
            "\n(%i1) \n(%i2) \n(%i3) \n                                        2\n"
            "(%o3)                                3 x\n"
            "(%i4)          line 0: warning: this copy of gnuplot has no mouse support\n"
            "(%o4) 5\n(%o5) 6\n"
        )
        (shown,) = run_node([["maxima", raw]])
        self.assertEqual(
            shown, "         2\n(%o3) 3 x\nline 0: warning: this copy of gnuplot has no mouse support\n(%o4) 5\n(%o5) 6"
        )
