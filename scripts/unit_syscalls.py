"""Checks that the worker survives the systemd unit's sandbox, from an strace
of a real run (scripts/test-image traces the image's worker through the
demo's path, start to SIGTERM): every system call it made is allowed by the
unit's SystemCallFilter=, every socket family by RestrictAddressFamilies=,
and no mapping is writable and executable (MemoryDenyWriteExecute=).
Usage: unit_syscalls.py UNIT TRACE_DIR WORKER_EXE
TRACE_DIR holds `strace -f -ff -o TRACE_DIR/t` output (one file per thread);
only what runs after the execve of WORKER_EXE counts (not the wrappers)."""
import functools
import glob
import re
import subprocess
import sys

unit_path, trace_dir, exe = sys.argv[1:4]


@functools.cache
def expand(name):
    """The system calls of a systemd syscall group (@name), recursively."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True)
    calls = set()
    for line in out.stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        calls |= expand(item) if item.startswith("@") else {item}
    return frozenset(calls)


def names(value):
    return {n for n in value.split() if n}


allowed, denied, families = None, set(), set()
for line in open(unit_path):
    key, _, value = line.strip().partition("=")
    if key == "SystemCallFilter":
        items = value[1:] if value.startswith("~") else value
        calls = set().union(*(expand(n) if n.startswith("@") else {n} for n in names(items)))
        if value.startswith("~"):
            denied |= calls
        else:
            allowed = (allowed or set()) | calls
    elif key == "RestrictAddressFamilies":
        families |= names(value)
assert allowed, "no SystemCallFilter= allow list in the unit"
allowed -= denied

used, sockets, wx = {}, set(), []
call = re.compile(r"^(?:\[pid\s+\d+\] )?([a-z0-9_]+)\(")
for path in glob.glob(f"{trace_dir}/t.*"):
    lines = open(path, errors="replace").read().splitlines()
    execs = [i for i, l in enumerate(lines) if l.startswith("execve(")]
    if execs:
        # The process that became the worker: from its execve on. Other
        # processes that exec (unshare, mount) are the wrappers.
        mine = [i for i in execs if f'execve("{exe}"' in lines[i]]
        if not mine:
            continue
        lines = lines[mine[-1]:]
    for l in lines:
        m = call.match(l)
        if not m:
            continue
        used.setdefault(m.group(1), l)
        if m.group(1) == "socket":
            sockets.add(l.split("(", 1)[1].split(",", 1)[0])
        if ("PROT_WRITE|PROT_EXEC" in l) or (m.group(1) == "mprotect" and "PROT_EXEC" in l):
            wx.append(l)

problems = [f"system call {n} is not allowed by SystemCallFilter=: {used[n][:120]}" for n in sorted(used.keys() - allowed)]
problems += [f"socket family {f} is not in RestrictAddressFamilies=" for f in sorted(sockets - families)]
problems += [f"writable and executable memory (MemoryDenyWriteExecute=): {l[:120]}" for l in wx[:3]]
if not used:
    problems.append(f"no system calls of {exe} in {trace_dir}")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"{len(used)} distinct system calls, all allowed by the unit's filter; socket families {sorted(sockets)}; no W+X memory")
