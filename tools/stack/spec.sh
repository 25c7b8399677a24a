# shellcheck shell=bash
# The pinned software stack of pdeinv.  Everything in this file is hashed into the cache key
# (tools/stack/ensure.sh): change a pin or a configure option here and the next `make` rebuilds.

PETSC_VERSION=3.26.0          # the registry's `petsc` source package (full PETSc source)
PETSC4PY_VERSION=3.26.0       # pinned by firedrake 2026.10
FIREDRAKE_VERSION=2026.10.0
H5PY_VERSION=3.16.0           # built from source against the system's parallel HDF5
PETSC_ARCH_NAME=arch-pdeinv-opt

# System packages (Debian 12 / Ubuntu 24.04 names): compilers, Open MPI, parallel HDF5 and the
# PETSc external packages we link instead of --download-* (no internet beyond the registries).
APT_PACKAGES=(
  bison build-essential cmake flex gfortran git ninja-build pkg-config zlib1g-dev
  libfftw3-dev libfftw3-mpi-dev libhwloc-dev libhdf5-mpi-dev libmumps-ptscotch-dev libmetis-dev
  libnetcdf-dev libopenblas-dev libopenmpi-dev openmpi-bin libpnetcdf-dev libptscotch-dev
  libscalapack-openmpi-dev libsuitesparse-dev libsuperlu-dev libsuperlu-dist-dev
  python3-dev python3-venv
)

# Installed (as wheels) before anything is built from source, so that the source builds run with
# --no-build-isolation and never re-compile mpi4py/petsc4py in an isolated build environment.
PIP_BASE=(
  "pip>=24" "setuptools>=77.0.3" wheel
  "mpi4py==4.1.2" "cython>=3.1" numpy pkgconfig pybind11
  rtree petsctools firedrake-rtree libsupermesh
  hatchling setuptools-scm flit_core poetry-core
  scipy matplotlib
)

# Developer tools that live in the same environment.
PIP_TOOLS=( pytest "mpi-pytest" ruff )

_HDF5_INC=/usr/include/hdf5/openmpi
_HDF5_LIB=/usr/lib/$(uname -m)-linux-gnu/hdf5/openmpi
_EXTRA_FLAGS="-I${_HDF5_INC} -I/usr/include/scotch -I/usr/include/superlu -I/usr/include/superlu-dist -L${_HDF5_LIB}"

# Notes: append-form *FLAGS+= keeps MPICC_SHOW in petscvariables (firedrake's setup needs it);
# no -march=native so a cached build can move between machines; hypre off (Debian's is too old).
# CUDA off explicitly: configure finds nvcc on these machines even where there is no GPU.
PETSC_CONFIGURE_OPTIONS=(
  --with-cc=mpicc --with-cxx=mpicxx --with-fc=mpif90
  "--CFLAGS+=${_EXTRA_FLAGS}" "--CXXFLAGS+=${_EXTRA_FLAGS}" "--FFLAGS+=${_EXTRA_FLAGS}"
  --COPTFLAGS=-O2 --CXXOPTFLAGS=-O2 --FOPTFLAGS=-O2
  --with-c2html=0 --with-debugging=0 --with-fortran-bindings=0 --with-shared-libraries=1
  --with-strict-petscerrorcode --with-bison --with-fftw
  "--with-hdf5-include=${_HDF5_INC}"
  "--with-hdf5-lib=[${_HDF5_LIB}/libhdf5.so,${_HDF5_LIB}/libhdf5_hl.so]"
  --with-cuda=0 --with-hwloc --with-hypre=0 --with-metis --with-mumps --with-netcdf --with-pnetcdf
  --with-ptscotch "--with-ptscotch-lib=-lptesmumps -lptscotch -lptscotcherr -lesmumps -lscotch -lscotcherr"
  --with-ptscotch-include=/usr/include/scotch --with-scalapack-lib=-lscalapack-openmpi
  --with-suitesparse --with-superlu_dist --with-zlib
)
