"""``PROFILES_MALLOC_MMAP_THRESHOLD`` (issue 12, bytes per user): the worker fixes glibc's mmap
threshold (default 4 MiB) so large blocks, such as the per-user tables that grow by doubling,
stay mapped and are given back on free, instead of the dynamic threshold moving them onto the
heap after the first one is freed (heap holes later filled piecemeal by small objects)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from stream.core.errors import ConfigError
from stream.settings import Settings
from stream.worker.malloc_tune import set_mmap_threshold

pytestmark = pytest.mark.unit

# In a fresh interpreter: allocate a 6 MiB block, free it, allocate another; print whether the
# second one lies in the [heap] mapping (glibc's dynamic threshold rose to 6 MiB on the free).
_PROBE = textwrap.dedent("""
    import ctypes, sys
    from stream.settings import Settings
    from stream.worker.malloc_tune import set_mmap_threshold
    s = Settings.from_env({"PROFILES_MALLOC_MMAP_THRESHOLD": sys.argv[1]} if sys.argv[1] else {})
    set_mmap_threshold(s.malloc_mmap_threshold)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 6 << 20
    libc.free(libc.malloc(size))
    p = libc.malloc(size)
    heap = None
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith("[heap]"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                heap = (lo, hi)
    print("heap" if heap and heap[0] <= p < heap[1] else "mapped")
""")


def _second_block(threshold: str) -> str:
    out = subprocess.run([sys.executable, "-c", _PROBE, threshold], capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_default_threshold_keeps_large_blocks_mapped_after_a_free() -> None:
    assert _second_block("") == "mapped"  # the worker's default (4 MiB)
    assert _second_block("0") == "heap"  # glibc's dynamic default: moved onto the heap


def test_setting_is_validated_with_a_one_line_error() -> None:
    assert Settings().malloc_mmap_threshold == 4 << 20
    assert Settings.from_env({"PROFILES_MALLOC_MMAP_THRESHOLD": "0"}).malloc_mmap_threshold == 0
    for bad in ("100", str(64 << 20), "-1"):
        with pytest.raises(ConfigError, match="malloc_mmap_threshold must be 0") as e:
            Settings.from_env({"PROFILES_MALLOC_MMAP_THRESHOLD": bad})
        assert "\n" not in str(e.value).strip()
    assert set_mmap_threshold(0) is False  # 0: glibc's dynamic default is left alone
