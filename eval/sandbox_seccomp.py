"""The seccomp filter bubblewrap loads for sandboxed programs (`bwrap --seccomp FD`).

Why: a program whose user maps to root outside (the evaluator runs as root, as in most
containers) is exempt from RLIMIT_NPROC, so only a filter stops a fork bomb. The filter
also refuses calls that reach other processes, namespaces, mounts or little-used kernel
interfaces. Threads stay possible (clone with CLONE_THREAD). A classic BPF program as
seccomp(2) documents it: arch check, then one comparison per refused call.
"""

from __future__ import annotations

import errno
import platform
import struct
from typing import Dict, Optional

_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL = 0x7FFF0000, 0x80000000
_ERRNO = 0x00050000
_CLONE_THREAD = 0x00010000
_X32_BIT = 0x40000000

# Refused calls by name; numbers per architecture below (absent names do not exist there).
REFUSED = ("fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
           "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr", "move_mount",
           "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "open_by_handle_at", "name_to_handle_at",
           "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
           "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module",
           "delete_module", "acct", "swapon", "swapoff", "reboot", "syslog", "quotactl", "personality")
_NUMBERS: Dict[str, Dict[str, int]] = {
    "x86_64": {"arch": 0xC000003E, "clone": 56, "clone3": 435, "fork": 57, "vfork": 58, "ptrace": 101,
               "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438, "unshare": 272,
               "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "mount_setattr": 442,
               "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
               "open_by_handle_at": 304, "name_to_handle_at": 303, "keyctl": 250, "add_key": 248,
               "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425,
               "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 246, "kexec_file_load": 320,
               "init_module": 175, "finit_module": 313, "delete_module": 176, "acct": 163, "swapon": 167,
               "swapoff": 168, "reboot": 169, "syslog": 103, "quotactl": 179, "personality": 135},
    "aarch64": {"arch": 0xC00000B7, "clone": 220, "clone3": 435, "ptrace": 117, "process_vm_readv": 270,
                "process_vm_writev": 271, "kcmp": 272, "pidfd_getfd": 438, "unshare": 97, "setns": 268, "mount": 40,
                "umount2": 39, "pivot_root": 41, "chroot": 51, "mount_setattr": 442, "move_mount": 429,
                "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
                "open_by_handle_at": 265, "name_to_handle_at": 264, "keyctl": 219, "add_key": 217,
                "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425,
                "io_uring_enter": 426, "io_uring_register": 427, "kexec_load": 104, "kexec_file_load": 294,
                "init_module": 105, "finit_module": 273, "delete_module": 106, "acct": 89, "swapon": 224,
                "swapoff": 225, "reboot": 142, "syslog": 116, "quotactl": 60, "personality": 92},
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def program(machine: Optional[str] = None) -> Optional[bytes]:
    """The filter for this machine's architecture, or None where it has no table here."""
    nr = _NUMBERS.get(machine or platform.machine())
    if nr is None:
        return None
    refused = [nr[name] for name in REFUSED if name in nr]
    # Layout: header, one JEQ per refused call, clone/clone3 checks, ALLOW, then the returns.
    body = [("ld", 4), ("jeq_else", nr["arch"], "kill"), ("ld", 0)]
    if nr is _NUMBERS["x86_64"]:
        body.append(("jge", _X32_BIT, "eperm"))  # the x32 ABI: other numbers for the same calls
    body += [("jeq", n, "eperm") for n in refused]
    body += [("jeq", nr["clone3"], "enosys"),  # glibc then falls back to clone, checked below
             ("jeq_else", nr["clone"], "allow"), ("ld", 16), ("jset", _CLONE_THREAD, "allow"),
             ("ret", _ERRNO | errno.EPERM)]
    returns = {"allow": _ALLOW, "eperm": _ERRNO | errno.EPERM, "enosys": _ERRNO | errno.ENOSYS, "kill": _KILL}
    where = {label: len(body) + i for i, label in enumerate(returns)}
    out = []
    for i, (op, *rest) in enumerate(body):
        after = i + 1
        if op == "ld":
            out.append(_insn(_LD_ABS, rest[0]))
        elif op == "ret":
            out.append(_insn(_RET, rest[0]))
        elif op == "jeq_else":  # equal: go on; else: jump to the label
            out.append(_insn(_JEQ, rest[0], 0, where[rest[1]] - after))
        else:  # jeq / jge / jset: true -> label, false -> go on
            code = {"jeq": _JEQ, "jge": _JGE, "jset": _JSET}[op]
            out.append(_insn(code, rest[0], where[rest[1]] - after, 0))
    out += [_insn(_RET, k) for k in returns.values()]
    if len(out) > 255:
        raise ValueError("seccomp filter too long for 8-bit jumps")
    return b"".join(out)
