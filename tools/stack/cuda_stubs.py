"""Write link-time stubs of the CUDA driver (libcuda.so) and NVML (libnvidia-ml.so) libraries.

PETSc's configure links every CUDA build against both: they come with the GPU *driver*, not the
toolkit, and the toolkit's own stubs (``lib64/stubs``) are not in NVIDIA's pip wheels.  A machine that
builds the stack without a GPU (a login node, a CI runner) has neither, so this script makes stand-ins
from the toolkit's headers: every function that ``cuda.h`` / ``nvml.h`` declares (after the
preprocessor, so that ``cuMemAlloc`` is the ``cuMemAlloc_v2`` the headers really export) becomes a
function that returns the library's "no driver" code.  They are for linking only: the stack puts
them in ``lib/stubs``, which PETSc keeps out of the run path, and removes the stubs' names from
PETSc's list of needed libraries when PETSc calls none of their functions (tools/stack/ensure.sh),
so the real driver is the one loaded wherever there is one.

    python cuda_stubs.py CUDA_DIR   (writes CUDA_DIR/lib/stubs/{libcuda.so,libnvidia-ml.so})
"""

import pathlib
import re
import subprocess
import sys

# name, header, return-type spelling in the preprocessed header, soname, the "no driver" code
LIBRARIES = (
    ("cuda", "cuda.h", "CUresult", "libcuda.so.1", 34),           # CUDA_ERROR_STUB_LIBRARY
    ("nvidia-ml", "nvml.h", "nvmlReturn_t", "libnvidia-ml.so.1", 9),  # NVML_ERROR_DRIVER_NOT_LOADED
)


def declared_functions(header: pathlib.Path, return_type: str, include: pathlib.Path) -> list[str]:
    """Names of the functions returning ``return_type`` that ``header`` declares, preprocessed."""
    text = subprocess.run(["gcc", "-E", "-P", f"-I{include}", "-x", "c", str(header)], check=True,
                          capture_output=True, text=True).stdout
    names = re.findall(rf"\b{return_type}\s+(?:__attribute__\s*\(\(.*?\)\)\s*)?(\w+)\s*\(", text)
    return sorted(set(names))


def write_stub(cuda: pathlib.Path, name: str, header: str, return_type: str, soname: str, code: int) -> int:
    include, stubs = cuda / "include", cuda / "lib" / "stubs"
    stubs.mkdir(parents=True, exist_ok=True)
    names = declared_functions(include / header, return_type, include)
    if not names:
        raise SystemExit(f"cuda_stubs: no {return_type} function found in {include / header}")
    source = stubs / f"lib{name}-stub.c"
    source.write_text("".join(f"int {n}(void) {{ return {code}; }}\n" for n in names))
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", f"-Wl,-soname,{soname}", "-o",
                    str(stubs / f"lib{name}.so"), str(source)], check=True)
    return len(names)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    cuda = pathlib.Path(argv[1])
    for lib in LIBRARIES:
        print(f"cuda_stubs: lib{lib[0]}.so with {write_stub(cuda, *lib)} functions")


if __name__ == "__main__":
    main(sys.argv)
