"""Finding a named data set's files, offline first, and verifying them.

:func:`resolve_dataset` looks in these places, in order, and takes the first
that holds every file of the data set:

1. the explicit ``data_dir`` argument (the scenario's ``[data] data_dir``),
2. the ``PARTICLESIM_DATA`` environment variable (a folder, searched in
   ``<dir>/<dataset>/`` and directly),
3. the user cache, ``$XDG_CACHE_HOME/particlesim/<dataset>`` (default
   ``~/.cache/particlesim/<dataset>``),
4. known system locations (Debian's ``dataset-fashion-mnist`` installs to
   ``/usr/share/datasets/fashion-mnist``),
5. the copy shipped inside the package (MNIST only, ``particlesim/data/mnist``),
6. a download from the official mirrors into the user cache, when a network
   exists and ``download`` is true.

Each file may be stored as ``name`` or ``name.gz``. The *uncompressed* content
of every file taken is checked against the official MD5, so a corrupt or
truncated copy is reported (naming the file and both digests) instead of
silently training on bad data. A folder that holds another known data set's
files (MNIST where Fashion-MNIST was asked for: the file names are the same)
is skipped with a note, except for an explicit ``data_dir``, where it is an
error. When nothing is found, one :class:`~particlesim.errors.DataError`
lists every place tried and how to fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from particlesim.data.idx import GZIP_MAGIC, atomic_write
from particlesim.errors import DataError

ENV_VAR = "PARTICLESIM_DATA"
DOWNLOAD_TIMEOUT_S = 10.0
PACKAGE_DIR = Path(__file__).resolve().parent

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
STANDARD_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

ORIGIN_WORDS = {
    "data_dir": "data_dir",
    ENV_VAR: ENV_VAR,
    "cache": "user cache",
    "system": "system location",
    "package": "package copy",
    "download": "download into user cache",
}


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about a data set: its files, digests and where it may live.

    Attributes:
        name: registry name (``"mnist"``, ``"fashion_mnist"``).
        title: the data set's usual spelling, for messages.
        folders: sub-folder names it is looked up under (``PARTICLESIM_DATA``,
            cache); the first is where downloads go.
        md5: uncompressed MD5 of each file; ``None`` skips the check (user data).
        system_dirs: folders a system package installs it to.
        package_dir: the copy shipped inside particlesim, if any.
        mirrors: base URLs serving ``<file>.gz``, tried in order.
        num_classes: the number of classes, when fixed.
        files: the file names (without ``.gz``), train images/labels then test.
        data_dir_only: look nowhere but the explicit ``data_dir`` (user folders).
    """

    name: str
    title: str = ""
    folders: tuple[str, ...] = ()
    md5: Mapping[str, str] | None = None
    system_dirs: tuple[Path, ...] = ()
    package_dir: Path | None = None
    mirrors: tuple[str, ...] = ()
    num_classes: int | None = None
    files: tuple[str, ...] = STANDARD_FILES
    data_dir_only: bool = False

    @property
    def label(self) -> str:
        """How messages call the data set."""
        return self.title or self.name

    @property
    def cache_folder(self) -> str:
        """The folder name under the cache root."""
        return self.folders[0] if self.folders else self.name


MNIST_MD5 = {
    TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
    TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
    TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
    TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
}

FASHION_MNIST_MD5 = {
    TRAIN_IMAGES: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    TRAIN_LABELS: "9018921c3c673c538a1fc5bad174d6f9",
    TEST_IMAGES: "8181f5470baa50b63fa0f6fddb340f0a",
    TEST_LABELS: "15d484375f8d13e6eb1aabb0c3f46965",
}

#: Known system install locations per data set; a module-level table so tests
#: (and packagers) can change it.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "mnist": (Path("/usr/share/datasets/mnist"),),
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

KNOWN_DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST",
        folders=("mnist",),
        md5=MNIST_MD5,
        package_dir=PACKAGE_DIR / "mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        num_classes=10,
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        title="Fashion-MNIST",
        folders=("fashion-mnist", "fashion_mnist"),
        md5=FASHION_MNIST_MD5,
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        num_classes=10,
    ),
}


@dataclass
class ResolvedSource:
    """Where a data set's files were found.

    ``files`` maps each file name (without ``.gz``) to the path taken (with or
    without ``.gz``); ``origin`` is one of ``"data_dir"``, ``"PARTICLESIM_DATA"``,
    ``"cache"``, ``"system"``, ``"package"``, ``"download"``; ``verified`` says
    whether official digests were checked; ``skipped`` holds notes about
    explicitly configured places (data_dir, PARTICLESIM_DATA) that were tried
    first and did not hold the data set.
    """

    name: str
    directory: Path
    origin: str
    files: dict[str, Path]
    verified: bool = False
    skipped: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        """E.g. ``"mnist from package copy /…/particlesim/data/mnist"``."""
        return f"{self.name} from {ORIGIN_WORDS.get(self.origin, self.origin)} {self.directory}"


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a known data set, with the current :data:`SYSTEM_DIRS`."""
    try:
        spec = KNOWN_DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(KNOWN_DATASETS))
        raise DataError(f"unknown data set {name!r} (known: {known})") from None
    return _with_system_dirs(spec)


def _with_system_dirs(spec: DatasetSpec) -> DatasetSpec:
    dirs = SYSTEM_DIRS.get(spec.name, spec.system_dirs)
    if dirs == spec.system_dirs:
        return spec
    return DatasetSpec(**{**spec.__dict__, "system_dirs": tuple(dirs)})


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """The cache root: ``$XDG_CACHE_HOME/particlesim``, else ``~/.cache/particlesim``.

    Follows the XDG base-directory rule that a relative ``XDG_CACHE_HOME`` is ignored.
    """
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "particlesim"


# --------------------------------------------------------------------------- digests

# (path, mtime_ns, size) → uncompressed MD5, so repeated resolves in one
# process (tests, sweeps) do not re-read unchanged files.
_DIGEST_CACHE: dict[tuple[str, int, int], str] = {}


def uncompressed_md5(path: str | os.PathLike[str]) -> str:
    """MD5 hex digest of the file's uncompressed content (gunzipped if it starts with ``1f 8b``).

    Streams in 1 MiB chunks; a corrupt gzip stream or an unreadable file is a
    :class:`DataError` naming the file. Results are cached by (path, mtime, size).
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as error:
        raise DataError(f"{path}: cannot read file: {error.strerror or error}") from error
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key in _DIGEST_CACHE:
        return _DIGEST_CACHE[key]
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: corrupt gzip stream: {error}") from error
    except OSError as error:
        raise DataError(f"{path}: cannot read file: {error.strerror or error}") from error
    _DIGEST_CACHE[key] = digest.hexdigest()
    return _DIGEST_CACHE[key]


def _other_owner(spec: DatasetSpec, file: str, digest: str) -> str | None:
    """The label of another known data set whose ``file`` has this digest, if any."""
    for other in KNOWN_DATASETS.values():
        if other.name != spec.name and other.md5 and other.md5.get(file) == digest:
            return other.label
    return None


# --------------------------------------------------------------------------- probing


class _NotHere(Exception):  # noqa: N818 (a signal, not an error)
    """A place that does not hold the data set; the message says why."""


def _find_files(directory: Path, spec: DatasetSpec) -> dict[str, Path]:
    """Map each file of ``spec`` to ``name`` or ``name.gz`` in ``directory``, or raise _NotHere."""
    if not directory.is_dir():
        raise _NotHere("no such folder" if not directory.exists() else "not a folder")
    found: dict[str, Path] = {}
    missing = []
    for file in spec.files:
        for candidate in (directory / file, directory / f"{file}.gz"):
            if candidate.is_file():
                found[file] = candidate
                break
        else:
            missing.append(f"{file}(.gz)")
    if len(missing) == len(spec.files):
        raise _NotHere("no data set files")
    if missing:
        raise _NotHere("missing " + ", ".join(missing))
    return found


def _verify(files: dict[str, Path], spec: DatasetSpec, *, strict: bool) -> None:
    """Check every file's uncompressed MD5 against ``spec``.

    A mismatch is a :class:`DataError` naming the file and both digests,
    except when the file is another known data set's (same file names):
    then the place is skipped (:class:`_NotHere`), or rejected if ``strict``.
    """
    if spec.md5 is None:
        return
    for file, path in files.items():
        expected = spec.md5.get(file)
        if expected is None:
            continue
        actual = uncompressed_md5(path)
        if actual == expected:
            continue
        other = _other_owner(spec, file, actual)
        if other is not None:
            note = f"holds {other}'s files, not {spec.label}'s"
            if strict:
                raise DataError(f"{path.parent}: {note} (asked for {spec.name!r})")
            raise _NotHere(note)
        raise DataError(
            f"{path}: uncompressed MD5 is {actual}, expected {expected} for {spec.label}'s"
            f" {file}; the file is corrupt or not the official one (delete or replace it)"
        )


def _candidates(root: Path, spec: DatasetSpec, *, direct_first: bool) -> list[Path]:
    """``root`` and its existing ``<root>/<folder>`` sub-folders named after the data set.

    Sub-folders that do not exist are left out, so the "tried" list stays short.
    """
    subfolders = [
        root / folder
        for folder in dict.fromkeys(spec.folders or (spec.name,))
        if (root / folder).is_dir()
    ]
    return [root, *subfolders] if direct_first else [*subfolders, root]


# --------------------------------------------------------------------------- download


def _download(
    spec: DatasetSpec, target: Path, log: Callable[[str], None] | None
) -> dict[str, Path]:
    """Download each missing file of ``spec`` into ``target`` (verified, atomic), or _NotHere.

    Any network or checksum failure of a mirror moves on to the next mirror;
    when every mirror failed for a file, the place counts as "not found".
    """
    if not spec.mirrors:
        raise _NotHere("no download mirror known")
    files: dict[str, Path] = {}
    for file in spec.files:
        destination = target / f"{file}.gz"
        if destination.is_file() and _matches(destination, spec, file):
            files[file] = destination
            continue
        failures = []
        for mirror in spec.mirrors:
            url = f"{mirror}{file}.gz"
            try:
                if log is not None:
                    log(f"data: downloading {url}")
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    payload = response.read()
                content = gzip.decompress(payload) if payload[:2] == GZIP_MAGIC else payload
            except (OSError, EOFError, zlib.error, ValueError) as error:
                failures.append(f"{url}: {_short(error)}")
                continue
            expected = (spec.md5 or {}).get(file)
            actual = hashlib.md5(content, usedforsecurity=False).hexdigest()
            if expected is not None and actual != expected:
                failures.append(f"{url}: MD5 {actual}, expected {expected}")
                continue
            data = payload if payload[:2] == GZIP_MAGIC else gzip.compress(content, mtime=0)
            try:
                target.mkdir(parents=True, exist_ok=True)
                atomic_write(destination, data)
            except OSError as error:
                raise _NotHere(f"cannot write {destination}: {error.strerror or error}") from error
            files[file] = destination
            break
        else:
            raise _NotHere("failed (" + ", ".join(failures) + ")")
    return files


def _matches(path: Path, spec: DatasetSpec, file: str) -> bool:
    expected = (spec.md5 or {}).get(file)
    try:
        return expected is None or uncompressed_md5(path) == expected
    except DataError:
        return False


def _short(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return str(reason if reason is not None else error).replace("\n", " ")


# --------------------------------------------------------------------------- resolve


def resolve_dataset(
    dataset: str | DatasetSpec,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    log: Callable[[str], None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ResolvedSource:
    """Find ``dataset``'s files (see the module docstring for the order) and verify them.

    Args:
        dataset: a known name (``"mnist"``, ``"fashion_mnist"``) or a
            :class:`DatasetSpec` (``md5=None`` for user data: digests skipped).
        data_dir: an explicit folder, searched first (directly and in
            ``<data_dir>/<dataset>/``).
        download: allow the last resort, a download into the user cache.
        log: receives progress lines (downloads); ``None`` is silent.
        environ: the environment to read (``os.environ`` by default).

    Returns:
        the :class:`ResolvedSource` of the first place holding every file.

    Raises:
        DataError: a file there is corrupt (digest mismatch, bad gzip), an
            explicit ``data_dir`` holds another data set, or nothing was found
            anywhere (the message lists every place tried and how to fix it).
    """
    spec = dataset_spec(dataset) if isinstance(dataset, str) else dataset
    environ = os.environ if environ is None else environ
    verified = spec.md5 is not None
    tried: list[str] = []
    skipped: list[str] = []

    def attempt(origin: str, directory: Path, *, strict: bool = False) -> ResolvedSource | None:
        word = ORIGIN_WORDS[origin]
        try:
            files = _find_files(directory, spec)
            _verify(files, spec, strict=strict)
        except _NotHere as reason:
            tried.append(f"{word} {directory}: {reason}")
            if origin in ("data_dir", ENV_VAR):
                skipped.append(f"{word} {directory}: {reason}")
            return None
        return ResolvedSource(
            spec.name, directory, origin, files, verified=verified, skipped=tuple(skipped)
        )

    def first(
        origin: str, directories: list[Path], *, strict: bool = False
    ) -> ResolvedSource | None:
        for directory in directories:
            found = attempt(origin, directory, strict=strict)
            if found is not None:
                return found
        return None

    # 1. explicit data_dir (strict: another data set there is an error); 2. PARTICLESIM_DATA
    if data_dir is not None and str(data_dir) != "":
        root = Path(data_dir).expanduser()
        found = first("data_dir", _candidates(root, spec, direct_first=True), strict=True)
        if found is not None:
            return found
    else:
        tried.append("data_dir: not set")
    if spec.data_dir_only:
        raise DataError(_not_found_message(spec, tried))
    env = environ.get(ENV_VAR, "")
    if env:
        root = Path(env).expanduser()
        found = first(ENV_VAR, _candidates(root, spec, direct_first=False))
        if found is not None:
            return found
    else:
        tried.append(f"{ENV_VAR}: not set")

    # 3. user cache; 4. system locations; 5. package copy
    cache = cache_root(environ) / spec.cache_folder
    found = first("cache", [cache])
    if found is not None:
        return found
    found = first("system", list(spec.system_dirs))
    if found is not None:
        return found
    if spec.package_dir is not None:
        found = first("package", [spec.package_dir])
        if found is not None:
            return found

    # 6. download
    if spec.mirrors:
        if download:
            try:
                files = _download(spec, cache, log)
            except _NotHere as reason:
                tried.append(f"download into {cache}: {reason}")
            else:
                return ResolvedSource(
                    spec.name, cache, "download", files, verified=verified, skipped=tuple(skipped)
                )
        else:
            tried.append("download: disabled (download = false)")

    raise DataError(_not_found_message(spec, tried))


def _not_found_message(spec: DatasetSpec, tried: list[str]) -> str:
    names = ", ".join(f"{file}(.gz)" for file in spec.files)
    places = "; ".join(f"({i}) {place}" for i, place in enumerate(tried, 1))
    if spec.data_dir_only:
        return (
            f"{spec.label} data set not found; tried {places}; to fix: set data_dir in [data]"
            f" to a folder holding {names}"
        )
    fix = f"set data_dir in [data] or {ENV_VAR} to a folder holding {names}"
    if spec.md5 is not None:
        if spec.system_dirs:
            fix += f", install it to {spec.system_dirs[0]}"
        if spec.mirrors:
            fix += ", or allow the download (download = true) on a machine with network"
    return f"{spec.label} data set not found; tried {places}; to fix: {fix}"
