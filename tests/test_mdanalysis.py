"""Export to MDAnalysis: atoms are particles, charges are charges, its analyses run on neurons.

Skipped without MDAnalysis (the optional extra ``particlesim[mdanalysis]``), except the test
that its absence is one clear error.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from synthetic import make_tree, run_tiny

from particlesim.io.mdanalysis import ExportError, to_universe


@pytest.fixture(scope="module")
def MDAnalysis():  # noqa: N802 (the package's own name)
    return pytest.importorskip("MDAnalysis", reason="MDAnalysis is not installed")


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A real tiny run in D = 2: input (16), hidden1 (8), output (3); 5 frames, steps 0…12."""
    from conftest import TINY_SCENARIO

    return run_tiny(tmp_path_factory.mktemp("mda"), TINY_SCENARIO.format(data_dir=tiny_data))


def group(path: Path | xr.DataTree, name: str) -> xr.Dataset:
    import particlesim

    tree = path if isinstance(path, xr.DataTree) else particlesim.open_trajectory(path)
    return tree[f"particles/{name}"].to_dataset().load()


def test_a_group_becomes_atoms_with_charges_and_padded_positions(
    MDAnalysis, trajectory: Path
) -> None:
    u = to_universe(trajectory, "hidden1")
    ds = group(trajectory, "hidden1")
    assert isinstance(u, MDAnalysis.Universe) and len(u.atoms) == 8
    assert list(u.atoms.names) == ["hidden1"] * 8 and list(u.segments.segids) == ["hidden1"]
    assert list(u.atoms.ids) == list(range(8))
    np.testing.assert_allclose(u.atoms.charges, ds["charge"].values[-1], rtol=1e-6)
    assert u.trajectory.n_frames == 5
    for ts, step, time, pos in zip(
        u.trajectory, ds["step"].values, ds["time"].values, ds["position"].values, strict=True
    ):
        assert ts.data["step"] == step and ts.time == pytest.approx(time)
        np.testing.assert_allclose(ts.positions[:, :2], pos, rtol=1e-6)
        assert np.all(ts.positions[:, 2] == 0)  # D = 2 padded to 3-D
    assert u.dimensions is None  # no box
    first = to_universe(trajectory, "hidden1", charge_frame=0)
    np.testing.assert_allclose(first.atoms.charges, ds["charge"].values[0], rtol=1e-6)
    back = pickle.loads(pickle.dumps(u))  # parallel analyses pickle the universe
    assert back.trajectory[3].data["step"] == ds["step"].values[3]


def test_mdanalysis_analyses_run_on_neurons(MDAnalysis, trajectory: Path) -> None:
    from MDAnalysis.analysis import distances, rms

    u = to_universe(trajectory, ["hidden1", "output"])
    assert len(u.atoms) == 11 and list(u.segments.segids) == ["hidden1", "output"]
    hidden = group(trajectory, "hidden1")["position"].values  # [T, N, 2]
    rmsf = rms.RMSF(u.select_atoms("name hidden1")).run().results.rmsf
    expected = np.sqrt(((hidden - hidden.mean(axis=0)) ** 2).sum(axis=-1).mean(axis=0))
    np.testing.assert_allclose(rmsf, expected, rtol=1e-4)
    rmsd = rms.RMSD(u.select_atoms("name hidden1")).run().results.rmsd
    assert rmsd.shape == (5, 3) and rmsd[0, 2] == pytest.approx(0.0, abs=1e-5)
    np.testing.assert_allclose(rmsd[:, 1], group(trajectory, "hidden1")["time"].values)
    u.trajectory[-1]
    output = group(trajectory, "output")["position"].values[-1]
    pairs = distances.distance_array(
        u.select_atoms("name hidden1").positions, u.select_atoms("name output").positions
    )
    np.testing.assert_allclose(
        pairs, np.linalg.norm(hidden[-1][:, None] - output[None], axis=-1), rtol=1e-5
    )


def test_d_above_3_is_refused_or_projected(MDAnalysis) -> None:
    tree = make_tree(n_frames=4, dim=5)
    with pytest.raises(ExportError, match=r"lives in D = 5, but MDAnalysis positions are 3-D"):
        to_universe(tree, "hidden1")
    pos = tree["particles/hidden1"].to_dataset()["position"].values
    first = to_universe(tree, "hidden1", reduce="first")
    np.testing.assert_allclose(first.trajectory[2].positions, pos[2, :, :3], rtol=1e-5)
    pca = to_universe(tree, "hidden1", reduce="pca")
    points = pos.reshape(-1, 5)
    centred = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = (pos[1] - points.mean(axis=0)) @ vt[:3].T
    np.testing.assert_allclose(
        np.abs(pca.trajectory[1].positions), np.abs(expected), rtol=1e-4, atol=1e-5
    )
    sub = to_universe(tree, "hidden1", reduce="first", frames=slice(1, None, 2))
    assert [ts.data["step"] for ts in sub.trajectory] == [10, 30]


def test_bad_requests_are_one_line(MDAnalysis, tmp_path: Path) -> None:
    tree = make_tree(dim=1)
    u = to_universe(tree, "input")  # frozen and D = 1: one frame, padded
    assert u.trajectory.n_frames == 1 and np.all(u.atoms.positions[:, 1:] == 0)
    assert np.all(u.atoms.charges == 0)  # no charges recorded
    with pytest.raises(ExportError, match=r"unknown group 'hiden1' \(did you mean 'hidden1'"):
        to_universe(tree, "hiden1")
    with pytest.raises(ExportError, match=r"unknown reduce 'mean'"):
        to_universe(tree, "hidden1", reduce="mean")  # type: ignore[arg-type]
    with pytest.raises(ExportError, match=r"charge_frame 9 out of range"):
        to_universe(tree, "hidden1", charge_frame=9)
    with pytest.raises(ExportError, match=r"frames out of range: the trajectory has 4"):
        to_universe(tree, "hidden1", frames=[7])
    ds = tree["particles/hidden1"].to_dataset().drop_vars("position")
    no_positions = xr.DataTree.from_dict({"/particles/hidden1": ds})
    with pytest.raises(ExportError, match=r"group 'hidden1' records no positions"):
        to_universe(no_positions, "hidden1")
    other = make_tree(n_frames=4)
    other["particles/output"] = other["particles/output"].to_dataset().isel(time=[0, 1, 2])
    with pytest.raises(ExportError, match=r"recorded at different steps"):
        to_universe(other, ["hidden1", "output"])


def test_without_mdanalysis_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "MDAnalysis", None)  # import MDAnalysis fails
    with pytest.raises(ExportError, match=r"pip install 'particlesim\[mdanalysis\]'"):
        to_universe(make_tree(), "hidden1")


def test_the_readme_example_runs(MDAnalysis, trajectory: Path) -> None:
    import re

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = text.index("MDAnalysis's analyses run on neurons")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match is not None
    code = match.group(1).replace("runs/mnist_particle/trajectory.h5", str(trajectory))
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    u = namespace["u"]
    assert u.trajectory.n_frames == 5 and len(u.atoms) == 8  # type: ignore[attr-defined]
