"""Files that say which version of their declaration wrote them (a run's record, a checkpoint): what is read
back is checked against the dataclass that declares it, and refused in one line naming the file otherwise."""

from __future__ import annotations

from dataclasses import MISSING, fields

from retino_utils.errors import RetinoError


def checked_fields(declaration, values: dict, source: str, kind: str, current: int,
                   mismatch: type[RetinoError] = RetinoError) -> dict:
    """``values`` once they fit ``declaration``: a newer version is refused with what to do, unknown or missing
    fields raise ``mismatch``. ``schema_version`` (1 where absent: written before versions were) is kept where the
    declaration has one."""
    values = dict(values)
    version = values.pop("schema_version", 1)
    if not isinstance(version, int) or version > current:
        raise RetinoError(f"{source} was written by a newer retino ({kind} version {version}; this one reads "
                          f"versions 1-{current}): update retino (git pull, then make setup) to read it")
    declared = {f.name: f for f in fields(declaration)}
    unknown = sorted(set(values) - set(declared))
    missing = sorted(name for name, f in declared.items() if name not in values and name != "schema_version"
                     and f.default is MISSING and f.default_factory is MISSING)
    if "schema_version" in declared:
        values["schema_version"] = version
    if unknown or missing:
        what = "; ".join(part for part in (f"unknown fields {', '.join(unknown)}" if unknown else "",
                                           f"missing {', '.join(missing)}" if missing else "") if part)
        raise mismatch(f"{source} is not a {kind} retino wrote ({what}; {kind} version {version})")
    return values
