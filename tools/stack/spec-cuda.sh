# shellcheck shell=bash
# The CUDA variant of the stack: `make stack GPU=cuda` (PDEINV_GPU=cuda).  Sourced after spec.sh only
# in that mode; this file and cuda_stubs.py are hashed into that stack's cache key, so the default (CPU)
# stack and its key are untouched.
#
# The CUDA toolkit comes from NVIDIA's wheels on the Python registry (nvcc, runtime, the math
# libraries), assembled into the stack's own cuda/ directory: no system CUDA and no GPU are needed to
# build.  Versions: CUDA 13.0 (nvcc 13.0.88), the math libraries of the same release train.
PETSC_ARCH_NAME=arch-pdeinv-cuda
CUDA_ARCH=90                  # Hopper (H100/H200); a comma list adds more (e.g. 80,90)

CUDA_WHEELS=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96 nvidia-nvtx==13.0.85 nvidia-nvml-dev==13.0.87
  nvidia-cublas==13.1.1.3 nvidia-cusparse==12.6.3.3 nvidia-cusolver==12.0.4.66 nvidia-curand==10.4.0.35
  nvidia-cufft==12.0.0.61 nvidia-nvjitlink==13.4.92
)

# patchelf: drops the driver stubs from libpetsc's needed libraries (see stage_cuda_unstub)
APT_PACKAGES+=(patchelf)

cuda_configure_options() {  # cuda_configure_options CUDA_DIR: PETSc's configure options for CUDA
  local dir=$1
  echo "--with-cuda=1"
  echo "--with-cuda-dir=$dir"
  echo "--with-cudac=$dir/bin/nvcc"
  echo "--with-cuda-arch=$CUDA_ARCH"
  echo "--CUDAOPTFLAGS=-O2"
}
