"""Files that are either absent or complete: written beside, then renamed."""
import json
import os
from pathlib import Path


def write_bytes(path, data):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path, text):
    write_bytes(path, text.encode())


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
