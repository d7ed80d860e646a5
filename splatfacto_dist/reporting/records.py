"""What each rank of a run reports, as files that programs read (the benchmark, the tests): one JSON
object per rank in the run's `ranks/` folder, written at the end of its training (start-up by
stage, peak memory, what its layout held) or when it fails (the error). Console lines say the
same for people; nothing parses them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

RANKS_DIR = "ranks"


def write_rank_record(run_dir: Path, rank: int, record: Dict[str, Any]) -> Path:
    """Write (or, after a failure, complete) `rank`'s record atomically: a reader never sees half
    of one. A failure record keeps what the rank reported before failing."""
    folder = Path(run_dir) / RANKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank-{rank}.json"
    merged = {**(json.loads(path.read_text()) if path.exists() else {}), "rank": rank, **record}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=1))  # in order: start-up stages are read in the order they ran
    os.replace(tmp, path)
    return path


def describe_layout(record: Dict[str, Any]) -> str:
    """What a rank's end-of-run line adds of its layout's record: a shard says what it owned and the
    most one render made it hold; a replica (it holds all) adds nothing."""
    if "owned" not in record:
        return ""
    return (
        f", owns {record['owned']} of {record['total']} Gaussians, rendered up to {record['most_received']} in one"
        f" render ({100 * record['most_received_share']:.0f}% of the model then)"
    )


def clear_rank_records(run_dir: Path, rank: Optional[int] = None) -> None:
    """Forget an earlier run's records in `run_dir` (all, or `rank`'s): a benchmark reruns into the
    same folder, and neither a record of this run nor a run that writes none (killed, or failed
    before training) may be read as that earlier one."""
    folder = Path(run_dir) / RANKS_DIR
    pattern = "rank-*.json*" if rank is None else f"rank-{rank}.json*"
    for path in folder.glob(pattern) if folder.is_dir() else []:
        path.unlink(missing_ok=True)


def first_failure(run_dir: Path) -> Optional[str]:
    """ "rank N failed: <cause>" of the rank that failed first in the run in `run_dir` (None if none
    did): its peers fail after it, of a lost connection, and the first is the one to show."""
    failed = [record for record in read_rank_records(run_dir) if "failed" in record]
    if not failed:
        return None
    first = min(failed, key=lambda record: record.get("failed_at", float("inf")))
    return f"rank {first['rank']} failed: {first['failed']}"


def read_rank_records(run_dir: Path) -> List[Dict[str, Any]]:
    """Every rank's record of the run in `run_dir`, in rank order (none if no rank wrote one)."""
    folder = Path(run_dir) / RANKS_DIR
    records = [json.loads(path.read_text()) for path in folder.glob("rank-*.json")] if folder.is_dir() else []
    return sorted(records, key=lambda record: record["rank"])
