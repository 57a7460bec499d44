"""CPU memory of a run (docs/performance.md, "Page faults"): 2 MB pages for large tensors, and the block
arena of cpu_arena.cpp, which keeps the pages a training step frees for the next step, within the most
memory the steps needed at one time.

Every command calls `set_up()` first; `distributed.resolve_device` calls `use_arena()` when a run is on
the CPU.  METAGMVAE_CPU_ALLOCATOR=torch turns the arena off: torch's own CPU allocator, the same numbers.

The arena is C++ built once per torch installation, on first use (a few seconds), with the C++ compiler
($CXX, default c++) against the installed torch's headers, into $XDG_CACHE_HOME/meta-gmvae (default
~/.cache/meta-gmvae).  Where no compiler is found or the build fails, the run goes on with torch's allocator
after a one-line note.  So it does when the process's address space or data segment is limited (ulimit -v,
ulimit -d) or the kernel counts every committed page (vm.overcommit_memory=2): the arena holds address
space and committed pages beyond its live blocks, which under those limits could make an allocation fail
that torch's allocator would have served.
"""
import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ALLOCATORS = ("arena", "torch")  # METAGMVAE_CPU_ALLOCATOR's values; the first is the default
# Blocks below glibc's mmap threshold stay with glibc, whose heap keeps them between steps anyway.
MIN_ARENA_BLOCK = 128 << 10
SOURCE = Path(__file__).with_name("cpu_arena.cpp")
OVERCOMMIT_MODE = Path("/proc/sys/vm/overcommit_memory")  # 2: every committed page is counted
_arena_in_use = None  # this process's answer of use_arena, once asked


def allocator():
    return os.environ.get("METAGMVAE_CPU_ALLOCATOR", ALLOCATORS[0])


def set_up():
    """Call before the first tensor exists.  Asks torch for 2 MB pages for CPU tensors of 2 MB and more
    (THP_MEM_ALLOC_ENABLE=1; a value the user exported wins) where the kernel offers them, and refuses an
    unknown METAGMVAE_CPU_ALLOCATOR in one line (exit code 2)."""
    modes = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if modes.exists() and "[never]" not in modes.read_text():
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if allocator() not in ALLOCATORS:
        print(f"{Path(sys.argv[0]).name}: error: METAGMVAE_CPU_ALLOCATOR={allocator()!r}: expected one of "
              f"{', '.join(ALLOCATORS)}", file=sys.stderr)
        sys.exit(2)


def use_arena():
    """Make the block arena torch's CPU allocator for the rest of this process (the first call decides;
    later calls return its answer).  Returns whether it is: not with METAGMVAE_CPU_ALLOCATOR=torch, not off
    Linux, and not when it cannot be built, loaded or installed (then after a one-line note on stderr)."""
    global _arena_in_use
    if _arena_in_use is None:
        _arena_in_use = allocator() == "arena" and sys.platform.startswith("linux") and _install()
    return _arena_in_use


def _install():
    limit = _memory_limit()
    if limit:
        return _not_in_use(limit)
    try:
        library = ctypes.CDLL(str(_built_library()))
    except (OSError, subprocess.SubprocessError) as e:
        errors = [line for line in (getattr(e, "stderr", None) or "").splitlines() if "error" in line]
        return _not_in_use(errors[0].strip() if errors else str(e))
    from .runfiles import physical_memory  # imports torch: only once set_up has run

    install = library.metagmvae_use_cpu_arena
    install.argtypes = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
    if not install(physical_memory(), MIN_ARENA_BLOCK, os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"):
        return _not_in_use("no address range reserved, or torch kept another CPU allocator")
    return True


def _memory_limit():
    """The limit under which the arena's reserved address space and kept pages could make an allocation
    fail that torch's allocator would serve, in words; None when there is none (Linux)."""
    import resource

    if OVERCOMMIT_MODE.exists() and OVERCOMMIT_MODE.read_text().strip() == "2":
        return "the kernel counts every committed page: vm.overcommit_memory=2"
    for limit, what, flag in (resource.RLIMIT_AS, "address space", "-v"), (resource.RLIMIT_DATA, "data segment", "-d"):
        if resource.getrlimit(limit)[0] != resource.RLIM_INFINITY:
            return f"the process's {what} is limited: ulimit {flag}"
    return None


def _cache_folder():
    """$XDG_CACHE_HOME/meta-gmvae, else ~/.cache/meta-gmvae; a relative path in either is not used (the XDG
    rule: it would put the build into the working folder)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "meta-gmvae"
    home = os.path.expanduser("~")
    if not os.path.isabs(home):
        raise OSError("no folder for the build: set XDG_CACHE_HOME or HOME to an absolute path")
    return Path(home) / ".cache" / "meta-gmvae"


def _not_in_use(reason):
    print(f"note: CPU block arena not in use ({reason}): torch's allocator serves this run, with the same "
          f"numbers and slower steps (METAGMVAE_CPU_ALLOCATOR=torch silences this)", file=sys.stderr)
    return False


def _built_library():
    """The arena's shared library for this torch, built if the cache does not hold it yet."""
    import torch

    torch_dir = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    compiler = shlex.split(os.environ.get("CXX", "c++"))
    key = hashlib.sha256(SOURCE.read_bytes() + repr((torch.__version__, str(torch_dir), abi, compiler)).encode())
    cache = _cache_folder()
    library = cache / f"cpu_arena-{key.hexdigest()[:16]}.so"
    if library.is_file():
        return library
    if os.path.lexists(library):  # a link to nothing, a folder, a FIFO: not ours to replace
        raise OSError(f"{library} exists and is not a file")
    if not compiler or shutil.which(compiler[0]) is None:
        raise OSError(f"no C++ compiler {compiler[0] if compiler else '(empty $CXX)'} found")
    cache.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=cache, prefix=library.name, suffix=".partial")
    os.close(fd)
    try:
        subprocess.run([*compiler, "-O2", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                        "-I", str(torch_dir / "include"), str(SOURCE), "-L", str(torch_dir / "lib"), "-lc10",
                        f"-Wl,-rpath,{torch_dir / 'lib'}", "-o", partial],
                       check=True, capture_output=True, text=True, timeout=600)
        os.replace(partial, library)  # whole or absent, also when two processes build it at once
    finally:
        Path(partial).unlink(missing_ok=True)
    return library
