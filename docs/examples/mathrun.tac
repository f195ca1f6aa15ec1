# A .tac file for `twistd -ny docs/examples/mathrun.tac`: the same services as
# `twistd mathrun`, with options set in Python.  Copy it and edit the list.
#
# MATHRUN_HTTP, MATHRUN_JOB_ROOT and MATHRUN_USER_PREFIX, when set, override
# the endpoint, the job root and the job users (the tests use them to pick a
# free port and their own users).
import os

from twisted.application import service

from mathrun.options import Options
from mathrun.service import make_service

args = [
    "--http",
    os.environ.get("MATHRUN_HTTP", "tcp:8080:interface=127.0.0.1"),
    "--jobs",
    "2",
    "--wall-limit",
    "30",
    "--no-why3",
]
if os.environ.get("MATHRUN_USER_PREFIX"):
    prefix = os.environ["MATHRUN_USER_PREFIX"]
    args += ["--user-prefix", prefix, "--helper-user", prefix]
if os.environ.get("MATHRUN_JOB_ROOT"):
    args += ["--job-root", os.environ["MATHRUN_JOB_ROOT"]]

options = Options()
options.parseOptions(args)
application = service.Application("mathrun")
make_service(options).setServiceParent(application)
