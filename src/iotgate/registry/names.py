"""Device names from a CSV upload: shared by the API (`devices:batch` with a CSV body) and the CLI."""

from __future__ import annotations

import csv
import io


def device_names_from_csv(text: str) -> list[str | None]:
    """CSV with a `deviceName` header (other columns ignored), or one name per line. With a header,
    a row whose deviceName cell is blank gives None (the caller reports it; it is not dropped).
    Raises csv.Error for text the csv module cannot read."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return []
    header = [h.strip() for h in rows[0]]
    if "deviceName" in header:
        col = header.index("deviceName")
        return [r[col].strip() or None for r in rows[1:] if len(r) > col and any(c.strip() for c in r)]
    return [r[0].strip() for r in rows if r and r[0].strip()]
