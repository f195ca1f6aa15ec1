"""The wheel's layout (the rest of the metadata is in setup.cfg).

ext/ (the C helpers' sources), lisp/ (the Maxima mother), scripts/ (the
set-up step) and web/static/ (the page, bundled) go into the package as
mathrun/_data/{ext,lisp,scripts,web/static}, where
mathrun.paths finds them and ``mathrun-setup`` builds from them; the twistd
plugin goes into twisted/plugins/, where twistd looks for it.
"""

from setuptools import find_packages, setup

DATA = {
    "mathrun._data.ext": "ext",
    "mathrun._data.lisp": "lisp",
    "mathrun._data.scripts": "scripts",
    "mathrun._data.web.static": "web/static",  # the page, with the bundle the set-up step made
}

setup(
    packages=find_packages(include=["mathrun", "mathrun.*"]) + list(DATA) + ["twisted.plugins"],
    package_dir=DATA,
    package_data={
        "mathrun._data.ext": ["*.c", "*.h", "Makefile"],
        "mathrun._data.lisp": ["*.lisp"],
        "mathrun._data.scripts": ["*.sh"],
        "mathrun._data.web.static": ["*.html", "*.css", "*.js"],
        "twisted.plugins": ["mathrun_plugin.py"],
    },
    # Made by the build, for the machine it runs on.
    exclude_package_data={"mathrun._data.ext": ["jail-seccomp-bpf.h"]},
)
