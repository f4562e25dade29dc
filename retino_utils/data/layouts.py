"""Read the dataset layouts users have: the lab's CSV pairs, Kaggle EyePACS, APTOS 2019, and (below,
"More layouts") a folder per grade, IDRiD, DDR, Messidor-2 (adjudicated) and DeepDRiD.

Each becomes a ``SplitIndex``: names, image paths and grades of one split. A layout that ships no
test labels gets a deterministic test split by patient, stratified on grade.
Reading never opens images: a missing file is the validator's business, not the reader's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from retino_utils import NUM_CLASSES
from retino_utils.errors import RetinoError

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
# First lines of a lab image file that are column names rather than images.
NAME_HEADERS = frozenset(
    {"image", "images", "img", "id", "id_code", "image_id", "name", "names", "file", "filename", "path"}
)
_GRADE_TEXT = re.compile(r"[+-]?\d+(\.0*)?")
_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_EYE_SUFFIX = re.compile(r"(.+?)_(left|right)", re.IGNORECASE)


@dataclass(frozen=True)
class LayoutSpec:
    markers: tuple[str, ...]  # files whose presence identifies the layout
    tables: tuple[str, ...]  # every label file the layout reads (preprocess copies these)
    image_dirs: tuple[str, ...]  # searched in order; "" is the root itself
    extension: str  # assumed for names without one when the file is missing
    columns: tuple[str, str] = ("", "")  # name and grade columns of a Kaggle-style table
    header: tuple[str, ...] = ()  # instead of markers: a label table with these columns, under any name
    detect: Callable[[Path], bool] | None = None  # instead of markers, for layouts of neither kind
    looks_for: str = ""  # what detection looks for, in words (markers when empty)

    def found_in(self, root: Path) -> bool:
        if self.detect:
            return self.detect(root)
        if self.header:
            return bool(_tables_with(root, self.header))
        return all((root / marker).is_file() for marker in self.markers)


# Detection order: an explicit test split (lab) beats a derived one.
LAYOUTS: dict[str, LayoutSpec] = {
    "lab": LayoutSpec(
        ("train_img.csv", "train_label.csv"),
        ("train_img.csv", "train_label.csv", "test_img.csv", "test_label.csv"),
        ("images", ""),
        ".jpeg",
    ),
    "kaggle": LayoutSpec(("trainLabels.csv",), ("trainLabels.csv",), ("train", "images"), ".jpeg", ("image", "level")),
    "aptos": LayoutSpec(("train.csv",), ("train.csv",), ("train_images",), ".png", ("id_code", "diagnosis")),
}


@dataclass(frozen=True, eq=False)
class SplitIndex:
    """The file list of one split; ``labels`` is an int64 array of grades 0-4."""

    root: Path
    layout: str
    split: str
    names: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray
    sources: tuple[str, ...] = ()  # where each entry was read ("train_img.csv line 3"); "" when unknown

    def __post_init__(self) -> None:
        labels = np.array(self.labels, dtype=np.int64).reshape(-1)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "sources", tuple(self.sources) or ("",) * len(labels))
        if not len(self.names) == len(self.paths) == len(labels) == len(self.sources):
            raise ValueError("names, paths, labels and sources must have the same length")

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices) -> "SplitIndex":
        """The entries at ``indices`` (integer positions or a boolean mask), in that order."""
        selector = np.asarray(indices)
        positions = np.arange(len(self))[selector if selector.dtype == bool else selector.astype(np.int64)]
        return SplitIndex(
            self.root,
            self.layout,
            self.split,
            tuple(self.names[i] for i in positions),
            tuple(self.paths[i] for i in positions),
            self.labels[positions],
            tuple(self.sources[i] for i in positions),
        )

    def entries_digest(self) -> str:
        """Short sha256 over names and labels only: which entries, whatever the state of their files."""
        text = "".join(f"{name}\t{label}\n" for name, label in zip(self.names, self.labels.tolist()))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def fingerprint(self) -> str:
        """Short sha256 over names, labels and each file's size and mtime: the key of derived files."""
        digest = hashlib.sha256()
        for name, path, label in zip(self.names, self.paths, self.labels.tolist()):
            try:
                st = path.stat()
                meta = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                meta = "missing"
            digest.update(f"{name}\t{label}\t{meta}\n".encode())
        return digest.hexdigest()[:16]

    def grade_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=NUM_CLASSES)[:NUM_CLASSES]


@dataclass
class TableRows:
    """Rows of a label table before images are looked up; rows with a bad grade are left out."""

    names: list[str] = field(default_factory=list)  # as written, less surrounding spaces and quotes
    spellings: list[str] = field(default_factory=list)  # exactly as written (inner spaces kept): tried first
    labels: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # where each name was read ("train_img.csv line 3")
    problems: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)

    def add(self, spelled: str, source: str, grade_text: str, grade_where: str) -> None:
        grade, reason = parse_grade(grade_text.strip().strip('"').strip())
        if reason:
            self.problems.append((grade_where, reason))
        else:
            self.names.append(spelled.strip().strip('"').strip())
            self.spellings.append(_unquote(spelled))
            self.labels.append(grade)
            self.sources.append(source)


@dataclass
class ScannedSplit:
    """A split as read, with the table problems found on the way (validate reports them all)."""

    index: SplitIndex
    problems: list[tuple[str, str]]
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (where, why): rows left out on purpose


def excluded_message(layout: str, excluded: list[tuple[str, str]]) -> str:
    """One line for rows a layout leaves out on purpose (DDR grade 5, Messidor-2 ungradable)."""
    where, why = excluded[0]
    more = f", and {len(excluded) - 1} more" if len(excluded) > 1 else ""
    return (f"{layout} layout: left out {len(excluded)} ungradable photo{'s' if len(excluded) > 1 else ''} "
            f"({where}: {why}{more}); they have no grade 0-4 to train or test on")


def parse_grade(text: str) -> tuple[int | None, str | None]:
    """``(grade, None)`` for "0".."4" (also "2.0"), else ``(None, reason)``."""
    if not _GRADE_TEXT.fullmatch(text):
        return None, f"label {text!r} is not an integer grade 0-4"
    grade = int(text.split(".")[0])
    if not 0 <= grade < NUM_CLASSES:
        return None, f"label {grade} is not a grade 0-4"
    return grade, None


def detect_layout(root: str | os.PathLike) -> str:
    root = Path(root)
    if root.is_file():
        raise RetinoError(f"{root} is a file, not a dataset folder: pass the folder that holds the label CSVs "
                          f"(perhaps {root.parent})")
    if not root.is_dir():
        raise RetinoError(f"dataset folder {root} does not exist: pass the folder that holds the label CSVs")
    for name, spec in LAYOUTS.items():
        if spec.found_in(root):
            return name
    looked_for = "; ".join(f"{spec.looks_for or ' + '.join(spec.markers)} ({name})" for name, spec in LAYOUTS.items())
    raise RetinoError(f"no dataset layout found in {root}: looked for {looked_for}")


def resolve_layout(root: str | os.PathLike, layout: str = "auto") -> str:
    if layout == "auto":
        return detect_layout(root)
    if layout not in LAYOUTS:
        raise RetinoError(f"unknown layout {layout!r}: use auto, {', '.join(LAYOUTS)}")
    return layout


def read_split(root: str | os.PathLike, split: str = "train", layout: str = "auto", test_fraction: float = 0.2,
               split_seed: int = 0) -> SplitIndex:
    """The file list of one split; a bad label table raises RetinoError naming file and line."""
    scanned = scan_split(root, split, layout, test_fraction, split_seed)
    refuse(scanned.problems,
           f"fix the label files or photos (python -m retino_utils.data validate {root} lists every problem)")
    if scanned.excluded:
        warnings.warn(excluded_message(scanned.index.layout, scanned.excluded), stacklevel=2)
    return scanned.index


def refuse(problems: list[tuple[str, str]], advice: str) -> None:
    """One line for a list of problems: the first with where it is, how many more, and what to do."""
    if problems:
        where, reason = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise RetinoError(f"{where}: {reason}{more}; {advice}")


def scan_split(
    root: str | os.PathLike,
    split: str = "train",
    layout: str = "auto",
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> ScannedSplit:
    """Read one split, collecting label problems instead of raising (what validate needs)."""
    root = Path(root).resolve()
    layout = resolve_layout(root, layout)
    if split not in SPLITS:
        raise RetinoError(f"unknown split {split!r}: use {' or '.join(SPLITS)}")
    spec = LAYOUTS[layout]
    if layout in READERS:
        return _scan_more(root, split, layout, test_fraction, split_seed)
    if layout == "lab":
        rows = read_lab_pair(_required(root, f"{split}_img.csv", layout), _required(root, f"{split}_label.csv", layout))
        keep = np.ones(len(rows.names), dtype=bool)
    else:
        rows = read_label_table(_required(root, spec.markers[0], layout), *spec.columns)
        groups = [patient_of(name) if layout == "kaggle" else name for name in rows.names]
        in_test = stratified_group_split(groups, rows.labels, test_fraction, split_seed)
        keep = in_test if split == "test" else ~in_test
    kept = np.flatnonzero(keep)
    spellings = [rows.spellings[i] for i in kept]
    matches = image_matches(root, spellings, spec)
    index = SplitIndex(
        root,
        layout,
        split,
        tuple(rows.names[i] for i in kept),
        resolve_image_paths(root, spellings, spec, matches),
        np.asarray(rows.labels, dtype=np.int64)[kept],
        tuple(rows.sources[i] for i in kept),
    )
    return ScannedSplit(index, rows.problems + ambiguous_photos(index, matches) + repeated_photos(index))


def ambiguous_photos(index: SplitIndex, matches: Sequence[Sequence[Path]]) -> list[tuple[str, str]]:
    """A name that matches several photos (``x.jpeg`` and ``x.JPG``, or in ``train/`` and ``images/``): which
    one is read would be an accident of folder order, so the label table cannot be trusted to mean it."""
    return [
        (source, f"name {name!r} matches {len(found)} photos ({', '.join(_relative(index.root, p) for p in found)}):"
                 f" remove or rename all but one, so the name means a single photo")
        for name, source, found in zip(index.names, index.sources, matches)
        if len(found) > 1
    ]


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def repeated_photos(index: SplitIndex) -> list[tuple[str, str]]:
    """A photo listed twice in one split (by name, or two spellings of one file): one problem per repeat."""
    first: dict[object, str] = {}
    problems = []
    for name, path, source in zip(index.names, index.paths, index.sources):
        earlier = first.get(name) or first.get(path)
        if earlier:
            problems.append((source, f"name {name!r} repeats {earlier} ({index.split} split)"))
        else:
            first[name] = first[path] = source
    return problems


def shared_photos(train: SplitIndex, test: SplitIndex) -> list[tuple[str, str]]:
    """Photos in both splits (by name or file): each one leaks its answer from training into the test."""
    in_train: dict[object, str] = {}
    for name, path, source in zip(train.names, train.paths, train.sources):
        in_train.setdefault(name, source)
        in_train.setdefault(path, source)
    return [
        (source, f"name {name!r} is also in the train split ({in_train.get(name) or in_train[path]})")
        for name, path, source in zip(test.names, test.paths, test.sources)
        if name in in_train or path in in_train
    ]


def check_disjoint(train: SplitIndex, test: SplitIndex) -> None:
    """Refuse a photo that is in both splits: training on it would inflate every test figure."""
    refuse(shared_photos(train, test), "a photo in both splits leaks test answers into training: remove it from one "
                                       "of the two CSV files (--skip-bad does not apply to this)")


def _required(root: Path, name: str, layout: str) -> Path:
    path = root / name
    if not path.is_file():
        needed = ", ".join(LAYOUTS[layout].tables)
        raise RetinoError(f"{path} not found: the {layout} layout needs {needed}")
    return path


def _lines(path: Path) -> list[tuple[int, str]]:
    """Every line with its 1-based number (a BOM and line ends removed), blank ones included."""
    return list(enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1))


def _unquote(text: str) -> str:
    """Text without a pair of surrounding double quotes (spaces inside them kept)."""
    stripped = text.strip()
    return stripped[1:-1] if len(stripped) >= 2 and stripped[0] == stripped[-1] == '"' else text


def _first_value(lines: list[tuple[int, str]]) -> str:
    return next((text.strip().strip('"').strip() for _, text in lines if text.strip()), "")


def _drop_first_value(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    first = next(i for i, (_, text) in enumerate(lines) if text.strip())
    return lines[first + 1:]


def read_lab_pair(img_csv: str | os.PathLike, label_csv: str | os.PathLike) -> TableRows:
    """Pair the lab's one-value-a-line files line by line: every row, with or without a header line.

    The label file has a header when its first value is not a number; the image file's first value
    is dropped with it only when it is a usual column name ("image", "id_code", ...), so a name
    is never lost to a guess: a header in just one file shows up as unequal lengths. A line blank
    in both files is skipped; blank in one only is a problem naming the line, never a silent shift
    of every later label.
    """
    img_csv, label_csv = Path(img_csv), Path(label_csv)
    names, grades = _lines(img_csv), _lines(label_csv)
    if grades and not _NUMBER_TEXT.fullmatch(_first_value(grades)):
        grades = _drop_first_value(grades)
        if names and _first_value(names).lower() in NAME_HEADERS:
            names = _drop_first_value(names)
    rows = TableRows()
    one_file_longer = False
    for name_entry, grade_entry in itertools.zip_longest(names, grades):
        if name_entry is None or grade_entry is None:  # past the end of the shorter file
            one_file_longer = one_file_longer or bool((name_entry or grade_entry)[1].strip())
            continue
        (name_line, name), (grade_line, grade) = name_entry, grade_entry
        name_where, grade_where = f"{img_csv.name} line {name_line}", f"{label_csv.name} line {grade_line}"
        if not name.strip() and not grade.strip():
            continue
        if not grade.strip():
            rows.problems.append((grade_where, f"blank label for {name.strip()!r} ({name_where})"))
        elif not name.strip():
            rows.problems.append((name_where, f"blank name for label {grade.strip()!r} ({grade_where})"))
        else:
            rows.add(name, name_where, grade, grade_where)
    if one_file_longer:
        n_names, n_grades = (sum(1 for _, text in lines if text.strip()) for lines in (names, grades))
        rows.problems.insert(
            0,
            (
                f"{img_csv.name}, {label_csv.name}",
                f"{n_names} names but {n_grades} labels (a missing line, or a header in only one file?)",
            ),
        )
    return rows


def read_label_table(path: str | os.PathLike, name_column: str, grade_column: str) -> TableRows:
    """A Kaggle-style CSV with a header naming its name and grade columns (e.g. ``image,level``)."""
    path = Path(path)
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig")))
    header = [cell.strip().lower() for cell in next(reader, [])]  # "Image,Level" is the same header
    if name_column not in header or grade_column not in header:
        raise RetinoError(
            f"{path}: expected a header with columns {name_column},{grade_column}, found {','.join(header)!r}"
        )
    rows = TableRows()
    for where, cells in _table_records(path, path.name, rows.problems):
        rows.add(cells[name_column], where, cells[grade_column], where)
    return rows


def _table_records(path: Path, label: str, problems: list[tuple[str, str]]) -> Iterator[tuple[str, dict[str, str]]]:
    """Each non-blank row of a CSV with a header, as ``(where, {column in lower case: cell})``; a row
    with another number of fields than the header is added to ``problems`` instead."""
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig")))
    header = [cell.strip().lower() for cell in next(reader, [])]
    for cells in reader:
        where = f"{label} line {reader.line_num}"
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            problems.append((where, f"expected {len(header)} fields, found {len(cells)}"))
            continue
        yield where, dict(reversed(list(zip(header, cells))))  # a repeated column: its first


def resolve_image_paths(root: Path, names: Sequence[str], spec: LayoutSpec,
                        matches: Sequence[Sequence[Path]] | None = None) -> tuple[Path, ...]:
    """Find each name's file the way it is spelled on disk (listing each folder once, not stat per name).

    The name exactly as written comes first, then without surrounding spaces; a name without an
    extension tries .jpeg, .jpg and .png (the layout's own first), and the extension's case does not
    matter (``.JPG``, ``.Jpeg``). A name found nowhere gets the path it would have in the first
    existing folder; one matching several files gets the first (``ambiguous_photos`` reports it).
    ``matches`` is ``image_matches`` of the same names, when already known.
    """
    folders = _image_folders(root, spec)
    home = next((folder for folder in folders if folder.is_dir()), folders[0])
    matches = image_matches(root, names, spec) if matches is None else matches
    extension = _extensions(spec)[0]
    return tuple(found[0] if found else home / _missing_file_name(name, extension)
                 for name, found in zip(names, matches))


def image_matches(root: Path, names: Sequence[str], spec: LayoutSpec) -> list[list[Path]]:
    """Every file each name can mean, by its closest spelling that matches any: none is a missing photo,
    more than one is ambiguous (``x.jpeg`` and ``x.JPG``, or one in each of the layout's folders)."""
    listings = {folder: _listing(folder) for folder in _image_folders(root, spec)}
    extensions = _extensions(spec)
    return [_matches(name, listings, extensions) for name in names]


def _image_folders(root: Path, spec: LayoutSpec) -> list[Path]:
    return [root / sub if sub else root for sub in spec.image_dirs]


def _extensions(spec: LayoutSpec) -> list[str]:
    """Extensions tried for a name without one, the layout's own first."""
    return [spec.extension] + [ext for ext in IMAGE_EXTENSIONS if ext != spec.extension]


def _matches(name: str, listings: dict[Path, dict[tuple[str, str], list[str]]],
             extensions: Sequence[str]) -> list[Path]:
    """The files of the first spelling of ``name`` found in any folder (all folders, all extension cases)."""
    for keys in _wanted_keys(name, extensions):
        found = [folder / file_name for folder, listing in listings.items() for key in keys
                 for file_name in listing.get(key, ())]
        if found:
            return _distinct_files(found)
    return []


def _wanted_keys(name: str, extensions: Sequence[str]) -> list[list[tuple[str, str]]]:
    """``_file_key`` values to look up, one list per spelling (as written, then stripped of spaces).

    Spellings that carry an image extension are looked up with it alone; otherwise each spelling
    tries every extension.
    """
    spellings = list(dict.fromkeys([name, name.strip()]))
    keyed = [[_file_key(s)] for s in spellings if Path(s).suffix.lower() in IMAGE_EXTENSIONS]
    return keyed or [[(s, ext) for ext in extensions] for s in spellings]


def _missing_file_name(name: str, extension: str) -> str:
    """Where a name found nowhere would be: stripped of spaces, with ``extension`` when it has none."""
    plain = name.strip()
    return plain if Path(plain).suffix.lower() in IMAGE_EXTENSIONS else plain + extension


def _distinct_files(paths: list[Path]) -> list[Path]:
    """``paths`` less links to a file already listed: an ``images`` symlink to the root is one photo, not two."""
    if len(paths) < 2:
        return paths
    seen: set[object] = set()
    distinct = []
    for path in paths:
        try:
            stat = path.stat()
            identity: object = (stat.st_dev, stat.st_ino)
        except OSError:
            identity = path
        if identity not in seen:
            seen.add(identity)
            distinct.append(path)
    return distinct


def _file_key(file_name: str) -> tuple[str, str]:
    """``("a_left", ".jpeg")`` for ``a_left.JPEG``: the stem as written, the extension in lower case."""
    suffix = Path(file_name).suffix
    return file_name[: len(file_name) - len(suffix)], suffix.lower()


def _listing(folder: Path) -> dict[tuple[str, str], list[str]]:
    """The folder's image files by ``_file_key``; every case of an extension is kept (lower case first),
    so two files for one key are seen rather than one silently shadowing the other."""
    if not folder.is_dir():
        return {}
    files: dict[tuple[str, str], list[str]] = {}
    for file_name in sorted(os.listdir(folder), key=lambda f: (Path(f).suffix != Path(f).suffix.lower(), f)):
        key = _file_key(file_name)
        if key[1] in IMAGE_EXTENSIONS:
            files.setdefault(key, []).append(file_name)
    return files


def nested_image_folder(index: SplitIndex) -> tuple[Path, Path, set[Path]] | None:
    """``(expected, nested, found)`` when missing images sit one folder deeper (``train/train/``).

    ``found`` are the expected paths whose file is in ``nested``. Unzipping Kaggle's archive inside
    ``train/`` gives exactly that; one line saying so beats one "file not found" per image.
    """
    missing = [path for path in index.paths if not path.is_file()]
    best: tuple[Path, Path, set[Path]] | None = None
    for parent in sorted({path.parent for path in missing}):
        if not parent.is_dir():
            continue
        for nested in sorted(p for p in parent.iterdir() if p.is_dir()):
            listing = _listing(nested)
            found = {path for path in missing if path.parent == parent and _file_key(path.name) in listing}
            if found and (best is None or len(found) > len(best[2])):
                best = (parent, nested, found)
    return best if best and 2 * len(best[2]) >= len(missing) else None


def nested_folder_message(index: SplitIndex, nested: tuple[Path, Path, set[Path]]) -> str:
    expected, deeper, found = nested
    return (f"{len(found)} of the {len(index)} {index.split} images are one folder too deep, in {deeper}/ instead "
            f"of {expected}/ (unzipping an archive inside it does that): move them up with "
            f"mv {deeper}/* {expected}/ && rmdir {deeper}")


def patient_of(name: str) -> str:
    """The patient of a Kaggle image name: ``"10009_left"`` -> ``"10009"`` (the name itself otherwise)."""
    eye = eye_of(name)
    return eye[0] if eye else _stem(name)


def eye_of(name: str) -> tuple[str, str] | None:
    """Patient and side of a Kaggle image name: ``"10009_Left.jpeg"`` -> ``("10009", "left")``, or None."""
    match = _EYE_SUFFIX.fullmatch(_stem(name))
    return (match.group(1), match.group(2).lower()) if match else None


def _stem(name: str) -> str:
    return name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name


def worst_grades(groups: Sequence[str], labels: Sequence[int]) -> dict[str, int]:
    """Each group's (patient's) worst grade: what the splits stratify on, so a patient keeps both eyes."""
    worst: dict[str, int] = {}
    for group, label in zip(groups, labels):
        worst[group] = max(worst.get(group, label), label)
    return worst


def stratified_group_split(
    groups: Sequence[str], labels: Sequence[int], test_fraction: float, seed: int
) -> np.ndarray:
    """Boolean test mask putting whole groups (patients) on one side, stratified on their max grade.

    Groups are ordered inside each stratum by sha256(seed, group), so the split is the same on every
    machine and Python (no hash() or RNG), and adding patients never moves the existing ones.
    Each stratum sends round(fraction * size) groups to test, with remainders apportioned so the
    total is round(fraction * number of groups).
    """
    if not 0.0 < test_fraction < 1.0:
        raise RetinoError(f"test_fraction {test_fraction} must be between 0 and 1 (e.g. 0.2)")
    worst = worst_grades(groups, labels)
    strata: dict[int, list[str]] = {}
    for group, grade in worst.items():
        strata.setdefault(grade, []).append(group)
    quotas = {grade: len(members) * test_fraction for grade, members in strata.items()}
    counts = {grade: int(quota) for grade, quota in quotas.items()}
    shortfall = round(len(worst) * test_fraction) - sum(counts.values())
    for grade in sorted(quotas, key=lambda g: (-(quotas[g] - counts[g]), g))[:shortfall]:
        counts[grade] += 1
    test_groups: set[str] = set()
    for grade, members in strata.items():
        members.sort(key=lambda group: hashlib.sha256(f"{seed}:{group}".encode()).hexdigest())
        test_groups.update(members[: counts[grade]])
    return np.array([group in test_groups for group in groups], dtype=bool)


def holdout_split(index: SplitIndex, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(kept, held_out)`` holding out ``fraction`` of a split's patients, stratified on grade
    like the Kaggle test side (both eyes of a patient stay together)."""
    groups = [patient_of(name) for name in index.names]
    held = stratified_group_split(groups, index.labels.tolist(), fraction, seed)
    return np.flatnonzero(~held), np.flatnonzero(held)


def check_fold(folds: int, fold: int) -> None:
    """Refuse a fold that does not exist, before any work (the config) and where folds are dealt (here)."""
    if not (folds >= 2 and 0 <= fold < folds):
        raise RetinoError(f"fold {fold} of {folds} folds: give folds >= 2 (or 0 = off) and a fold "
                          f"in [0, {max(folds, 2) - 1}]")


def fold_split(index: SplitIndex, folds: int, fold: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(kept, held_out)`` holding out fold ``fold`` of ``folds`` over a split's patients.

    Patients are stratified on their worst grade and dealt out in turn, in the same sha256 order as
    ``stratified_group_split`` (the same on every machine), so every patient is held out by exactly one
    fold, both eyes together, and the folds' sizes and grade mixes differ by at most one patient.
    """
    check_fold(folds, fold)
    groups = [patient_of(name) for name in index.names]
    worst = worst_grades(groups, index.labels.tolist())
    order = sorted(worst, key=lambda group: (worst[group], hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()))
    if len(order) < folds:
        raise RetinoError(f"{len(order)} patients cannot fill {folds} folds: give fewer folds")
    held_groups = set(order[fold::folds])
    held = np.array([group in held_groups for group in groups], dtype=bool)
    return np.flatnonzero(~held), np.flatnonzero(held)


def dataset_fingerprint(root: str | os.PathLike, layout: str = "auto", test_fraction: float = 0.2,
                        split_seed: int = 0) -> str:
    """Both splits' fingerprints in one: a run records it, and any edit to a label or photo changes it."""
    parts = [read_split(root, split, layout, test_fraction, split_seed).fingerprint() for split in SPLITS]
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:16]


# --- More layouts: a folder per grade, IDRiD, DDR, Messidor-2, DeepDRiD ------------------------------
#
# Each reader returns a ``LayoutRead`` for one split: the rows with their images already looked up. A
# layout whose files name a test split reads only that split's rows; one without reads every row, and
# ``_scan_more`` makes the same deterministic split by patient as Kaggle's.

GRADE_NAMES_FILE = "grade_names.csv"  # folder-per-grade layout: lines "folder name,grade" (e.g. "1 - No DR,0")
TRAIN_FOLDER_ALIASES = ("val", "valid", "validation")  # beside train/ and test/: read as part of the train split
DDR_UNGRADABLE = 5
OTHER_IMAGE_EXTENSIONS = (".tif", ".tiff", ".bmp", ".gif", ".webp")  # said, not silently passed over
_DEEPDRID_EYE = re.compile(r".*?_([lr])\d*", re.IGNORECASE)
_TABLE_DEPTH = 3  # label tables are looked for in the root and up to two folders below it


@dataclass
class LayoutRead:
    rows: TableRows
    matches: list[list[Path]]  # the files each row can mean (none: missing; several: ambiguous)
    missing: list[Path]  # where each row's file would be when none matches
    groups: list[str]  # each row's patient (the photo itself when unknown): a derived split keeps it whole
    derived: bool  # True: rows of both splits, the test split is derived by patient
    excluded: list[tuple[str, str]] = field(default_factory=list)


def _new_read(derived: bool) -> LayoutRead:
    return LayoutRead(TableRows(), [], [], [], derived)


def _add_row(read: LayoutRead, name: str, source: str, grade_text: str, where: str, found: list[Path],
             missing: Path, group: str) -> None:
    """A row and, when ``rows.add`` accepts it, its image and patient."""
    before = len(read.rows.names)
    read.rows.add(name, source, grade_text, where)
    if len(read.rows.names) > before:
        read.matches.append(found)
        read.missing.append(missing)
        read.groups.append(group)


def _scan_more(root: Path, split: str, layout: str, test_fraction: float, split_seed: int) -> ScannedSplit:
    read = READERS[layout](root, split)
    rows = read.rows
    keep = np.ones(len(rows.names), dtype=bool)
    if read.derived:
        in_test = stratified_group_split(read.groups, rows.labels, test_fraction, split_seed)
        keep = in_test if split == "test" else ~in_test
    kept = np.flatnonzero(keep)
    matches = [read.matches[i] for i in kept]
    index = SplitIndex(
        root,
        layout,
        split,
        tuple(rows.names[i] for i in kept),
        tuple(read.matches[i][0] if read.matches[i] else read.missing[i] for i in kept),
        np.asarray(rows.labels, dtype=np.int64)[kept],
        tuple(rows.sources[i] for i in kept),
    )
    problems = rows.problems + ambiguous_photos(index, matches) + repeated_photos(index)
    return ScannedSplit(index, problems, read.excluded)


def _folder_lookup(folders: Sequence[Path], extension: str) -> Callable[[str], tuple[list[Path], Path]]:
    """``name -> (files it can mean, where it would be)`` over ``folders``, each listed once."""
    listings = {folder: _listing(folder) for folder in folders}
    extensions = [extension] + [ext for ext in IMAGE_EXTENSIONS if ext != extension]
    home = next((folder for folder in folders if folder.is_dir()), folders[0])

    def look_up(name: str) -> tuple[list[Path], Path]:
        return _matches(name, listings, extensions), home / _missing_file_name(name, extension)

    return look_up


def _visible_dirs(folder: Path) -> list[Path]:
    """The folders in ``folder`` (not hidden ones such as .retino-cache), sorted; scandir spares a stat per photo."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        return sorted(folder / e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _dirs_below(root: Path, depth: int) -> list[Path]:
    """``root`` and its visible folders down to ``depth`` levels, parents first."""
    found, level = [root], [root]
    for _ in range(depth):
        level = [child for folder in level for child in _visible_dirs(folder)]
        found += level
    return found


def _header(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return [cell.strip().lower() for cell in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _tables_with(root: Path, columns: Sequence[str]) -> list[Path]:
    """The CSV files (root and two folders down) whose header has every one of ``columns``."""
    return [path for folder in _dirs_below(root, _TABLE_DEPTH - 1) for path in sorted(folder.glob("*.csv"))
            if path.is_file() and set(columns) <= set(_header(path))]


def _split_of_table(path: Path) -> str:
    return "test" if "test" in path.name.lower() else "train"


# Folder per grade: <root>/<g>/*.png, or <root>/train/<g>/ + <root>/test/<g>/ --------------------------


def _grade_folder_names(root: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Folder name -> grade: "0".."4", plus the lines of ``grade_names.csv`` ("1 - No DR,0"; a header allowed)."""
    mapping = {str(g): g for g in range(NUM_CLASSES)}
    problems: list[tuple[str, str]] = []
    path = root / GRADE_NAMES_FILE
    if not path.is_file():
        return mapping, problems
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig")))
    mapped: dict[str, str] = {}
    for cells in reader:
        where = f"{GRADE_NAMES_FILE} line {reader.line_num}"
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != 2:
            problems.append((where, f"expected 2 fields (folder name,grade), found {len(cells)}"))
            continue
        folder, grade_text = cells[0].strip(), cells[1].strip()
        if reader.line_num == 1 and not _NUMBER_TEXT.fullmatch(grade_text):
            continue  # a header line ("folder,grade")
        grade, reason = parse_grade(grade_text)
        if reason:
            problems.append((where, f"{reason} (for folder {folder!r})"))
        elif folder in mapped and mapping[folder] != grade:
            problems.append((where, f"folder {folder!r} is mapped twice, to {mapping[folder]} ({mapped[folder]}) "
                                    f"and to {grade}"))
        else:
            mapping[folder], mapped[folder] = grade, where
    return mapping, problems


def _split_folders(root: Path) -> dict[str, list[Path]] | None:
    """The folders holding each split's grade folders, or None when the root holds the grade folders."""
    if not (root / "train").is_dir():
        return None
    extra = [root / name for name in TRAIN_FOLDER_ALIASES if (root / name).is_dir()]
    return {"train": [root / "train", *extra], "test": [root / "test"] if (root / "test").is_dir() else []}


def _detect_folders(root: Path) -> bool:
    if (root / GRADE_NAMES_FILE).is_file():
        return True
    base = root / "train" if (root / "train").is_dir() else root
    return sum(folder.name in {str(g) for g in range(NUM_CLASSES)} for folder in _visible_dirs(base)) >= 2


def _read_folders(root: Path, split: str) -> LayoutRead:
    mapping, problems = _grade_folder_names(root)
    by_split = _split_folders(root)
    derived = by_split is None or not by_split["test"]
    bases = [root] if by_split is None else by_split["train"] if derived else by_split[split]
    read = _new_read(derived)
    read.rows.problems += problems
    advice = f"name grade folders 0-4, or map the name to a grade in {GRADE_NAMES_FILE} (a line 'name,grade')"
    if by_split is not None:  # grade folders beside train/ would be read by neither split
        read.rows.problems += [(f"{_relative(root, folder)}/", "a grade folder beside train/ is not read: move it "
                                                             "into train/ or test/")
                               for folder in _visible_dirs(root) if folder.name in mapping]
    for base in bases:
        for path in sorted(base.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                read.rows.problems.append((_relative(root, path), f"photo outside a grade folder: move it into "
                                                               f"{_relative(root, base)}/<grade>/"))
        for folder in _visible_dirs(base):
            if by_split is None and folder.name in ("test", *TRAIN_FOLDER_ALIASES):
                read.rows.problems.append((f"{_relative(root, folder)}/", "a split folder without train/ beside it: "
                                                                        "put the training grade folders in train/"))
                continue
            if folder.name not in mapping:
                read.rows.problems.append((f"{_relative(root, folder)}/", f"folder {folder.name!r} maps to no grade: "
                                                                       f"{advice}"))
                continue
            for path in sorted(folder.iterdir()):
                if path.is_dir() and not path.name.startswith("."):
                    read.rows.problems.append((f"{_relative(root, path)}/", "a folder inside a grade folder is not "
                                                                         "read: move its photos up"))
                elif path.suffix.lower() in OTHER_IMAGE_EXTENSIONS:
                    read.rows.problems.append((_relative(root, path), f"a {path.suffix} photo is not read (only "
                                                                   f"{', '.join(IMAGE_EXTENSIONS)}): convert it"))
                elif path.suffix.lower() in IMAGE_EXTENSIONS:
                    _add_row(read, path.name, _relative(root, path), str(mapping[folder.name]), _relative(root, path),
                             [path], path, patient_of(path.name))
    return read


# IDRiD: a CSV with "Image name" and "Retinopathy grade" (its Training and Testing label files) --------

IDRID_COLUMNS = ("image name", "retinopathy grade")


def _idrid_image_folders(root: Path, split: str) -> list[Path]:
    """Folders named for the split ("a. Training Set"); root, images/ and every folder when none is."""
    folders = _dirs_below(root, 3)
    named = [folder for folder in folders[1:] if split in folder.name.lower()]
    return named or [root / "images", *folders]


def _read_idrid(root: Path, split: str) -> LayoutRead:
    tables = _tables_with(root, IDRID_COLUMNS)
    derived = not any(_split_of_table(path) == "test" for path in tables)
    read = _new_read(derived)
    for table in tables:
        table_split = _split_of_table(table)
        if not derived and table_split != split:
            continue
        rows = read_label_table(table, *IDRID_COLUMNS)
        read.rows.problems += rows.problems
        look_up = _folder_lookup(_idrid_image_folders(root, table_split), ".jpg")
        for name, spelled, label, source in zip(rows.names, rows.spellings, rows.labels, rows.sources):
            found, missing = look_up(spelled)
            # Training and Testing both start at IDRiD_001: the split keeps the names apart.
            _add_row(read, f"{table_split}/{name}", source, str(label), source, found, missing, name)
    return read


# DDR: train.txt, valid.txt, test.txt with "name grade" lines; grade 5 is ungradable ------------------

DDR_TABLES = {"train": ("train.txt", "valid.txt"), "test": ("test.txt",)}


def _read_ddr(root: Path, split: str) -> LayoutRead:
    derived = not (root / "test.txt").is_file()
    read = _new_read(derived)
    names = [*DDR_TABLES["train"], *DDR_TABLES["test"]] if derived else DDR_TABLES[split]
    for table_name in names:
        table = root / table_name
        if not table.is_file():
            continue
        look_up = _folder_lookup([root / table.stem, root / "images", root], ".jpg")
        for line, text in _lines(table):
            where = f"{table_name} line {line}"
            if not text.strip():
                continue
            fields = text.strip().rsplit(None, 1)
            if len(fields) != 2:
                read.rows.problems.append((where, f"expected 'name grade', found {text.strip()!r}"))
                continue
            name, grade = fields
            if grade.strip() == str(DDR_UNGRADABLE):
                read.excluded.append((where, f"{name} has grade {DDR_UNGRADABLE} (ungradable)"))
                continue
            found, missing = look_up(name)
            _add_row(read, name, where, grade, where, found, missing, patient_of(name))
    return read


# Messidor-2 adjudicated grades (Krause et al.): image_id, adjudicated_dr_grade, adjudicated_gradable --

MESSIDOR_COLUMNS = ("image_id", "adjudicated_dr_grade")


def _read_messidor2(root: Path, split: str) -> LayoutRead:
    read = _new_read(True)  # no test table and no patient column: each photo is its own group
    folders = [root / "IMAGES", root / "images", root / "messidor-2" / "IMAGES", root]
    look_up = _folder_lookup(folders, ".png")
    for table in _tables_with(root, MESSIDOR_COLUMNS):
        for where, cells in _table_records(table, table.name, read.rows.problems):
            name = cells["image_id"].strip()
            gradable = cells.get("adjudicated_gradable", "1").strip()
            if gradable.lower() in ("0", "0.0", "false"):
                read.excluded.append((where, f"{name} is adjudicated ungradable"))
                continue
            if gradable.lower() not in ("1", "1.0", "true"):
                read.rows.problems.append((where, f"adjudicated_gradable {gradable!r} is neither 1 nor 0"))
                continue
            found, missing = look_up(name)
            _add_row(read, name, where, cells["adjudicated_dr_grade"], where, found, missing, name)
    return read


# DeepDRiD: patient_id, image_id, left_eye_DR_Level, right_eye_DR_Level, image_path --------------------

DEEPDRID_COLUMNS = ("patient_id", "image_id", "left_eye_dr_level", "right_eye_dr_level")


def _deepdrid_image(root: Path, table: Path, image_path: str, image_id: str, patient: str) -> tuple[list[Path], Path]:
    """The photo of a row: its image_path (a Windows path from the dataset's own folder, any tail of which
    may be below the root or the table's folder), else ``<image_id>.jpg`` in Images/<patient_id>/."""
    parts = [part for part in re.split(r"[\\/]+", image_path.strip()) if part]
    for start in range(len(parts)):
        for base in (table.parent, root):
            candidate = base.joinpath(*parts[start:])
            if candidate.is_file():
                return [candidate], candidate
    folders = [table.parent / "Images" / patient, table.parent / "Images", table.parent]
    found, missing = _folder_lookup(folders, ".jpg")(image_id)
    return found, (table.parent.joinpath(*parts[-3:]) if parts and not found else missing)


def _read_deepdrid(root: Path, split: str) -> LayoutRead:
    tables = _tables_with(root, DEEPDRID_COLUMNS)
    derived = not any(_split_of_table(path) == "test" for path in tables)
    read = _new_read(derived)
    for table in tables:
        if not derived and _split_of_table(table) != split:
            continue
        for where, cells in _table_records(table, _relative(root, table), read.rows.problems):
            image_id, patient = cells["image_id"].strip(), cells["patient_id"].strip()
            image_path = cells.get("image_path", "")
            eye = _DEEPDRID_EYE.fullmatch(image_id) or _DEEPDRID_EYE.fullmatch(_stem(Path(image_path).name))
            if not eye:
                read.rows.problems.append((where, f"cannot tell the eye of image_id {image_id!r} (expected e.g. "
                                                  f"1_l1 or 1_r2): its grade column is unknown"))
                continue
            column = "left_eye_dr_level" if eye.group(1).lower() == "l" else "right_eye_dr_level"
            found, missing = _deepdrid_image(root, table, image_path, image_id, patient)
            grade = cells[column]
            if not grade.strip():
                read.rows.problems.append((where, f"no grade in {column} for image_id {image_id!r} "
                                                  f"(the {'left' if column[0] == 'l' else 'right'} eye)"))
                continue
            _add_row(read, image_id, where, grade, where, found, missing, patient)
    return read


def label_tables(root: str | os.PathLike, layout: str = "auto") -> list[str]:
    """The label files a layout reads in ``root`` (relative paths): what a preprocessed copy must carry.

    ``LayoutSpec.tables`` names the usual ones; the tables of a layout with a ``header`` (IDRiD, Messidor-2,
    DeepDRiD) are found by their columns, under any name and up to two folders down.
    """
    root = Path(root).resolve()
    spec = LAYOUTS[resolve_layout(root, layout)]
    found = {name for name in spec.tables if (root / name).is_file()}
    if spec.header:  # tables found by their columns (``LayoutSpec.header``)
        found |= {_relative(root, path) for path in _tables_with(root, spec.header)}
    return sorted(found)


READERS: dict[str, Callable[[Path, str], LayoutRead]] = {
    "ddr": _read_ddr,
    "idrid": _read_idrid,
    "messidor2": _read_messidor2,
    "deepdrid": _read_deepdrid,
    "folders": _read_folders,  # last: the weakest sign (folders named 0-4)
}

# Detection order: fixed file names first (no folder walk), folder names last.
LAYOUTS.update({
    "ddr": LayoutSpec(("train.txt",), ("train.txt", "valid.txt", "test.txt"), (), ".jpg",
                      looks_for="train.txt with 'name grade' lines"),
    "idrid": LayoutSpec(
        (), ("a. IDRiD_Disease Grading_Training Labels.csv", "b. IDRiD_Disease Grading_Testing Labels.csv"), (),
        ".jpg", header=IDRID_COLUMNS,
        looks_for="a CSV with columns 'Image name','Retinopathy grade'",
    ),
    "messidor2": LayoutSpec(
        (), ("messidor_data.csv",), (), ".png", header=MESSIDOR_COLUMNS,
        looks_for="a CSV with columns image_id,adjudicated_dr_grade",
    ),
    "deepdrid": LayoutSpec(
        (), (), (), ".jpg", header=DEEPDRID_COLUMNS,
        looks_for="a CSV with columns patient_id,image_id,left_eye_DR_Level,right_eye_DR_Level",
    ),
    "folders": LayoutSpec((), (GRADE_NAMES_FILE,), (), ".png", detect=_detect_folders,
                          looks_for=f"folders named 0-4, or {GRADE_NAMES_FILE}"),
})
# What an error asking for a dataset folder names: every layout read, as the README's "Using real data" lists them.
LAYOUTS_READ = f"in one of the layouts {', '.join(LAYOUTS)}"
