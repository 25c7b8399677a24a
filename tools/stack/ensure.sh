#!/usr/bin/env bash
# Make sure the pdeinv software stack exists, build it if it does not, link ./.venv to it and
# install pdeinv (editable) into it.  Every `make` target calls this; a cached run takes seconds.
#
#   tools/stack/ensure.sh              ensure stack, link .venv, install pdeinv editable
#   tools/stack/ensure.sh --dir        print the stack directory (empty if not built), build nothing
#   tools/stack/ensure.sh --distclean  remove this clone's .venv link and the whole stack cache
#
# Environment:
#   PDEINV_CACHE   cache root, outside the clone (default ${XDG_CACHE_HOME:-$HOME/.cache}/pdeinv)
#   PDEINV_VENV    an existing Python environment that already has Firedrake (e.g. on an HPC system):
#                  nothing is built, ./.venv points at it, pdeinv and the test tools are added to it
#   PDEINV_PYTHON  interpreter the new environment is made from (default: python3)
#   PDEINV_JOBS    parallel make jobs for PETSc (default: number of cores)
#   PDEINV_GPU     "" (default: the CPU stack) or "cuda": the CUDA variant (tools/stack/spec-cuda.sh),
#                  its own cache key; `make stack GPU=cuda` sets it.  ./.venv follows the last call.
#
# Layout of the cache (KEY = hash of tools/stack/spec.sh + OS + Python version):
#   stack-KEY.d/          the build: petsc/ (PETSC_DIR), venv/, logs/, stamps/, env.sh
#   stack-KEY -> stack-KEY.d   published by an atomic rename once every stage has passed its check
#   stack-KEY.lock        flock(1) lock: concurrent builds wait instead of building twice
# PETSc and a virtual environment both embed their absolute paths, so they are built where they
# will live, and "moving into place" is the atomic publication of the stack-KEY link: a stack without
# that link is never used.  A killed build resumes at the first stage without a stamp; a stage
# without a stamp is always redone from nothing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=spec.sh
source "$HERE/spec.sh"
GPU=${PDEINV_GPU:-}
case "$GPU" in
  "") ;;
  # shellcheck source=spec-cuda.sh
  cuda) source "$HERE/spec-cuda.sh";;
  *) printf '[stack] ERROR: GPU=%s: expected nothing (the CPU stack) or GPU=cuda\n' "$GPU" >&2; exit 2;;
esac

# Firedrake points XDG_CACHE_HOME into its environment (.venv/.cache) inside a Python process that
# imported it; a `make` started from there must still find the shared stack, not build a new one.
case "${XDG_CACHE_HOME:-}" in */.venv/*|"${VIRTUAL_ENV:-/nonexistent}"/*) XDG_CACHE_HOME="";; esac
CACHE=${PDEINV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pdeinv}
PY=${PDEINV_PYTHON:-python3}
# Not nproc: it obeys OMP_NUM_THREADS=1, which the Makefile exports.
JOBS=${PDEINV_JOBS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 OMP_NUM_THREADS=1
# Called from `make`: the parent's MAKEFLAGS must not leak into PETSc's own make.
unset MAKEFLAGS MFLAGS MAKELEVEL
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

log() { printf '[stack %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

stack_key() {
  local os pyv
  os=$( (. /etc/os-release 2>/dev/null && echo "${ID:-unknown}-${VERSION_ID:-0}") || echo unknown)
  pyv=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
    || die "cannot run '$PY' (set PDEINV_PYTHON to a Python >= 3.10 interpreter)"
  # the CPU stack's key is the hash of spec.sh alone; the CUDA variant adds its own files
  { cat "$HERE/spec.sh"; [ "$GPU" = cuda ] && cat "$HERE/spec-cuda.sh" "$HERE/cuda_stubs.py"
    echo "$os $pyv $(uname -m)"; } | sha256sum | cut -c1-12
}

# ----------------------------------------------------------------------------------- system packages
ensure_system_packages() {
  local missing=() p
  if command -v dpkg-query >/dev/null 2>&1; then
    for p in "${APT_PACKAGES[@]}"; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
  else
    missing=("${APT_PACKAGES[@]}")
  fi
  [ ${#missing[@]} -eq 0 ] && { log "system packages: all present"; return; }
  if ! command -v apt-get >/dev/null 2>&1; then
    die "apt-get is not available. Install these packages (Debian/Ubuntu names) with your system's
package manager, or point PDEINV_VENV at an environment that already has Firedrake:
  ${missing[*]}"
  fi
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root or sudo to install: ${missing[*]}"
    sudo=(sudo)
  fi
  log "system packages: installing ${#missing[@]} with apt-get (${missing[*]})"
  if ! { "${sudo[@]}" apt-get update -q &&
         "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$D/logs/apt.log" 2>&1; then
    tail -n 30 "$D/logs/apt.log" >&2
    die "apt-get failed (full log: $D/logs/apt.log); the packages needed are: ${missing[*]}"
  fi
}

# ------------------------------------------------------------------------------------------- stages
# Each stage starts from nothing (removes its own outputs first) and is stamped only on success.
stage_venv() {
  rm -rf "$D/venv"
  "$PY" -m venv "$D/venv"
  "$D/venv/bin/python" -m pip install -U "pip>=24"
  # --only-binary mpi4py: its wheel loads the system Open MPI at run time; a source build of mpi4py
  # takes > 15 min and ~4 GB here for no gain.
  "$D/venv/bin/python" -m pip install --only-binary mpi4py "${PIP_BASE[@]}" "${PIP_TOOLS[@]}"
}

stage_petsc() {
  rm -rf "$D/petsc" "$D/downloads"
  mkdir -p "$D/downloads"
  "$PY" -m pip download --no-deps --no-binary :all: -d "$D/downloads" "petsc==$PETSC_VERSION"
  tar xzf "$D/downloads/petsc-$PETSC_VERSION.tar.gz" -C "$D"
  mv "$D/petsc-$PETSC_VERSION" "$D/petsc"
  rm -rf "$D/downloads"
  cd "$D/petsc"
  local opts=("${PETSC_CONFIGURE_OPTIONS[@]}")
  if [ "$GPU" = cuda ]; then
    opts=("${opts[@]/--with-cuda=0}")
    mapfile -t -O "${#opts[@]}" opts < <(cuda_configure_options "$D/cuda")
  fi
  ./configure PETSC_ARCH="$PETSC_ARCH_NAME" "${opts[@]}"
  make PETSC_DIR="$D/petsc" PETSC_ARCH="$PETSC_ARCH_NAME" MAKE_NP="$JOBS" all
  rm -rf "$D/petsc/$PETSC_ARCH_NAME/obj"   # object files: ~1 GB, not needed once the library is linked
}

# --no-cache-dir for everything compiled against this stack's PETSc/HDF5: pip's wheel cache would
# otherwise hand a later build (another cache key, another PETSC_DIR) a wheel linked to this one.
stage_petsc4py() {
  PETSC_DIR="$D/petsc" PETSC_ARCH="$PETSC_ARCH_NAME" \
    "$D/venv/bin/python" -m pip install --no-cache-dir --no-build-isolation --no-deps \
      "petsc4py==$PETSC4PY_VERSION"
}

stage_cuda() {
  # The CUDA toolkit from NVIDIA's wheels, laid out as a toolkit directory (bin/ include/ lib/ and the
  # targets/<arch>-linux links nvcc.profile looks for), with the unversioned library names the linker
  # wants and link-time stubs of the driver libraries (tools/stack/cuda_stubs.py).
  rm -rf "$D/cuda" "$D/cuda-wheels"
  "$PY" -m pip install --no-deps --no-compile --target "$D/cuda-wheels" "${CUDA_WHEELS[@]}"
  mv "$D/cuda-wheels/nvidia/cu13" "$D/cuda"
  rm -rf "$D/cuda-wheels"
  ln -sfn lib "$D/cuda/lib64"
  mkdir -p "$D/cuda/targets/$(uname -m)-linux"
  ln -sfn ../../include "$D/cuda/targets/$(uname -m)-linux/include"
  ln -sfn ../../lib "$D/cuda/targets/$(uname -m)-linux/lib"
  local f
  for f in "$D/cuda/lib/"lib*.so.*; do
    ln -sfn "$(basename "$f")" "${f%%.so.*}.so"
  done
  "$PY" "$HERE/cuda_stubs.py" "$D/cuda"
  "$D/cuda/bin/nvcc" --version
}

stage_cuda_unstub() {
  # libpetsc names libcuda.so.1 and libnvidia-ml.so.1 as needed libraries (configure links the stubs),
  # yet calls none of their functions (checked here): without the names it also loads on a machine
  # with no GPU driver, and the CUDA runtime still finds the real driver where there is one.
  local lib="$D/petsc/$PETSC_ARCH_NAME/lib/libpetsc.so" stubbed used
  lib=$(readlink -f "$lib")
  stubbed=$( { nm -D --defined-only "$D/cuda/lib/stubs/libcuda.so"
               nm -D --defined-only "$D/cuda/lib/stubs/libnvidia-ml.so"; } | awk '{print $3}' | sort -u)
  used=$(comm -12 <(nm -D --undefined-only "$lib" | awk '{print $2}' | sed 's/@.*//' | sort -u) \
                  <(echo "$stubbed"))
  if [ -n "$used" ]; then
    echo "libpetsc calls driver functions: $used"
    return 1
  fi
  patchelf --remove-needed libcuda.so.1 --remove-needed libnvidia-ml.so.1 "$lib"
  ! readelf -d "$lib" | grep -E "libcuda\.so|libnvidia-ml\.so"
  readelf -d "$lib" | grep -E "NEEDED.*(cudart|cublas|cusparse)"
}

stage_h5py() {
  HDF5_MPI=ON CC=mpicc HDF5_DIR="$_HDF5_LIB" \
    "$D/venv/bin/python" -m pip install --no-cache-dir --no-build-isolation --no-deps --no-binary h5py \
      "h5py==$H5PY_VERSION"
}

stage_firedrake() {
  PETSC_DIR="$D/petsc" PETSC_ARCH="$PETSC_ARCH_NAME" CC=mpicc CXX=mpicxx HDF5_MPI=ON \
    "$D/venv/bin/python" -m pip install --no-cache-dir --no-build-isolation "firedrake==$FIREDRAKE_VERSION"
}

stage_env() {
  # env.sh: what a shell needs to use the stack; also appended to the venv's activate script so
  # `source .venv/bin/activate` then `mpiexec -n 2 python ...` works as-is.
  cat > "$D/env.sh" <<EOF
export PETSC_DIR="$D/petsc"
export PETSC_ARCH="$PETSC_ARCH_NAME"
export OMP_NUM_THREADS=1
if [ "\$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
EOF
  grep -q "pdeinv stack" "$D/venv/bin/activate" || {
    echo "# pdeinv stack"; cat "$D/env.sh"; } >> "$D/venv/bin/activate"
}

stage_check() {
  # A real solve on 1 and 2 ranks through Firedrake + PETSc (MUMPS), with a pyadjoint gradient.
  local chk="$D/check.py"
  cat > "$chk" <<'EOF'
from firedrake import *
from firedrake.adjoint import continue_annotation, ReducedFunctional, Control, taylor_test
continue_annotation()
mesh = UnitSquareMesh(8, 8)
V = FunctionSpace(mesh, "CG", 1)
m = Function(V).assign(1.0)
u, v = Function(V), TestFunction(V)
F = inner((1 + m**2) * grad(u), grad(v)) * dx - v * dx
solve(F == 0, u, DirichletBC(V, 0, "on_boundary"),
      solver_parameters={"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"})
J = assemble(u**2 * dx)
h = Function(V).assign(0.1)
rate = taylor_test(ReducedFunctional(J, Control(m)), m, h)
assert rate > 1.9, rate
import h5py; assert h5py.get_config().mpi
import os
if os.environ.get("PDEINV_GPU") == "cuda":  # the CUDA variant: PETSc has CUDA; a device is optional
    assert PETSc.Sys.hasExternalPackage("cuda"), "the CUDA stack's PETSc was built without CUDA"
    try:
        PETSc.Device.create(PETSc.Device.Type.CUDA).destroy()
        PETSc.Sys.Print("stack check: a CUDA device is present")
    except PETSc.Error:
        PETSc.Sys.Print("stack check: PETSc has CUDA; no CUDA device here (CPU runs only)")
PETSc.Sys.Print("stack check passed: taylor rate %.3f on %d rank(s)" % (rate, mesh.comm.size))
EOF
  # shellcheck disable=SC1091
  source "$D/env.sh"
  PDEINV_GPU="$GPU" "$D/venv/bin/python" "$chk"
  PDEINV_GPU="$GPU" mpiexec -n 2 "$D/venv/bin/python" "$chk"
}

run_stage() {  # run_stage NAME: run stage_NAME with its output in logs/NAME.log, stamp on success
  local name=$1 t0=$SECONDS
  if [ -e "$D/stamps/$name" ]; then log "$name: done in an earlier run"; return 0; fi
  log "$name: started (log: $D/logs/$name.log)"
  # Not `if ! ( ... )`: bash ignores set -e inside a tested command, so a failing step would pass.
  local rc=0
  set +e
  ( set -euo pipefail; "stage_$name" ) >"$D/logs/$name.log" 2>&1
  rc=$?
  set -e
  if [ $rc -ne 0 ]; then
    tail -n 40 "$D/logs/$name.log" >&2
    die "stage '$name' failed after $((SECONDS - t0)) s; full log: $D/logs/$name.log"
  fi
  touch "$D/stamps/$name"
  echo "$name $((SECONDS - t0))" >> "$D/logs/times.txt"
  log "$name: done in $((SECONDS - t0)) s"
}

wait_stage() {  # wait_stage PID NAME
  wait "$1" || die "stage '$2' failed (see above)"
}

build_stack() {
  local t0=$SECONDS
  mkdir -p "$D/logs" "$D/stamps"
  log "building the stack in $D (first time only; ~30 min on 2 cores)"
  ensure_system_packages
  # The venv's wheel installs overlap PETSc's configure/build; petsc4py (one huge C file, one core)
  # overlaps h5py.  Nothing is compiled twice.
  run_stage venv & local p_venv=$!
  [ "$GPU" = cuda ] && run_stage cuda
  run_stage petsc
  [ "$GPU" = cuda ] && run_stage cuda_unstub
  wait_stage $p_venv venv
  run_stage h5py & local p_h5py=$!
  run_stage petsc4py
  wait_stage $p_h5py h5py
  run_stage firedrake
  run_stage env
  run_stage check
  ln -sfn "stack-$KEY.d" "$CACHE/stack-$KEY.tmp"
  mv -Tf "$CACHE/stack-$KEY.tmp" "$CACHE/stack-$KEY"
  log "stack complete in $((SECONDS - t0)) s (stages: $(tr '\n' ' ' < "$D/logs/times.txt"))"
}

# --------------------------------------------------------------------------- the project's own bits
link_venv() {
  local target=$1
  if [ -e "$ROOT/.venv" ] && [ ! -L "$ROOT/.venv" ]; then
    die "$ROOT/.venv exists and is not a link made by this script; move it away (or set PDEINV_VENV to it)"
  fi
  ln -sfn "$target" "$ROOT/.venv"
}

thin_venv() {
  # This clone's own environment: a venv on the stack's interpreter that sees the stack's packages
  # through one .pth line (a plain directory: the stack's own .pth files, e.g. an editable pdeinv an
  # older clone put there, are not run) and holds only this clone's editable pdeinv.  Two clones
  # sharing one stack then never import each other's code.
  local stack=$1 v="$ROOT/.venv" stack_site site f name
  [ -L "$v" ] && rm -f "$v"  # the old layout: a link to the shared stack
  if [ -e "$v" ] && [ ! -f "$v/.pdeinv-thin" ]; then
    die "$v exists and was not made by this script; move it away (or set PDEINV_VENV to it)"
  fi
  if [ -f "$v/.pdeinv-thin" ] && [ "$(cat "$v/.pdeinv-thin")" = "$stack" ]; then return 0; fi
  log "making this clone's environment .venv on the stack $stack"
  rm -rf "$v"
  "$stack/bin/python" -m venv --without-pip "$v"
  stack_site=$("$stack/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  site=$("$v/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$stack_site" > "$site/_pdeinv_stack.pth"
  # the stack's command-line tools (pytest, ruff, firedrake-check, ...), except interpreters and
  # pdeinv's own: Python entry points are copied with this environment's interpreter in their #! line
  # (so .venv/bin/pytest imports this clone's pdeinv), anything else is linked
  for f in "$stack/bin/"*; do
    name=$(basename "$f")
    case "$name" in python*|activate*|Activate*|pdeinv|pip*|deactivate) continue;; esac
    [ -e "$v/bin/$name" ] && continue
    if head -c 256 "$f" 2>/dev/null | head -n 1 | grep -q "^#!$stack/bin/python"; then
      { echo "#!$v/bin/python"; tail -n +2 "$f"; } > "$v/bin/$name"
      chmod +x "$v/bin/$name"
    else
      ln -s "$f" "$v/bin/$name"
    fi
  done
  { echo "# pdeinv stack"; cat "$(dirname "$stack")/env.sh"; } >> "$v/bin/activate"
  echo "$stack" > "$v/.pdeinv-thin"
}

install_project() {
  # Editable install, skipped when this clone and this pyproject.toml are already the installed ones.
  local py="$ROOT/.venv/bin/python" want stamp
  want="$ROOT $(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  stamp="$("$py" -c 'import sys; print(sys.prefix)')/.pdeinv-editable"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  log "installing pdeinv (editable) from $ROOT"
  local out
  if ! out=$("$py" -m pip install -q --no-build-isolation --no-deps -e "$ROOT" 2>&1); then
    printf '%s\n' "$out" >&2
    die "editable install of pdeinv failed"
  fi
  echo "$want" > "$stamp"
}

install_extras() {
  # Wheels from requirements-extra.txt, re-installed only when that file changes.
  local py="$ROOT/.venv/bin/python" req="$HERE/requirements-extra.txt" want stamp out
  [ -f "$req" ] || return 0
  want=$(sha256sum "$req" | cut -c1-16)
  stamp="$("$py" -c 'import sys; print(sys.prefix)')/.pdeinv-extras"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  log "installing extra wheels from $(basename "$req")"
  if ! out=$("$py" -m pip install -q --only-binary :all: -r "$req" 2>&1); then
    printf '%s\n' "$out" >&2
    die "installing $req failed"
  fi
  echo "$want" > "$stamp"
}

main() {
  if [ -n "${PDEINV_VENV:-}" ]; then
    "$PDEINV_VENV/bin/python" -c "import firedrake" 2>/dev/null \
      || die "PDEINV_VENV=$PDEINV_VENV: '$PDEINV_VENV/bin/python -c \"import firedrake\"' fails"
    case "${1:-}" in --dir) echo "$PDEINV_VENV"; return;; --distclean) rm -f "$ROOT/.venv"; return;; esac
    link_venv "$PDEINV_VENV"
    "$PDEINV_VENV/bin/python" -c "import pytest, pytest_mpi" 2>/dev/null \
      || "$PDEINV_VENV/bin/python" -m pip install -q "${PIP_TOOLS[@]}"
    install_extras
    install_project
    return
  fi

  KEY=$(stack_key)
  STACK="$CACHE/stack-$KEY"
  D="$CACHE/stack-$KEY.d"
  case "${1:-}" in
    --dir) [ -L "$STACK" ] && echo "$D"; return 0;;
    --distclean)
      [ -L "$ROOT/.venv" ] && rm -f "$ROOT/.venv"
      [ -f "$ROOT/.venv/.pdeinv-thin" ] && rm -rf "$ROOT/.venv"
      log "removing the stack cache $CACHE"; rm -rf "$CACHE"; return 0;;
  esac

  if [ ! -L "$STACK" ]; then
    mkdir -p "$CACHE"
    exec 9>"$CACHE/stack-$KEY.lock"
    if ! flock -n 9; then
      log "another process is building this stack; waiting for it"
      flock 9
    fi
    [ -L "$STACK" ] || build_stack
    flock -u 9
  fi
  thin_venv "$D/venv"
  install_extras
  install_project
}

main "$@"
