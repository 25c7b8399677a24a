"""Make the worked example's files: ``domain.msh`` and ``sensors.csv`` (run once; both are shipped).

``domain.msh``: the rectangle [0, 1.5] x [0, 1], 30 x 20 squares cut into triangles, written as a Gmsh 2.2
ASCII file (boundary lines tagged 1, triangles tagged 1), so no Gmsh installation is needed to read it.

``sensors.csv``: "observed" temperatures of the heat case on that mesh, as a field campaign would record
them: 24 thermometers at 4 times, each thermometer with its own accuracy σ (1–3 % of the largest reading),
from a hidden initial temperature (a warm blob and a cooler one) that the case then recovers.

    python cases/heat/data/make_example.py        # rewrites both files next to this script
"""

import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
NX, NY, LX, LY = 30, 20, 1.5, 1.0


def write_msh(path):
    xs, ys = np.linspace(0, LX, NX + 1), np.linspace(0, LY, NY + 1)
    node = lambda i, j: 1 + j * (NX + 1) + i  # noqa: E731
    nodes = [f"{node(i, j)} {x:.17g} {y:.17g} 0" for j, y in enumerate(ys) for i, x in enumerate(xs)]
    elements = []
    for i in range(NX):  # bottom and top edges
        elements += [(1, node(i, 0), node(i + 1, 0)), (1, node(i + 1, NY), node(i, NY))]
    for j in range(NY):  # left and right edges
        elements += [(1, node(0, j + 1), node(0, j)), (1, node(NX, j), node(NX, j + 1))]
    for j in range(NY):
        for i in range(NX):
            a, b, c, d = node(i, j), node(i + 1, j), node(i + 1, j + 1), node(i, j + 1)
            elements += [(2, a, b, c), (2, a, c, d)]
    with open(path + ".tmp", "w") as fh:
        fh.write("$MeshFormat\n2.2 0 8\n$EndMeshFormat\n")
        fh.write(f"$Nodes\n{len(nodes)}\n" + "\n".join(nodes) + "\n$EndNodes\n")
        fh.write(f"$Elements\n{len(elements)}\n")
        for k, (kind, *vs) in enumerate(elements, start=1):
            fh.write(f"{k} {kind} 2 1 1 " + " ".join(map(str, vs)) + "\n")
        fh.write("$EndElements\n")
    os.replace(path + ".tmp", path)


def write_data(mesh_path, path):
    import firedrake as fd

    from pdeinv.forward.heat import HeatModel

    mesh = fd.Mesh(mesh_path, name="mesh")
    rng = np.random.default_rng(2026)
    points = np.c_[0.1 + 1.3 * rng.random(24), 0.1 + 0.8 * rng.random(24)]
    times = [0.0125, 0.025, 0.0375, 0.05]
    model = HeatModel(mesh, unknown="initial_condition", end_time=0.05, steps=40, observation_points=points,
                      observation_times=times)
    x, y = fd.SpatialCoordinate(mesh)
    truth = fd.Function(model.parameter_space).interpolate(
        fd.exp(-30 * ((x - 1.0) ** 2 + (y - 0.45) ** 2)) - 0.5 * fd.exp(-50 * ((x - 0.45) ** 2 + (y - 0.6) ** 2)))
    clean = model.observation.to_array(model(truth))
    sigma = (0.01 + 0.02 * rng.random(len(points)))[:, None] * np.abs(clean).max() * np.ones_like(clean)
    values = clean + sigma * rng.standard_normal(clean.shape)
    with open(path + ".tmp", "w") as fh:
        fh.write("# pdeinv heat case, worked example: 24 thermometers x 4 times on domain.msh\n")
        fh.write("# made by make_example.py; sigma = each thermometer's standard deviation\n")
        fh.write("x,y,t,value,sigma\n")
        for i, (px, py) in enumerate(points):
            for k, t in enumerate(times):
                fh.write(f"{px:.6f},{py:.6f},{t:g},{values[i, k]:.6e},{sigma[i, k]:.3e}\n")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    write_msh(os.path.join(HERE, "domain.msh"))
    write_data(os.path.join(HERE, "domain.msh"), os.path.join(HERE, "sensors.csv"))
