"""A guard against yappi pinning every profiled coroutine (sumerc/yappi#217).

What leaks, read from yappi 1.7.6's C source and confirmed by ``sys.getrefcount``: for every
*return or yield* of a coroutine frame it profiles, ``_call_leave`` calls ``IS_SUSPENDED``,
which calls ``PyFrame_GetGenerator(frame)``. That C API returns a **new** reference to the
coroutine, and yappi never releases it. A task that runs to completion without awaiting leaks
one reference to its coroutine, one that suspends k times leaks k + 1: the coroutine (and its
frame) can never be freed. ``clear_stats()``, ``stop()`` and ``gc.collect()`` cannot help,
since nothing but a refcount remembers the leak.

The guard fixes it at the source, for the length of an asyncwatch profile only: it points
yappi's own import slot (its ELF GOT entry) for ``PyFrame_GetGenerator`` at a small function
that calls the real one and drops the extra reference before returning, i.e. hands yappi the
borrowed reference it treats it as. Nothing else in the process is touched, and the slot is
put back when the profile ends. It is applied only when all of these hold, else the profile
runs unguarded and the report says why:

* Linux (ELF), ``pyelftools`` importable, the slot found in ``_yappi``'s relocations;
* the slot holds exactly the address of the real ``PyFrame_GetGenerator`` (so we are
  replacing what we think we are), in a writable page;
* a probe shows this yappi really leaks one reference per coroutine return, and a second
  probe through the patched slot shows it no longer does (so a fixed yappi is left alone).
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from typing import Any

logger = logging.getLogger("asyncwatch")

_PROTO = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
_real_get_generator = ctypes.pythonapi.PyFrame_GetGenerator
_real_get_generator.restype = ctypes.c_void_p
_real_get_generator.argtypes = [ctypes.c_void_p]
_decref = ctypes.pythonapi.Py_DecRef
_decref.restype = None
_decref.argtypes = [ctypes.c_void_p]


def _borrowed_generator(frame: int | None) -> int | None:
    """``PyFrame_GetGenerator`` returning a borrowed reference (what yappi assumes)."""
    gen: int | None = _real_get_generator(frame)
    if gen:
        # Safe: the frame being left belongs to this coroutine, so it is alive beyond this call.
        _decref(gen)
    return gen


# Kept alive for the life of the process: a thread may still be inside it after the slot is
# restored, so the trampoline must never be freed.
_TRAMPOLINE = _PROTO(_borrowed_generator)
_TRAMPOLINE_ADDRESS = ctypes.cast(_TRAMPOLINE, ctypes.c_void_p).value
_REAL_ADDRESS = ctypes.cast(_real_get_generator, ctypes.c_void_p).value


async def _probe_coroutine() -> None:
    return None


def references_leaked_per_return(yappi: Any) -> int:
    """Profile one coroutine to completion; how many references yappi left on it."""
    coro = _probe_coroutine()
    before = sys.getrefcount(coro)
    yappi.start(builtins=False, profile_threads=False)
    try:
        coro.send(None)
    except StopIteration:
        pass
    finally:
        yappi.stop()
    leaked = sys.getrefcount(coro) - before
    yappi.clear_stats()
    for _ in range(max(leaked, 0)):
        _decref(id(coro))  # our own probe object: exactly these references are yappi's
    return leaked


class LeakGuard:
    """Patch yappi's ``PyFrame_GetGenerator`` slot while a profile runs; see the module doc."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slot: ctypes.c_void_p | None = None
        self._located = False
        self._why_not = ""
        self.active = False

    def apply(self, yappi: Any) -> str:
        """Arm the guard (yappi must not be running). Returns the state for the report."""
        with self._lock:
            if self.active:
                return "on"
            try:
                leaked = references_leaked_per_return(yappi)
            except Exception as exc:  # the probe is only a check; never fail the profile for it
                return f"off: probe failed ({exc!r})"
            if leaked <= 0:
                return "not needed: this yappi does not pin coroutines"
            slot = self._find_slot()
            if slot is None:
                return f"off: {self._why_not}; each profiled coroutine stays in memory"
            slot.value = _TRAMPOLINE_ADDRESS
            if references_leaked_per_return(yappi) != 0:
                slot.value = _REAL_ADDRESS
                return "off: patch had no effect; each profiled coroutine stays in memory"
            self.active = True
            return "on"

    def restore(self) -> None:
        """Put yappi's slot back as it was. Idempotent."""
        with self._lock:
            if self.active and self._slot is not None:
                self._slot.value = _REAL_ADDRESS
            self.active = False

    # ---------------------------------------------------------------- locating the slot

    def _find_slot(self) -> ctypes.c_void_p | None:
        if self._located:
            return self._slot
        self._located = True
        try:
            self._slot = self._locate()
        except Exception as exc:
            self._why_not = f"cannot locate yappi's import slot ({exc!r})"
            self._slot = None
        if self._slot is None and not self._why_not:
            self._why_not = "cannot locate yappi's import slot"
        return self._slot

    def _locate(self) -> ctypes.c_void_p | None:
        if not sys.platform.startswith("linux"):
            self._why_not = f"the guard needs Linux (ELF), not {sys.platform}"
            return None
        try:
            from elftools.elf.elffile import ELFFile
            from elftools.elf.relocation import RelocationSection
        except ImportError:
            self._why_not = "pyelftools is not installed (pip install asyncwatch[profile])"
            return None
        import _yappi  # type: ignore[import-not-found]

        path = _yappi.__file__
        offset = init_value = None
        with open(path, "rb") as f:
            elf = ELFFile(f)
            dynsym: Any = elf.get_section_by_name(".dynsym")
            found = dynsym.get_symbol_by_name("PyInit__yappi") if dynsym else None
            if not found:
                self._why_not = "_yappi exports no PyInit__yappi"
                return None
            init_value = found[0]["st_value"]
            for section in elf.iter_sections():
                if not isinstance(section, RelocationSection):
                    continue
                symbols: Any = elf.get_section(section["sh_link"])
                for rel in section.iter_relocations():
                    index = rel["r_info_sym"]
                    if index and symbols.get_symbol(index).name == "PyFrame_GetGenerator":
                        offset = rel["r_offset"]
                        break
                if offset is not None:
                    break
        if offset is None:
            self._why_not = "_yappi does not import PyFrame_GetGenerator"
            return None
        library = ctypes.CDLL(path)
        init_address = ctypes.cast(library.PyInit__yappi, ctypes.c_void_p).value or 0
        address = init_address - init_value + offset
        if address % ctypes.sizeof(ctypes.c_void_p):
            self._why_not = "the slot is not aligned"
            return None
        if not _writable(address):
            self._why_not = "the slot is read-only (full RELRO)"
            return None
        slot = ctypes.c_void_p.from_address(address)
        if slot.value != _REAL_ADDRESS:
            self._why_not = "the slot does not hold PyFrame_GetGenerator"
            return None
        return slot


def _writable(address: int) -> bool:
    """Whether ``address`` lies in a writable mapping of this process (Linux)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            low, high = (int(x, 16) for x in span.split("-"))
            if low <= address < high:
                return perms.startswith("rw")
    return False


GUARD = LeakGuard()
