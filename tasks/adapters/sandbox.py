"""What the model's process may touch, enforced by the kernel: Linux's Landlock.

A process without credentials can still open a SQLite tracking store it finds on disk, or reach a tracking server that
asks for none. With Landlock (Linux 5.13 and later; ABI 4, Linux 6.7, for the network rule) the model's process
restricts itself, irrevocably and for every process it starts, to

- read only what it is given (the installed libraries, the data, the model's files, its own /proc entry: not the home
  folder, not other processes' environments), and
- write, create, remove or rename only inside its own working folder and ``/dev`` (``/dev/null``, ``/dev/shm``), and
- open no TCP connection at all (with the local engine; a Dask engine needs its cluster's ports, so that rule is left
  out there and the report says so).

So the model's code cannot change the tracking store, whatever store it is and whatever it knows of it. Where the
kernel has no Landlock, ``restrict`` says so and the audit records it (``isolation.filesystem``: unavailable); the
other protections (no credentials, no tracking URI, a process of its own) still hold.

The calls are the kernel's own (``landlock_create_ruleset``, ``landlock_add_rule``, ``landlock_restrict_self``,
syscalls 444-446 on every architecture), made with ctypes: the PyPI bindings are pre-releases.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_VERSION = 1  # LANDLOCK_CREATE_RULESET_VERSION
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_CAPABILITY_VERSION_3 = 0x20080522

# filesystem rights (uapi/linux/landlock.h) and the ABI that introduced them
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
READ = EXECUTE | READ_FILE | READ_DIR
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
BIND_TCP, CONNECT_TCP = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 where it has none (not Linux, too old, or switched off)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        version = libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def _handled_fs(abi: int) -> int:
    return _FS_BY_ABI[max(v for v in _FS_BY_ABI if v <= abi)]


def restrict(writable: list[Path], readable: list[Path], allow_tcp: bool) -> dict[str, str]:
    """Restrict this process (and all it starts) to writing beneath ``writable``, reading beneath ``readable`` and
    ``writable``, and, unless ``allow_tcp``, to no TCP connection. Returns what holds, in words, for the record:
    {"filesystem": ..., "network": ...}."""
    abi = abi_version()
    if abi < 1:
        return {"filesystem": "unavailable (this kernel has no Landlock)", "network": "unavailable"}
    libc = ctypes.CDLL(None, use_errno=True)
    handled_fs = _handled_fs(abi)
    handle_net = abi >= 4 and not allow_tcp
    attr = _RulesetAttr(handled_fs, (BIND_TCP | CONNECT_TCP) if handle_net else 0)
    size = ctypes.sizeof(_RulesetAttr) if handle_net else ctypes.sizeof(ctypes.c_uint64)
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return {"filesystem": f"unavailable ({os.strerror(ctypes.get_errno())})", "network": "unavailable"}
    try:
        for folder in readable:
            if folder.exists():
                _allow(libc, ruleset, folder, READ & handled_fs)
        for folder in writable:
            _allow(libc, ruleset, folder, handled_fs)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.syscall(_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    finally:
        os.close(ruleset)
    where = ", ".join(str(f) for f in writable)
    reads = ("the libraries, the model's files, the data and every /proc entry" if Path("/proc") in readable else
             "only the libraries, the model's files, the data and its own /proc entry")
    network = ("no TCP connection (Landlock)" if handle_net else
               "TCP allowed (the Dask engine talks to its cluster)" if allow_tcp else
               f"TCP allowed (this kernel's Landlock ABI {abi} has no network rule)")
    return {"filesystem": f"reads {reads}; writes only beneath {where} (Landlock ABI {abi})", "network": network}


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> bool:
    """Give up every Linux capability, for this process and all it starts (the bounding set too, so a process it
    executes as root gains none back). A process running as root keeps its user id, so it still reads root's files,
    but it can no longer read a non-dumpable process's /proc entries (CAP_SYS_PTRACE) or step around file permissions
    it does not own (CAP_DAC_OVERRIDE). Returns whether any were held."""
    if os.geteuid() != 0:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    for capability in range(64):
        libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0)  # EINVAL past the last one the kernel knows: ignored
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), f"capset: {os.strerror(ctypes.get_errno())}")
    return True


def not_inspectable() -> None:
    """Make this process's /proc entries (its environment, its memory) unreadable to other processes of the same user,
    the model's among them (``PR_SET_DUMPABLE`` 0; it also turns core dumps off). A process it starts is dumpable
    again: the model's process gets no credentials in its environment instead."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to do
        pass


def _allow(libc, ruleset: int, folder: Path, access: int) -> None:
    fd = os.open(folder, os.O_PATH | os.O_CLOEXEC)
    try:
        if not folder.is_dir():  # a file takes only the rights that apply to files
            access &= EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
        rule = _PathBeneath(access, fd)
        if libc.syscall(_ADD_RULE, ruleset, ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {folder}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
