"""Writing a run's results: ParaView files, an HDF5 checkpoint, PNG figures, summary.json.

Everything is written to a temporary name and renamed into place, so an interrupted run never leaves
a half-written file that looks complete.
"""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["atomic_json", "write_points_vtk", "write_fields", "plot_fields", "plot_history", "plot_spectrum",
           "plot_data_fit"]


def atomic_json(path, obj, comm) -> None:
    """Write JSON on rank 0 via a temporary file and a rename."""
    if comm.rank == 0:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, default=_jsonable)
        os.replace(tmp, path)
    comm.barrier()


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_points_vtk(path, points, comm) -> None:
    """Observation points as a legacy-VTK PolyData file (ParaView opens it)."""
    if comm.rank == 0:
        pts = np.asarray(points, dtype=float)
        if pts.shape[1] == 2:
            pts = np.c_[pts, np.zeros(len(pts))]
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            fh.write("# vtk DataFile Version 3.0\nobservation points\nASCII\nDATASET POLYDATA\n")
            fh.write(f"POINTS {len(pts)} double\n")
            fh.writelines(f"{x:.17g} {y:.17g} {z:.17g}\n" for x, y, z in pts)
            fh.write(f"VERTICES {len(pts)} {2 * len(pts)}\n")
            fh.writelines(f"1 {i}\n" for i in range(len(pts)))
        os.replace(tmp, path)
    comm.barrier()


def write_fields(directory, mesh, fields: dict, samples=()) -> None:
    """One PVD per field (VTKFile) and all fields in one HDF5 CheckpointFile (reloadable on any
    number of ranks), both via temporary names."""
    import firedrake as fd

    comm = mesh.comm
    for name, f in fields.items():
        fd.VTKFile(os.path.join(directory, f"{name}.pvd"), comm=comm).write(f)
    if samples:
        out = fd.VTKFile(os.path.join(directory, "posterior_samples.pvd"), comm=comm)
        for s in samples:
            out.write(s)
    path = os.path.join(directory, "results.h5")
    tmp = path + ".tmp"
    with fd.CheckpointFile(tmp, "w", comm=comm) as ck:
        ck.save_mesh(mesh)
        for name, f in fields.items():
            ck.save_function(f, name=name)
        for i, s in enumerate(samples):
            ck.save_function(s, name=f"posterior_sample_{i}")
    if comm.rank == 0:
        os.replace(tmp, path)
    comm.barrier()


def save_figure(fig, path):
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def plot_fields(path, checkpoint, names, titles, points=None, mesh_name="mesh") -> None:
    """Side-by-side fields, read back from the HDF5 checkpoint on rank 0 alone (so it works for any
    number of ranks of the run)."""
    import firedrake as fd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from firedrake.pyplot import tripcolor

    with fd.CheckpointFile(checkpoint, "r", comm=fd.COMM_SELF) as ck:
        mesh = ck.load_mesh(mesh_name)
        fields = [ck.load_function(mesh, n) for n in names]
    ncols = min(len(fields), 4)
    nrows = -(-len(fields) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(fields):]:
        ax.set_axis_off()
    for ax, f, title in zip(axes.flat[:len(fields)], fields, titles, strict=True):
        c = tripcolor(f, axes=ax, cmap="viridis")
        fig.colorbar(c, ax=ax, shrink=0.8)
        if points is not None:
            ax.plot(points[:, 0], points[:, 1], "w.", ms=3)
        ax.set_title(title)
        ax.set_aspect("equal")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_history(path, history) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [h["iteration"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    cost, misfit = [h["cost"] for h in history], [h["misfit"] for h in history]
    plot = a.semilogy if min(cost + misfit) > 0 else a.plot  # a Poisson log-likelihood can be negative
    plot(it, cost, "o-", label="cost")
    plot(it, misfit, "s--", label="misfit")
    a.set_xlabel("Newton iteration")
    a.legend()
    b.semilogy(it, [h["gradient_norm"] for h in history], "o-")
    b.set_xlabel("Newton iteration")
    b.set_ylabel("‖g‖ (prior-preconditioned)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_spectrum(path, eigenvalues) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lam = np.maximum(np.asarray(eigenvalues), 1e-16)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(np.arange(1, len(lam) + 1), lam, "o-", ms=3)
    ax.axhline(1.0, color="k", lw=0.8, ls="--", label="λ = 1")
    ax.set_xlabel("i")
    ax.set_ylabel("λᵢ (misfit Hessian / prior precision)")
    ax.set_title(f"{int(np.sum(lam > 1))} data-informed directions")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_data_fit(path, observed, predicted, clean=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs, pred = np.ravel(observed), np.ravel(predicted)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot(obs, pred, ".", ms=4, label="MAP prediction")
    if clean is not None:
        ax.plot(obs, np.ravel(clean), "x", ms=3, alpha=0.5, label="truth (noise-free)")
    lo, hi = float(min(obs.min(), pred.min())), float(max(obs.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xlabel("observed")
    ax.set_ylabel("predicted")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
