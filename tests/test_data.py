"""particlesim.data: IDX round trips and errors, offline-first resolution, digests, splits.

Every test runs in an isolated environment (no ``PARTICLESIM_DATA``, a fresh
``HOME``/``XDG_CACHE_HOME``, no system locations, no network) and builds tiny
IDX files itself; only two tests read real files (the MNIST copy shipped in
the package, and the shared Fashion-MNIST when that folder exists).
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from particlesim.data import (
    BUILTIN_DATASETS,
    MNIST,
    DatasetSpec,
    FashionMNIST,
    IDXClassification,
    IDXFolder,
    clear_cache,
    read_idx,
    resolve_dataset,
    sources,
    write_idx,
)
from particlesim.data import datasets as datasets_module
from particlesim.errors import DataError

FILES = sources.STANDARD_FILES
SHARED_FASHION = Path(__file__).resolve().parents[2] / "shared/data/fashion-mnist"


def _no_network(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("network disabled in tests")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No env var, a fresh home and cache, no system folders, no network."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    for name in list(sources.SYSTEM_DIRS):
        monkeypatch.setitem(sources.SYSTEM_DIRS, name, (tmp_path / "system" / name,))
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    return home


def make_set(
    directory: Path, *, n_train: int = 50, n_test: int = 20, gz: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write a tiny 28×28 data set (labels ``i % 10``) into ``directory``; return its arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(directory / (name + (".gz" if gz else "")), array)
    return arrays


def digests(directory: Path) -> dict[str, str]:
    """The uncompressed MD5 of each standard file in ``directory`` (``.gz`` or not)."""
    out = {}
    for name in FILES:
        path = directory / name if (directory / name).exists() else directory / f"{name}.gz"
        out[name] = hashlib.md5(
            gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        ).hexdigest()
    return out


def toy_spec(reference: Path, **changes: object) -> DatasetSpec:
    """A known data set "toy" whose digests are those of the files in ``reference``."""
    fields = {
        "name": "toy",
        "title": "Toy",
        "folders": ("toy",),
        "md5": digests(reference),
        "num_classes": 10,
    }
    fields.update(changes)
    return DatasetSpec(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- IDX format


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip(tmp_path: Path, dtype: type, suffix: str) -> None:
    rng = np.random.default_rng(1)
    for shape in [(7,), (3, 4), (2, 3, 5)]:
        array = (rng.normal(size=shape) * 100).astype(dtype)
        path = write_idx(tmp_path / f"a{len(shape)}{suffix}", array)
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
        back = read_idx(path)
        assert back.dtype == np.dtype(dtype) and back.shape == shape
        assert back.flags.writeable and back.dtype.isnative
        np.testing.assert_array_equal(back, array)


def test_gzip_is_detected_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.int16).reshape(3, 4)
    hidden = write_idx(tmp_path / "packed", array, compress=True)
    plain = write_idx(tmp_path / "plain.gz", array, compress=False)
    assert hidden.read_bytes()[:2] == b"\x1f\x8b" and plain.read_bytes()[:2] != b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(hidden), array)
    np.testing.assert_array_equal(read_idx(plain), array)
    # The header is big-endian, per the spec.
    assert plain.read_bytes()[:12] == bytes([0, 0, 0x0B, 2, 0, 0, 0, 3, 0, 0, 0, 4])


def _header(code: int, dims: list[int]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(
        d.to_bytes(4, "big", signed=True) for d in dims
    )


VALID_GZ = gzip.compress(_header(0x08, [3, 4, 4]) + bytes(48), mtime=0)

BAD_FILES = {
    "bad magic": (
        b"\x01\x02\x08\x01" + b"\x00\x00\x00\x01" + b"x",
        "not an IDX file: magic number 0x01020801 does not start with two zero bytes",
    ),
    "wrong type code": (
        bytes([0, 0, 0x07, 1]) + (1).to_bytes(4, "big") + b"x",
        "unknown IDX type code 0x07 (expected one of 0x08 ubyte",
    ),
    "truncated payload": (
        _header(0x08, [3, 4, 4]) + bytes(10),
        "truncated IDX file: header says 3×4×4 = 48 bytes of data, found 10",
    ),
    "truncated float payload": (
        _header(0x0D, [2, 3]) + bytes(20),
        "truncated IDX file: header says 2×3 × 4 bytes = 24 bytes of data, found 20",
    ),
    "trailing bytes": (
        _header(0x08, [3, 4, 4]) + bytes(50),
        "IDX file too long: header says 3×4×4 = 48 bytes of data, found 50 (2 trailing bytes)",
    ),
    "zero dim": (_header(0x08, [3, 0, 4]), "IDX size of dimension 1 is 0 (sizes must be positive)"),
    "negative dim": (_header(0x08, [-1]), "IDX size of dimension 0 is -1"),
    "zero ndim": (bytes([0, 0, 0x08, 0]), "IDX header declares 0 dimensions"),
    "truncated header": (
        bytes([0, 0, 0x08, 3]) + bytes(6),
        "truncated IDX header: 3 dimensions need 16 bytes, found 10",
    ),
    "empty file": (b"", "not an IDX file: 0 bytes"),
    "corrupt gzip": (b"\x1f\x8b\x08\x00" + b"garbage" * 5, "corrupt gzip stream"),
    "truncated gzip": (VALID_GZ[: len(VALID_GZ) // 2], "corrupt gzip stream"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_read_errors_name_the_file_and_the_problem(tmp_path: Path, case: str) -> None:
    content, expected = BAD_FILES[case]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message
    assert "\n" not in message


def test_missing_file_and_unwritable_dtype(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothing\.idx: cannot read file"):
        read_idx(tmp_path / "nothing.idx")
    with pytest.raises(DataError, match="cannot write dtype int64 as IDX"):
        write_idx(tmp_path / "labels", np.arange(3))
    with pytest.raises(DataError, match="sizes must be between 1"):
        write_idx(tmp_path / "empty", np.zeros((0, 3), np.uint8))


# --------------------------------------------------------------------------- resolution


def test_resolution_order_data_dir_env_cache(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "reference"
    make_set(reference)
    spec = toy_spec(reference)
    explicit, env, cache = tmp_path / "explicit", tmp_path / "env", isolated / ".cache/particlesim"
    for folder in (explicit, env / "toy", cache / "toy"):
        make_set(folder, gz=folder is not explicit)  # same content, raw or gz

    def origin(**kwargs: object) -> tuple[str, Path]:
        found = resolve_dataset(spec, download=False, **kwargs)  # type: ignore[arg-type]
        assert found.verified and set(found.files) == set(FILES)
        return found.origin, found.directory

    monkeypatch.setenv(sources.ENV_VAR, str(env))
    assert origin(data_dir=str(explicit)) == ("data_dir", explicit)
    assert origin() == (sources.ENV_VAR, env / "toy")  # <env>/<dataset>/
    monkeypatch.delenv(sources.ENV_VAR)
    assert origin() == ("cache", cache / "toy")
    xdg = tmp_path / "xdg"
    make_set(xdg / "particlesim" / "toy")
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    assert origin() == ("cache", xdg / "particlesim" / "toy")
    # PARTICLESIM_DATA pointing straight at the files works too.
    monkeypatch.setenv(sources.ENV_VAR, str(env / "toy"))
    assert origin() == (sources.ENV_VAR, env / "toy")
    # An explicit data_dir that does not hold the set falls back, and says so.
    found = resolve_dataset(spec, data_dir=tmp_path / "typo", download=False)
    assert found.origin == sources.ENV_VAR
    assert found.skipped == (f"data_dir {tmp_path / 'typo'}: no such folder",)


def test_system_location_and_describe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = tmp_path / "reference"
    make_set(reference)
    system = tmp_path / "usr/share/datasets/toy"
    make_set(system, gz=False)
    found = resolve_dataset(toy_spec(reference, system_dirs=(system,)), download=False)
    assert found.origin == "system" and found.files[FILES[0]] == system / FILES[0]
    assert found.describe() == f"toy from system location {system}"


def test_digest_mismatch_is_an_error_not_a_skip(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "mnist"
    make_set(fake)
    actual = digests(fake)["train-images-idx3-ubyte"]
    with pytest.raises(DataError) as info:
        MNIST(data_dir=str(fake), download=False).load(seed=0, log=lambda line: None)
    message = str(info.value)
    assert message.startswith(f"{fake / 'train-images-idx3-ubyte.gz'}: uncompressed MD5 is")
    assert actual in message and sources.MNIST_MD5["train-images-idx3-ubyte"] in message
    assert "\n" not in message
    # A corrupt copy in the user cache is reported too, even though the package copy exists.
    make_set(isolated / ".cache/particlesim/mnist")
    with pytest.raises(DataError, match=r"\.cache/particlesim/mnist/train-images.*MD5"):
        resolve_dataset("mnist", download=False)


def test_another_known_data_set_is_skipped_or_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toy = tmp_path / "toy-files"
    make_set(toy)
    monkeypatch.setitem(sources.KNOWN_DATASETS, "toy", toy_spec(toy))
    monkeypatch.setenv(sources.ENV_VAR, str(toy))
    fashion = sources.dataset_spec("fashion_mnist")
    with pytest.raises(DataError) as info:
        resolve_dataset(fashion, download=False)
    assert f"PARTICLESIM_DATA {toy}: holds Toy's files, not Fashion-MNIST's" in str(info.value)
    with pytest.raises(DataError, match="holds Toy's files, not Fashion-MNIST's \\(asked for"):
        resolve_dataset(fashion, data_dir=toy, download=False)


def test_not_found_lists_every_place_in_order(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = tmp_path / "partial"
    write_idx(partial / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    monkeypatch.setenv(sources.ENV_VAR, str(partial))
    with pytest.raises(DataError) as info:
        FashionMNIST(data_dir=str(tmp_path / "nope"), download=False).load(seed=0)
    message = str(info.value)
    places = [
        f"(1) data_dir {tmp_path / 'nope'}: no such folder",
        f"(2) PARTICLESIM_DATA {partial}: missing train-labels-idx1-ubyte(.gz),",
        f"(3) user cache {isolated / '.cache/particlesim/fashion-mnist'}: no such folder",
        f"(4) system location {tmp_path / 'system/fashion_mnist'}: no such folder",
        "(5) download: disabled (download = false)",
        "to fix: set data_dir in [data] or PARTICLESIM_DATA to a folder holding"
        " train-images-idx3-ubyte(.gz)",
    ]
    positions = [message.index(place) for place in places]
    assert positions == sorted(positions)
    assert message.startswith("Fashion-MNIST data set not found; tried ") and "\n" not in message


def test_download_is_verified_and_cached_atomically(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "reference"
    make_set(reference)
    served = {
        f"https://good.invalid/{name}.gz": (reference / f"{name}.gz").read_bytes() for name in FILES
    }
    served.update(
        {f"https://bad.invalid/{name}.gz": gzip.compress(b"html error page") for name in FILES}
    )
    requested: list[str] = []

    class Response:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self) -> bytes:
            return self.data

        def __enter__(self) -> Response:
            return self

        def __exit__(self, *args: object) -> None:
            return None

    def fake_urlopen(url: str, timeout: float) -> Response:
        requested.append(url)
        assert timeout <= 30
        if url not in served:
            raise urllib.error.URLError("unreachable")
        return Response(served[url])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    spec = toy_spec(
        reference,
        mirrors=("https://down.invalid/", "https://bad.invalid/", "https://good.invalid/"),
    )
    lines: list[str] = []
    found = resolve_dataset(spec, log=lines.append)
    cache = isolated / ".cache/particlesim/toy"
    assert found.origin == "download" and found.directory == cache and found.verified
    assert len(requested) == 12 and len(lines) == 12
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in FILES)
    np.testing.assert_array_equal(
        read_idx(cache / f"{FILES[0]}.gz"), read_idx(reference / f"{FILES[0]}.gz")
    )
    # Next time the cache answers, without the network.
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    assert resolve_dataset(spec).origin == "cache"
    # With every mirror failing, the download counts as "not found there".
    with pytest.raises(DataError, match=r"\(4\) download into .*: failed \(https://down"):
        resolve_dataset(
            toy_spec(reference, name="toy2", folders=("toy2",), mirrors=("https://down.invalid/",))
        )


# --------------------------------------------------------------------------- data sets


def test_options_are_validated_with_the_argument_name() -> None:
    for kwargs, expected in [
        ({"train_fraction": 0.0}, "train_fraction: must be in (0, 1], got 0.0"),
        ({"train_fraction": 1.5}, "train_fraction: must be in (0, 1]"),
        ({"validation": 1.0}, "validation: must be in [0, 1), got 1.0"),
        ({"validation": -0.1}, "validation: must be in [0, 1)"),
        (
            {"normalize": "unti"},
            "normalize: must be one of 'unit', 'standard', 'none', got"
            " 'unti' (did you mean 'unit'?)",
        ),
        ({"limit_test": -1}, "limit_test: must be a non-negative integer"),
    ]:
        with pytest.raises(ValueError) as info:
            MNIST(**kwargs)  # type: ignore[arg-type]
        assert str(info.value).startswith(expected)
    with pytest.raises(ValueError, match="data_dir: must name a folder"):
        IDXFolder(data_dir="")


def test_constructor_signatures_are_simple_and_keyword_only() -> None:
    assert [cls.name for cls in BUILTIN_DATASETS] == ["mnist", "fashion_mnist", "idx"]
    simple = {int, float, bool, str, str | None, float | None, int | None}
    hints = {
        "data_dir": str | None,
        "train_fraction": float,
        "validation": float,
        "normalize": str,
        "limit_test": int | None,
        "download": bool,
    }
    for cls in BUILTIN_DATASETS:
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        assert all(p.kind is p.KEYWORD_ONLY for p in parameters)
        annotations = inspect.get_annotations(cls.__init__, eval_str=True)
        for p in parameters:
            assert annotations[p.name] in simple, (cls, p.name)
            assert annotations[p.name] == hints[p.name] or (
                cls is IDXFolder and p.name == "data_dir"
            )
    data_dir = inspect.signature(IDXFolder.__init__).parameters["data_dir"]
    assert data_dir.default is inspect.Parameter.empty  # required
    assert "download" not in inspect.signature(IDXFolder.__init__).parameters


def test_fraction_validation_sizes_and_seed_determinism(tmp_path: Path) -> None:
    arrays = make_set(tmp_path / "set")
    lines: list[str] = []

    def load(seed: int, **kwargs: object):
        return IDXFolder(data_dir=str(tmp_path / "set"), **kwargs).load(  # type: ignore[arg-type]
            seed=seed, log=lines.append
        )

    full = load(0)
    assert full.train_x.shape == (50, 784) and full.val_x.shape == (0, 784)
    assert full.test_x.shape == (20, 784) and full.input_shape == (28, 28)
    assert full.train_x.dtype == torch.float32 and full.train_y.dtype == torch.int64
    assert full.num_classes == 10
    torch.testing.assert_close(full.train_y, torch.arange(50) % 10)
    assert lines == [f"data: idx from data_dir {tmp_path / 'set'} (no known digests)"]
    assert full.source == lines[0].removeprefix("data: ")

    a = load(3, train_fraction=0.5, validation=0.2, limit_test=7)
    assert (a.train_x.shape[0], a.val_x.shape[0], a.test_x.shape[0]) == (20, 5, 7)
    b = load(3, train_fraction=0.5, validation=0.2, limit_test=7)
    c = load(4, train_fraction=0.5, validation=0.2)
    for name in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.train_x, c.train_x)
    # Train and validation are disjoint rows of the original training set.
    rows = {bytes(arrays["train-images-idx3-ubyte"][i]): i for i in range(50)}

    def row_ids(x: torch.Tensor) -> set[int]:
        return {rows[bytes((row * 255).round().to(torch.uint8).numpy())] for row in x}

    train_rows, val_rows = row_ids(a.train_x), row_ids(a.val_x)
    assert len(train_rows) == 20 and len(val_rows) == 5 and not train_rows & val_rows
    assert a.train_y.tolist() == [i % 10 for i in sorted(train_rows)]  # labels follow rows
    # The subset does not depend on the validation fraction.
    assert row_ids(load(3, train_fraction=0.5).train_x) == train_rows | val_rows
    # Tiny fractions keep at least one training example.
    e = load(0, train_fraction=0.01, validation=0.9)
    assert e.train_x.shape[0] == 1 and e.val_x.shape[0] == 0


def test_normalize_modes(tmp_path: Path) -> None:
    arrays = make_set(tmp_path / "set")
    raw = torch.from_numpy(arrays["train-images-idx3-ubyte"].reshape(50, -1).astype(np.float32))
    raw_test = torch.from_numpy(arrays["t10k-images-idx3-ubyte"].reshape(20, -1).astype(np.float32))

    def load(mode: str):
        return IDXFolder(data_dir=str(tmp_path / "set"), normalize=mode).load(
            seed=0, log=lambda line: None
        )

    unit, none, standard = load("unit"), load("none"), load("standard")
    torch.testing.assert_close(unit.train_x, raw / 255)
    assert float(unit.train_x.min()) >= 0 and float(unit.train_x.max()) <= 1
    torch.testing.assert_close(none.train_x, raw)
    torch.testing.assert_close(standard.train_x.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(standard.train_x.std(), torch.tensor(1.0), atol=1e-5, rtol=0)
    # The test set uses the training set's statistics.
    torch.testing.assert_close(standard.test_x, (raw_test - raw.mean()) / raw.std())


def test_inconsistent_files_are_data_errors(tmp_path: Path) -> None:
    make_set(tmp_path / "set")
    write_idx(tmp_path / "set/train-labels-idx1-ubyte.gz", np.zeros(49, np.uint8))
    with pytest.raises(DataError, match=r"50 train images but train-labels-idx1-ubyte\.gz has 49"):
        IDXFolder(data_dir=str(tmp_path / "set")).load(seed=0, log=lambda line: None)
    with pytest.raises(DataError, match=r"IDX folder data set not found; tried \(1\) data_dir"):
        IDXFolder(data_dir=str(tmp_path / "none")).load(seed=0, log=lambda line: None)


def test_decoded_arrays_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = tmp_path / "reference"
    make_set(reference)
    calls: list[Path] = []
    real = datasets_module.read_idx

    def counting(path: Path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(datasets_module, "read_idx", counting)
    toy = IDXClassification(data_dir=str(reference), download=False)
    toy.spec = toy_spec(reference)  # type: ignore[misc]
    first = toy.load(seed=0, log=lambda line: None)
    toy.load(seed=1, log=lambda line: None)
    assert len(calls) == 4
    assert first.source.endswith("(digests verified)")
    clear_cache()
    toy.load(seed=0, log=lambda line: None)
    assert len(calls) == 8


def test_shipped_mnist_copy_is_found_when_nothing_else_is() -> None:
    lines: list[str] = []
    data = MNIST(download=False, validation=0.1).load(seed=0, log=lines.append)
    package = Path(sources.__file__).resolve().parent / "mnist"
    assert lines == [f"data: mnist from package copy {package} (digests verified)"]
    assert data.train_x.shape == (54000, 784) and data.val_x.shape == (6000, 784)
    assert data.test_x.shape == (10000, 784) and data.test_y.shape == (10000,)
    assert data.input_shape == (28, 28) and data.num_classes == 10
    assert data.train_x.dtype == torch.float32 and float(data.train_x.max()) == 1.0
    counts = torch.bincount(data.test_y, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.mark.skipif(not SHARED_FASHION.is_dir(), reason=f"{SHARED_FASHION} not present")
def test_shared_fashion_mnist_verifies() -> None:
    found = resolve_dataset("fashion_mnist", data_dir=SHARED_FASHION, download=False)
    assert found.origin == "data_dir" and found.verified and found.directory == SHARED_FASHION
    labels = read_idx(found.files["t10k-labels-idx1-ubyte"])
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10
