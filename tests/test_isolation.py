"""Hostile jobs against the isolation between jobs (root): a PID namespace
per job, a network namespace per job user, the seccomp filter.

The probes are Python run inside the job (ctypes gives syscall()); each case
asserts what the job saw, how it ended, and that nothing is left: no process
of the job user, no workspace, no mount, no file in the shared temporary
directories.
"""

from __future__ import annotations

import json
import os
import platform

from twisted.internet import defer
from twisted.trial import unittest

from mathrun.sandbox import Limits, Status

from .helpers import PYTHON, ROOT, async_test, make_sandbox, processes_of, within, workspace_left
from .test_hostile import files_owned_by

EPERM, ENOSYS = 1, 38

# Syscall numbers of x86_64, for the calls glibc has no wrapper for.
SYSCALLS = {"process_vm_readv": 310, "io_uring_setup": 425, "perf_event_open": 298, "bpf": 321}
SYSCALLS.update(userfaultfd=323, keyctl=250, add_key=248, clone=56, clone3=435)

PROBE_HEAD = """
import ctypes, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def err(r):
    return 0 if r >= 0 else ctypes.get_errno()
"""


def mounts() -> list[str]:
    """The host's mount points, but the job roots' (leases come and go)."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return sorted(p for p in points if "/jobs" not in p)


class IsolationTests(unittest.TestCase):
    if not ROOT:
        skip = "PID and network namespaces per job and the filter are the privileged sandbox's (root)"
    elif platform.machine() != "x86_64":
        skip = "the probes use x86_64 system call numbers"

    def setUp(self):
        self.sandbox = make_sandbox(self, jobs=4)
        self.mounts = mounts()

    async def start(self, probe: str, limits=None, on_output=None):
        lease = await self.sandbox.acquire()
        job = lease.spawn([PYTHON, "-c", PROBE_HEAD + probe], limits or Limits(wall_seconds=20), on_output=on_output)
        job.close_stdin()
        return lease, job

    async def finish(self, lease, job):
        user, root = lease.user, lease.workspace.root
        try:
            result = await within(job.done)
        finally:
            await lease.release()
        self.assertEqual(processes_of(user.uid), [], f"processes of {user.name} survived")
        self.assertIsNone(workspace_left(root))
        self.assertEqual(mounts(), self.mounts, "mounts left behind")
        self.assertEqual(files_owned_by(user.uid), [], "files left in shared temporary directories")
        return result

    async def probe(self, probe: str, limits=None) -> tuple:
        """Run a probe that prints one JSON line; its result and that line."""
        result = await self.finish(*await self.start(probe, limits))
        self.assertEqual(result.status, Status.OK, result.stderr)
        return result, json.loads(result.stdout.splitlines()[-1])

    @async_test
    async def test_proc_shows_only_the_jobs_processes(self):
        _, seen = await self.probe(
            "import subprocess\n"
            "child = subprocess.Popen(['sleep', '30'])\n"
            "for _ in range(200):\n"  # until the exec is complete
            "    if open(f'/proc/{child.pid}/cmdline', 'rb').read(): break\n"
            "    time.sleep(0.01)\n"
            "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "cmd = {p: open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')[0].decode() for p in pids}\n"
            "print(json.dumps({'me': os.getpid(), 'child': child.pid, 'pids': pids, 'cmd': cmd,"
            " 'ppid': os.getppid()}))\n"
            "child.kill()\n"
        )
        self.assertEqual(seen["pids"], sorted([seen["me"], seen["child"]]), seen)
        self.assertEqual(seen["cmd"][str(seen["child"])], "sleep", seen)
        if self.sandbox.uses_keeper:
            # Forked by its slot's keeper, PID 1 of the namespace, which it cannot see.
            self.assertEqual(seen["ppid"], 1, "the job's parent is its slot's keeper")
            self.assertNotIn(1, seen["pids"], "the keeper (root) is hidden from the job")
        else:
            self.assertEqual(seen["ppid"], 0, "the job's parent (the jail) is outside its namespace")
        self.assertLess(seen["me"], 10, "pids are the namespace's own")

    @async_test
    async def test_a_job_cannot_see_the_server_or_other_jobs(self):
        other_lease, other = await self.start("time.sleep(30)\n")
        try:
            _, seen = await self.probe(
                "print(json.dumps({'pids': [p for p in os.listdir('/proc') if p.isdigit()],"
                f" 'server': os.path.exists('/proc/{os.getpid()}/cmdline') and {os.getpid()} != os.getpid()}}))\n"
            )
        finally:
            other.stop()
            await self.finish(other_lease, other)
        self.assertEqual(len(seen["pids"]), 1, seen)
        self.assertFalse(seen["server"])

    async def meet(self, listen: str, connect: str) -> tuple[bytes, bytes]:
        """A listener job and, once it listens, a connecting job at once."""
        listening = defer.Deferred()
        heard = []

        def output(stream, data):
            heard.append(data)
            if b"listening" in b"".join(heard) and not listening.called:
                listening.callback(None)

        lease_a, job_a = await self.start(listen, on_output=output)
        try:
            await within(listening, 20)
            result_b = await self.finish(*await self.start(connect))
        finally:
            job_a.stop()
            await self.finish(lease_a, job_a)
        return b"".join(heard), result_b.stdout

    @async_test
    async def test_two_jobs_cannot_meet_over_an_abstract_socket(self):
        name = f"mathrun-meet-{os.getpid()}"
        listen = (
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.bind('\\0{name}'); s.listen(); print('listening', flush=True)\n"
            "s.settimeout(15); s.accept(); print('met', flush=True)\n"
        )
        connect = (
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"try:\n    s.connect('\\0{name}'); print('connected')\n"
            "except OSError as e: print('connect failed', e.errno)\n"
        )
        heard, said = await self.meet(listen, connect)
        self.assertIn(b"listening", heard)
        self.assertNotIn(b"met", heard)
        self.assertEqual(said, b"connect failed 111\n")  # ECONNREFUSED: no such name here
        # The same two halves in one job do meet: the probe itself works.
        _, seen = await self.probe(
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX); s.bind('\\0mathrun-self'); s.listen()\n"
            "c = socket.socket(socket.AF_UNIX); c.connect('\\0mathrun-self')\n"
            "print(json.dumps({'met': bool(s.accept())}))\n"
        )
        self.assertTrue(seen["met"])

    @async_test
    async def test_two_jobs_cannot_meet_over_tcp_on_loopback(self):
        listen = (
            "import socket\n"
            "s = socket.socket()\n"
            "try: s.bind(('127.0.0.1', 47001))\n"
            "except OSError as e: print('bind 127.0.0.1 failed', e.errno); s.bind(('0.0.0.0', 47001))\n"
            "s.listen(); print('listening', flush=True)\n"
            "s.settimeout(15); s.accept(); print('met', flush=True)\n"
        )
        connect = (
            "import socket\n"
            "try:\n    socket.create_connection(('127.0.0.1', 47001), timeout=3); print('connected')\n"
            "except OSError as e: print('connect failed', e.errno)\n"
        )
        heard, said = await self.meet(listen, connect)
        self.assertNotIn(b"met", heard)
        self.assertTrue(said.startswith(b"connect failed"), said)
        self.assertNotIn(b"connected", said)

    @async_test
    async def test_ptrace_and_process_vm_readv_fail(self):
        _, seen = await self.probe(
            "child = os.fork()\n"
            "if child == 0:\n    time.sleep(30); os._exit(0)\n"
            "PTRACE_ATTACH = 16\n"
            "buf = ctypes.create_string_buffer(64)\n"
            "class iovec(ctypes.Structure): _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
            "local = iovec(ctypes.cast(buf, ctypes.c_void_p), 64); remote = iovec(ctypes.addressof(buf), 64)\n"
            "out = {'ptrace': err(libc.ptrace(PTRACE_ATTACH, child, 0, 0)),\n"
            f"       'vm_readv': err(libc.syscall({SYSCALLS['process_vm_readv']}, child,"
            " ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)),\n"
            "       'traceme': err(libc.ptrace(0, 0, 0, 0))}\n"
            "os.kill(child, 9); os.waitpid(child, 0)\n"
            "print(json.dumps(out))\n"
        )
        self.assertEqual(seen, {"ptrace": EPERM, "vm_readv": EPERM, "traceme": EPERM})

    @async_test
    async def test_kernel_attack_surface_is_closed(self):
        s = SYSCALLS
        _, seen = await self.probe(
            "params = ctypes.create_string_buffer(120)\n"
            "attr = ctypes.create_string_buffer(128)\n"
            "out = {\n"
            f"  'io_uring_setup': err(libc.syscall({s['io_uring_setup']}, 8, params)),\n"
            f"  'perf_event_open': err(libc.syscall({s['perf_event_open']}, attr, 0, -1, -1, 0)),\n"
            f"  'bpf': err(libc.syscall({s['bpf']}, 0, attr, 64)),\n"
            f"  'userfaultfd': err(libc.syscall({s['userfaultfd']}, 0)),\n"
            f"  'keyctl': err(libc.syscall({s['keyctl']}, 0, -3, 0)),\n"
            f"  'add_key': err(libc.syscall({s['add_key']}, b'user', b'k', b'v', 1, -3)),\n"
            "}\n"
            "print(json.dumps(out))\n"
        )
        self.assertEqual(seen, dict.fromkeys(seen, EPERM))
        self.assertEqual(len(seen), 6)

    @async_test
    async def test_unshare_mount_and_new_namespaces_fail(self):
        s = SYSCALLS
        _, seen = await self.probe(
            "CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17\n"
            "out = {\n"
            "  'unshare_user': err(libc.unshare(CLONE_NEWUSER)),\n"
            "  'unshare_net': err(libc.unshare(CLONE_NEWNET)),\n"
            "  'mount': err(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)),\n"
            "  'umount': err(libc.umount2(b'/tmp', 2)),\n"
            "  'setns': err(libc.setns(os.open('/proc/self/ns/net', os.O_RDONLY), 0)),\n"
            f"  'clone_newuser': err(libc.syscall({s['clone']}, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)),\n"
            f"  'clone3': err(libc.syscall({s['clone3']}, ctypes.create_string_buffer(88), 88)),\n"
            "}\n"
            "pid = os.fork()\n"  # plain fork still works
            "if pid == 0: os._exit(7)\n"
            "out['fork'] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n"
            "print(json.dumps(out))\n"
        )
        expected = dict.fromkeys(["unshare_user", "unshare_net", "mount", "umount", "setns", "clone_newuser"], EPERM)
        self.assertEqual(seen, {**expected, "clone3": ENOSYS, "fork": 7})

    @async_test
    async def test_fork_bomb_peak_stays_at_its_limit(self):
        # The bomb's first process watches /proc (its namespace's: only the
        # job's processes) while its children fork without end.
        lease, job = await self.start(
            "if os.fork() == 0:\n"
            "    while True:\n"
            "        try: os.fork()\n"
            "        except OSError: pass\n"
            "peak, until = 0, time.monotonic() + 2.5\n"
            "while time.monotonic() < until:\n"
            "    try: peak = max(peak, sum(p.isdigit() for p in os.listdir('/proc')))\n"
            "    except OSError: pass\n"
            "print('peak', peak, flush=True)\n"
            "time.sleep(60)\n",
            Limits(wall_seconds=4, processes=32),
        )
        result = await self.finish(lease, job)
        self.assertEqual(result.status, Status.TIME_LIMIT)
        peak = int(result.stdout.split()[-1])
        self.assertGreater(peak, 16, "the bomb never got going")
        self.assertLessEqual(peak, 32)

    @async_test
    async def test_cpu_and_file_size_signals_are_the_tools(self):
        """The tool is not its namespace's PID 1, so the kernel's SIGXCPU and
        SIGXFSZ still end it (a PID 1 would ignore them)."""
        lease, job = await self.start("while True: pass\n", Limits(cpu_seconds=1, wall_seconds=10))
        result = await self.finish(lease, job)
        self.assertEqual((result.status, result.signal), (Status.TIME_LIMIT, 24))
        lease, job = await self.start(
            "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\nopen('f', 'wb').write(b'x' * 100000)\n",
            Limits(file_size_bytes=1000),
        )
        result = await self.finish(lease, job)
        self.assertEqual((result.status, result.signal), (Status.OUTPUT_LIMIT, 25))


class MaximaIsolationTests(unittest.TestCase):
    """A Maxima child (forked by the mother, not exec'ed by the jail) is
    confined the same way: its own PID and network namespace, the filter."""

    if not ROOT:
        skip = "the privileged sandbox's (root)"

    @async_test
    async def test_a_maxima_child_sees_only_itself_and_is_filtered(self):
        from .test_maxima_http import MaximaServer

        server = MaximaServer(self, jobs=3)
        await server.ready()
        code, _, body = await server.post(
            "print(system(\"echo pids $(ls /proc | grep -c '^[0-9]'); grep ^Seccomp: /proc/self/status;"
            ' unshare -U true 2>/dev/null || echo unshare-denied; cat /proc/net/dev | grep -c :"))$'
        )
        self.assertEqual(code, 200, body)
        # The shell, and what it runs: the mother, the server and the
        # other children are not there (nor the child, non-dumpable, nor
        # the namespace's root-owned init).
        pids = int(body.split(b"pids ")[1].split()[0])
        self.assertLessEqual(pids, 4, body)
        self.assertIn(b"Seccomp:\t2", body)
        self.assertIn(b"unshare-denied", body)
        self.assertIn(b"\n1\n", body, "only a loopback interface")
        await server.quiet()

    @async_test
    async def test_a_maxima_child_sees_no_other_workspace_and_makes_no_ipc_object(self):
        from .test_maxima_http import MaximaServer

        server = MaximaServer(self, jobs=4, ready=2)
        await server.ready()
        # The request takes the first ready child; the other's workspace is mounted meanwhile.
        mine, other = (c.root for c in server.pool.ready)
        self.assertTrue(os.path.ismount(other))
        state_dir = os.path.dirname(os.path.dirname(mine))
        code, _, body = await server.post(
            'print(system("ipcmk -M 4096 2>&1; ipcmk -Q 2>&1; grep -c . /proc/sysvipc/shm /proc/sysvipc/msg;'
            ' awk \'{print \\"mount\\", $5, $(NF-2)}\' /proc/self/mountinfo"))$'
        )
        self.assertEqual(code, 200, body)
        mounts = [line.split()[1:] for line in body.decode().splitlines() if line.startswith("mount ")]
        under_state = [point for point, _ in mounts if point.startswith(state_dir + "/")]
        # Its own workspace is the only mount of the state directory it has;
        # the other slots', the namespace files and the cgroup file systems
        # are not there.
        self.assertEqual(under_state, [mine], mounts)
        self.assertEqual([p for p, kind in mounts if kind in ("nsfs", "cgroup", "cgroup2")], [], mounts)
        # It can make no SysV object (and sees none of the host's).
        self.assertEqual(body.count(b"Operation not permitted"), 2, body)
        self.assertIn(b"/proc/sysvipc/shm:1", body)  # the header line only
        self.assertIn(b"/proc/sysvipc/msg:1", body)
        await server.quiet()
