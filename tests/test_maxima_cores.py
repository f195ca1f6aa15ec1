"""Library sets and the keys of their saved cores: pure, no Maxima runs."""

from __future__ import annotations

import os

from twisted.trial import unittest

from mathrun.maxima.config import MaximaConfig
from mathrun.maxima.cores import CoreBuildFailed, build_script, core_key
from mathrun.maxima.libraries import (
    STACK_AFTER,
    STACK_AUTOLOADED,
    STACK_BEFORE,
    LibraryError,
    LibrarySet,
    library_sets,
    stack_set,
)

from .helpers import temp_dir

HERE = os.path.dirname(os.path.abspath(__file__))
STACKLIKE = os.path.join(HERE, "stacklike", "maxima")


class CoreKeyTests(unittest.TestCase):
    def setUp(self):
        self.dir = temp_dir(self)
        self.base = os.path.join(self.dir, "base.core")
        self.lib = os.path.join(self.dir, "lib.mac")
        self.nested = os.path.join(self.dir, "nested", "part.mac")
        os.makedirs(os.path.dirname(self.nested))
        for path in (self.base, self.lib, self.nested):
            with open(path, "w") as f:
                f.write("x: 1$\n")
        self.set = LibrarySet(loads=("stats", self.lib), tracked=(os.path.dirname(self.nested),))

    def test_every_input_changes_the_key(self):
        before = core_key(self.base, self.set)
        self.assertEqual(core_key(self.base, self.set), before)
        keys = {before}
        for path in (self.lib, self.nested, self.base):
            with open(path, "a") as f:
                f.write("y: 2$\n")
            keys.add(core_key(self.base, self.set))
        keys.add(core_key(self.base, LibrarySet(loads=("distrib", self.lib), tracked=self.set.tracked)))
        self.assertEqual(len(keys), 5)

    def test_unreadable_library_fails_with_its_name(self):
        missing = LibrarySet(loads=(os.path.join(self.dir, "nope.mac"),))
        error = self.assertRaises(CoreBuildFailed, core_key, self.base, missing)
        self.assertIn("nope.mac", str(error))

    def test_script_loads_in_order_and_saves_only_without_failure(self):
        script = build_script(self.set, "/c/x.core.tmp").decode()
        self.assertLess(script.index('$load) "stats"'), script.index(f'$load) "{self.lib}"'))
        self.assertEqual(script.count("(maxima::$errcatch)"), 2)
        self.assertIn('save-lisp-and-die "/c/x.core.tmp"', script)
        self.assertIn("(if cl-user::*mathrun-failed*", script)


class LibrarySetTests(unittest.TestCase):
    def test_stack_set_in_goemaxima_order_with_search_paths(self):
        generated = temp_dir(self)
        version, libs = stack_set(STACKLIKE, generated)
        self.assertEqual(version, "2099010100")
        local = libs.loads[len(STACK_BEFORE)]
        main = os.path.join(STACKLIKE, "stackmaxima.mac")
        self.assertEqual(libs.loads, (*STACK_BEFORE, local, main, *STACK_AFTER, *STACK_AUTOLOADED))
        with open(local) as f:
            text = f.read()
        self.assertIn(f'file_search_maxima: append([sconcat("{STACKLIKE}", "/###.{{mac,mc}}")]', text)
        self.assertIn("STACK_SETUP(ex) :=", text)
        self.assertEqual(libs.tracked, (STACKLIKE,))

    def test_versions_get_the_common_loads_first(self):
        config = MaximaConfig(packages=["stringproc"], libraries=["/l/common.mac"], versions={"v1": ["/l/one.mac"]})
        sets = library_sets(config, temp_dir(self))
        self.assertEqual(sets, {"v1": LibrarySet(loads=("stringproc", "/l/common.mac", "/l/one.mac"))})
        self.assertEqual(library_sets(MaximaConfig(), temp_dir(self)), {"default": LibrarySet()})

    def test_not_a_stack_directory(self):
        config = MaximaConfig(stack={"": temp_dir(self)})
        error = self.assertRaises(LibraryError, library_sets, config, temp_dir(self))
        self.assertIn("stackmaxima.mac", str(error))
